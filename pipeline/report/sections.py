"""The release report's content, as sections of tables, before any format.

Why a format-free middle: the same report is written as GitHub-flavoured Markdown
(job summary, PR comment, ``report.md``) and as a self-contained HTML page; both
renderers walk these sections, so a number is formatted once and cannot differ
between the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.gates.stats import paired_difference_interval
from pipeline.report.release import CanaryStep, ReleaseData

PASS, FAIL, NOT_RUN = "PASS", "FAIL", "not run"
_NOT_RUN_NOTE = "Not in this run: its stage was skipped, or an earlier stage failed."


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Link:
    label: str
    href: str


@dataclass
class Section:
    title: str
    verdict: str | None = None
    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    image: str | None = None  # a PNG file name beside the report
    links: list[Link] = field(default_factory=list)


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _ok(passed: bool) -> str:
    return "ok" if passed else "FAIL"


def quality_section(quality: dict[str, Any] | None) -> Section:
    section = Section("Quality gate", NOT_RUN if quality is None else _verdict(quality))
    if quality is None:
        section.notes.append(_NOT_RUN_NOTE)
        return section
    limits = quality["thresholds"]
    overall = quality["overall"]
    rows = [
        (
            "pass rate",
            f"{overall['passed']}/{overall['total']} = {_pct(overall['rate'])}",
            f"{_pct(overall['ci95'][0])} – {_pct(overall['ci95'][1])}",
            f">= {_pct(limits['min_pass_rate'])}",
            _ok(overall["rate"] >= limits["min_pass_rate"]),
        )
    ]
    for tag, rate in quality.get("by_tag", {}).items():
        rows.append(
            (
                f"pass rate [{tag}]",
                f"{rate['passed']}/{rate['total']} = {_pct(rate['rate'])}",
                f"{_pct(rate['ci95'][0])} – {_pct(rate['ci95'][1])}",
                "",
                "",
            )
        )
    champion = quality.get("champion")
    if champion:
        diff = paired_difference_interval(
            len(champion["regressions"]), len(champion["improvements"]), champion["paired"]
        )
        rows += [
            ("champion pass rate (paired)", _pct(champion["champion_rate"]), "", "", ""),
            ("candidate pass rate (paired)", _pct(champion["candidate_rate"]), "", "", ""),
            (
                "paired difference (champion − candidate)",
                f"{champion['regression']:+.3f} (McNemar p={champion['mcnemar_p']:.3g})",
                f"{diff.low:+.3f} – {diff.high:+.3f}",
                f"<= {limits['max_regression_vs_champion']:g}",
                _ok(champion["regression"] <= limits["max_regression_vs_champion"]),
            ),
        ]
        section.notes.append(
            f"{champion['paired']} paired cases; newly failing: "
            f"{', '.join(champion['regressions']) or 'none'}; newly passing: "
            f"{', '.join(champion['improvements']) or 'none'}."
        )
    else:
        section.notes.append("No champion results: nothing to compare against (first release).")
    section.notes.append(
        f"model `{quality.get('model')}`, suite `{_name(quality.get('suite'))}`, "
        f"profile `{quality.get('profile')}`; errored {len(quality.get('errored', []))}, "
        f"timed out {len(quality.get('timed_out', []))}."
    )
    section.notes += [f"FAILED: {reason}" for reason in quality.get("reasons", [])]
    section.tables.append(Table(("measure", "value", "95% CI", "threshold", "result"), tuple(rows)))
    return section


def _name(path: Any) -> str:
    return str(path).rsplit("/", 1)[-1] if path else "?"


def _verdict(report: dict[str, Any]) -> str:
    return PASS if report.get("passed") else FAIL


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def latency_section(latency: dict[str, Any] | None, image: str | None) -> Section:
    section = Section("Latency gate", NOT_RUN if latency is None else _verdict(latency))
    if latency is None:
        section.notes.append(_NOT_RUN_NOTE)
        return section
    load = (
        f"concurrency {latency['concurrency']}"
        if latency.get("mode") == "concurrency"
        else f"Poisson rate {latency.get('rate')}/s"
    )
    section.notes.append(
        f"{latency['requests']} requests ({latency['warmup']} warm-up excluded), {load}, "
        f"{latency['max_new_tokens']} new tokens each; "
        f"{latency['throughput_rps']:.2f} req/s, {latency['tokens_per_s']:.1f} tokens/s; "
        f"errors {latency['error_count']} ({latency['error_rate']:.1%})."
    )
    rows: list[tuple[str, ...]] = []
    for key, label in (("ttft", "time to first token"), ("itl", "inter-token"), ("e2e", "e2e")):
        summary = latency.get(key)
        if not summary:
            rows.append((label, "n/a", "n/a", "n/a", "n/a", "n/a"))
            continue
        rows.append(
            (label, *(_ms(summary[f"{p}_ms"]) for p in ("p50", "p95", "p99", "mean", "max")))
        )
    section.tables.append(Table(("ms", "p50", "p95", "p99", "mean", "max"), tuple(rows)))
    limits = tuple(
        (
            row["name"],
            _ms(row["measured"]) if row["unit"] == "ms" else f"{row['measured']:.3f}",
            f"<= {row['threshold']:g}{' ms' if row['unit'] == 'ms' else ''}",
            _ok(row["passed"]),
        )
        for row in latency["thresholds"]
    )
    section.tables.append(Table(("threshold", "measured", "limit", "result"), limits))
    if latency.get("judged_by"):
        section.notes.append(f"Judged by: {latency['judged_by']}.")
    compared = tuple(
        (
            row["name"],
            f"{_ms(row['candidate_p50_ms'])} / {_ms(row['champion_p50_ms'])}",
            f"{_ms(row['candidate_p95_ms'])} / {_ms(row['champion_p95_ms'])}",
            f"{row['p_value']:.2g}",
            _ok(row["passed"]),
        )
        for row in latency.get("vs_champion") or []
    )
    if compared:
        header = ("vs champion", "p50 ms (cand / champ)", "p95 ms", "Mann-Whitney p", "result")
        section.tables.append(Table(header, compared))
    section.notes += [f"FAILED: {reason}" for reason in latency.get("reasons", [])]
    section.image = image
    return section


def release_section(release: dict[str, Any]) -> Section:
    model = release.get("model") or {}
    rows = [
        ("image", release.get("image")),
        ("image digest", release.get("image_digest")),
        (
            "model version",
            f"{release['registered_model']} v{release['version']}"
            if release.get("version")
            else None,
        ),
        ("model", model.get("ref")),
        ("model hash / revision", model.get("revision")),
        ("git revision", release.get("git_sha")),
        ("pipeline run", release.get("run_id")),
    ]
    shown = tuple((k, f"`{v}`") for k, v in rows if v)
    section = Section("Release")
    if not release.get("version"):
        section.notes.append("Nothing was built or registered in this run.")
    if shown:
        section.tables.append(Table(("", "value"), shown))
    return section


_CANARY_COLUMNS = ("requests", "success-rate", "error-rate", "p99-latency", "ttft-p99")


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def canary_section(steps: list[CanaryStep], image: str | None) -> Section:
    if not steps:
        return Section("Canary", NOT_RUN, notes=["The canary did not run in this run."])
    verdicts = {s.verdict for s in steps}
    section = Section("Canary", PASS if verdicts == {"successful"} else FAIL, image=image)
    conditions = steps[0].conditions
    limits = {c: conditions.get(c, "").removeprefix("result ") for c in _CANARY_COLUMNS}
    headers = ("step", "weight", "measurement", *(f"{c} {limits[c]}".strip()
                                                  for c in _CANARY_COLUMNS), "verdict")  # fmt: skip
    rows = []
    for step in steps:
        for tick in step.ticks:
            values = tick.get("canary", {})
            rows.append(
                (
                    str(step.number),
                    "–" if step.weight is None else f"{step.weight}%",
                    f"#{tick.get('tick')} at {tick.get('at', 0):.0f}s",
                    *(_value(values.get(c)) for c in _CANARY_COLUMNS),
                    step.verdict if tick is step.ticks[-1] else "",
                )
            )
    section.tables.append(Table(headers, tuple(rows)))
    return section


def build_sections(data: ReleaseData, images: dict[str, str], links: list[Link]) -> list[Section]:
    """Release, quality, latency, canary, then the artifacts; ``images`` by section key."""
    artifacts = Section("Artifacts", links=links)
    if not links:
        artifacts.notes.append("No artifact links (a local run: the files sit beside this one).")
    return [
        release_section(data.release),
        quality_section(data.quality),
        latency_section(data.latency, images.get("latency")),
        canary_section(data.canary, images.get("canary")),
        artifacts,
    ]


def overall(sections: list[Section]) -> str:
    """FAIL if any gate failed, PASS if every gate that ran passed."""
    verdicts = [s.verdict for s in sections if s.verdict is not None]
    if FAIL in verdicts:
        return FAIL
    return PASS if PASS in verdicts else NOT_RUN
