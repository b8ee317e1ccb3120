"""The release report's plots: the latency distribution and the canary over its steps.

Why PNG files: GitHub job summaries cannot embed an image from an artifact, so CI
uploads the PNGs as an artifact the summary links to; the HTML report inlines the
same files as base64, so it is one self-contained page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.report.release import CanaryStep

_BLUE, _RED, _DARK = "#4477aa", "#cc3311", "#222222"
LATENCY_PNG, CANARY_PNG = "latency-distribution.png", "canary-steps.png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_plot(latency: dict[str, Any], path: Path) -> Path | None:
    """TTFT, inter-token and end-to-end histograms (ms) with the gate's limits."""
    records = [r for r in latency.get("records", []) if r.get("ok")]
    if not records:
        return None
    series = (
        ("Time to first token", [r["ttft_s"] * 1000 for r in records if r.get("ttft_s")], "ttft"),
        ("Inter-token latency", [x * 1000 for r in records for x in r.get("itl_s") or []], "itl"),
        ("End-to-end latency", [r["e2e_s"] * 1000 for r in records], "e2e"),
    )
    limits = {row["name"]: row for row in latency.get("thresholds", []) if row["unit"] == "ms"}
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, (title, values, key) in zip(axes, series, strict=True):
        if values:
            ax.hist(values, bins=40, color=_BLUE)
        for name, row in limits.items():
            if name.startswith(key):
                ax.axvline(row["threshold"], color=_RED, linestyle="--", label=f"limit {name}")
                if row["measured"] is not None:
                    ax.axvline(row["measured"], color=_DARK, label=f"measured {name}")
        summary = latency.get(key) or {}
        if "p99_ms" in summary and not any(name.startswith(f"{key}_p99") for name in limits):
            ax.axvline(summary["p99_ms"], color=_DARK, linestyle=":", label="p99")
        ax.set_title(f"{title} (n={len(values)})")
        ax.set_xlabel("ms")
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
    fig.suptitle(f"Latency gate: {'PASS' if latency.get('passed') else 'FAIL'}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


_CANARY_METRICS = (
    ("success-rate", "success rate"),
    ("error-rate", "error rate"),
    ("p99-latency", "p99 latency (s)"),
    ("ttft-p99", "TTFT p99 (s)"),
)


def _limit(condition: str) -> float | None:
    try:
        return float(condition.split()[-1])
    except (IndexError, ValueError):
        return None


def canary_plot(steps: list[CanaryStep], path: Path) -> Path | None:
    """Each canary metric over the measurements, one shaded band per traffic step."""
    points = [(step, tick) for step in steps for tick in step.ticks]
    if not points:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(_CANARY_METRICS), figsize=(14, 3.4))
    x = list(range(1, len(points) + 1))
    for ax, (name, title) in zip(axes, _CANARY_METRICS, strict=True):
        values = [tick.get("canary", {}).get(name) for _, tick in points]
        numbers = [v if isinstance(v, (int, float)) else float("nan") for v in values]
        ax.plot(x, numbers, "o-", color=_BLUE)
        limit = _limit(steps[0].conditions.get(name, ""))
        if limit is not None:
            ax.axhline(limit, color=_RED, linestyle="--", label=steps[0].conditions[name])
            ax.legend(fontsize=8)
        start = 1
        for index, step in enumerate(steps):
            end = start + len(step.ticks) - 1
            if index % 2:
                ax.axvspan(start - 0.5, end + 0.5, color="#eeeeee")
            label = f"{step.weight}%" if step.weight is not None else f"step {step.number}"
            ax.annotate(label, ((start + end) / 2, 1.0), xycoords=("data", "axes fraction"),
                        ha="center", va="bottom", fontsize=8)  # fmt: skip
            start = end + 1
        ax.set_title(title, pad=14)
        ax.set_xticks(x)
        ax.set_xlabel("measurement")
    verdicts = ", ".join(f"{s.number}: {s.verdict}" for s in steps)
    fig.suptitle(f"Canary analysis per step ({verdicts})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
