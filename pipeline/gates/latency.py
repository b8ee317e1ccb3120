"""The latency gate: judge a load test against the definition's latency thresholds.

The measurements come from :mod:`pipeline.load.generator` against a real server's
HTTP path, the one a user hits, never a bare ``generate`` call. This module only
judges; whoever runs the gate starts the server (``mlcicd gate latency`` does it
through :mod:`pipeline.serving` unless ``--url`` names one that already runs).

Thresholds: p99 time to first token, mean end-to-end latency, error rate. A run
with no successful request fails (there is nothing to measure), and errors above
the allowed rate fail whatever the latencies say. Each threshold is shown beside
its measured value so a failure explains itself.

Left out: throughput floors (the benchmark reports them; as a gate they would be
too machine-dependent to hold on shared CI runners).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.load.generator import LoadResult


@dataclass(frozen=True)
class ThresholdRow:
    name: str
    measured: float | None
    threshold: float
    unit: str
    passed: bool


@dataclass(frozen=True)
class LatencyVerdict:
    passed: bool
    rows: tuple[ThresholdRow, ...]
    reasons: tuple[str, ...]


def judge_latency(
    result: LoadResult,
    *,
    max_ttft_p99_ms: float,
    max_e2e_mean_ms: float,
    max_error_rate: float,
) -> LatencyVerdict:
    ttft = result.ttft
    e2e = result.e2e
    measured_ttft = ttft.p99 * 1000 if ttft is not None else None
    measured_e2e = e2e.mean * 1000 if e2e is not None else None
    rows = (
        ThresholdRow(
            "ttft_p99_ms",
            measured_ttft,
            max_ttft_p99_ms,
            "ms",
            measured_ttft is not None and measured_ttft <= max_ttft_p99_ms,
        ),
        ThresholdRow(
            "e2e_mean_ms",
            measured_e2e,
            max_e2e_mean_ms,
            "ms",
            measured_e2e is not None and measured_e2e <= max_e2e_mean_ms,
        ),
        ThresholdRow(
            "error_rate", result.error_rate, max_error_rate, "", result.error_rate <= max_error_rate
        ),
    )
    reasons: list[str] = []
    if not result.ok_records:
        reasons.append(f"no successful request out of {result.requests}")
    for row in rows:
        if not row.passed and row.measured is not None:
            reasons.append(f"{row.name} {row.measured:.4g} > max {row.threshold:g}")
    if result.error_count and result.error_rate > max_error_rate:
        kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(result.errors.items()))
        reasons.append(f"errors by kind: {kinds}")
    return LatencyVerdict(passed=not reasons, rows=rows, reasons=tuple(reasons))


def write_histogram(result: LoadResult, verdict: LatencyVerdict, path: Path) -> None:
    """TTFT and end-to-end latency histograms, each with its threshold line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = {row.name: row.threshold for row in verdict.rows}
    series = (
        ("Time to first token", [r.ttft_s * 1000 for r in result.ok_records if r.ttft_s], "ttft"),
        ("End-to-end latency", [r.e2e_s * 1000 for r in result.ok_records], "e2e"),
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (title, values, key) in zip(axes, series, strict=True):
        if values:
            ax.hist(values, bins=40, color="#4477aa")
        limit_name = "ttft_p99_ms" if key == "ttft" else "e2e_mean_ms"
        label = "max p99" if key == "ttft" else "max mean"
        ax.axvline(thresholds[limit_name], color="#cc3311", linestyle="--", label=label)
        measured = next(row.measured for row in verdict.rows if row.name == limit_name)
        if measured is not None:
            what = "measured p99" if key == "ttft" else "measured mean"
            ax.axvline(measured, color="#222222", linestyle="-", label=what)
        ax.set_title(f"{title} (n={len(values)})")
        ax.set_xlabel("ms")
        ax.set_ylabel("requests")
        ax.legend()
    verdict_text = "PASS" if verdict.passed else "FAIL"
    fig.suptitle(f"Latency gate: {verdict_text} ({result.requests} requests, {result.url})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
