"""Gate reports: the JSON a machine reads back and the Markdown a reviewer reads.

Why both: ``quality.json`` is also the champion-results format (the registry
stores it with a model version and hands it back as ``--champion-results``), and
``*.md`` goes into the CI job summary. The terminal text is the Markdown's head.

Left out: HTML; the Markdown renders in GitHub job summaries and in MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.gates.latency import LatencyVerdict
from pipeline.gates.quality import CaseResult, QualityVerdict, Rate
from pipeline.load.generator import LoadResult

QUALITY_FORMAT = "mlcicd.quality/v1"
LATENCY_FORMAT = "mlcicd.latency/v1"


def _rate_dict(rate: Rate) -> dict[str, Any]:
    return {
        "passed": rate.passed,
        "total": rate.total,
        "rate": rate.rate,
        "ci95": [rate.interval.low, rate.interval.high],
    }


def _pct(rate: Rate) -> str:
    return (
        f"{rate.passed}/{rate.total} = {rate.rate:.1%} "
        f"(95% CI {rate.interval.low:.1%}-{rate.interval.high:.1%})"
    )


def quality_json(
    verdict: QualityVerdict, results: Sequence[CaseResult], meta: dict[str, Any]
) -> dict[str, Any]:
    comparison = verdict.comparison
    return {
        "format": QUALITY_FORMAT,
        "passed": verdict.passed,
        "reasons": list(verdict.reasons),
        **meta,
        "thresholds": verdict.thresholds,
        "overall": _rate_dict(verdict.overall),
        "by_tag": {tag: _rate_dict(rate) for tag, rate in verdict.by_tag.items()},
        "errored": list(verdict.errored),
        "timed_out": list(verdict.timed_out),
        "champion": None
        if comparison is None
        else {
            **asdict(comparison),
            "candidate_rate": comparison.candidate_rate,
            "champion_rate": comparison.champion_rate,
            "regression": comparison.regression,
            "mcnemar_p": comparison.mcnemar_p,
        },
        "cases": [r.to_dict() for r in results],
    }


def quality_summary(verdict: QualityVerdict, meta: dict[str, Any]) -> list[str]:
    lines = [
        f"Quality gate: {'PASS' if verdict.passed else 'FAIL'}",
        f"  model: {meta.get('model')}  suite: {meta.get('suite')}  profile: {meta.get('profile')}",
        f"  pass rate: {_pct(verdict.overall)}  "
        f"(min_pass_rate {verdict.thresholds['min_pass_rate']:g})",
    ]
    lines += [f"    {tag}: {_pct(rate)}" for tag, rate in verdict.by_tag.items()]
    lines.append(f"  errored: {len(verdict.errored)}  timed out: {len(verdict.timed_out)}")
    c = verdict.comparison
    if c is not None:
        lines.append(
            f"  vs champion ({c.paired} paired cases): candidate {c.candidate_rate:.1%}, "
            f"champion {c.champion_rate:.1%}, regression {c.regression:+.3f} "
            f"(max {verdict.thresholds['max_regression_vs_champion']:g}), "
            f"McNemar p={c.mcnemar_p:.3g}"
        )
        lines.append(f"    newly failing: {', '.join(c.regressions) or 'none'}")
        lines.append(f"    newly passing: {', '.join(c.improvements) or 'none'}")
        if c.only_candidate:
            lines.append(f"    not in champion results: {', '.join(c.only_candidate)}")
        if c.only_champion:
            lines.append(f"    in champion results only: {', '.join(c.only_champion)}")
    lines += [f"  FAILED: {reason}" for reason in verdict.reasons]
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "\\n")


def quality_markdown(
    verdict: QualityVerdict, results: Sequence[CaseResult], meta: dict[str, Any]
) -> str:
    out = ["# Quality gate", "", "```", *quality_summary(verdict, meta), "```", ""]
    out += ["| case | tags | result | checks | output |", "|---|---|---|---|---|"]
    for r in results:
        detail = r.error or "; ".join(
            f"{'ok' if c.passed else 'FAIL'} {c.kind}: {c.reason}" for c in r.checks
        )
        out.append(
            f"| {r.id} | {', '.join(r.tags)} | {r.status} | {_cell(detail)} "
            f"| `{_cell(r.text[:120])}` |"
        )
    return "\n".join(out) + "\n"


def write_quality(
    out_dir: Path, verdict: QualityVerdict, results: Sequence[CaseResult], meta: dict[str, Any]
) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "quality.json", out_dir / "quality.md"
    json_path.write_text(json.dumps(quality_json(verdict, results, meta), indent=2) + "\n")
    md_path.write_text(quality_markdown(verdict, results, meta))
    return json_path, md_path


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def latency_summary(result: LoadResult, verdict: LatencyVerdict, meta: dict[str, Any]) -> list[str]:
    load = (
        f"concurrency {result.concurrency}"
        if result.mode == "concurrency"
        else f"Poisson rate {result.rate:g}/s"
    )
    lines = [
        f"Latency gate: {'PASS' if verdict.passed else 'FAIL'}",
        f"  target: {result.url}  model: {meta.get('model')}  profile: {meta.get('profile')}",
        f"  {result.requests} requests ({result.warmup} warm-up excluded), {load}, "
        f"{'' if meta.get('fixed_tokens') else 'up to '}{result.max_new_tokens} new tokens "
        f"each, {result.duration_s:.1f}s",
        f"  throughput: {result.throughput_rps:.2f} req/s, {result.tokens_per_s:.1f} tokens/s",
        "  measure         p50      p95      p99     mean      max  (ms)",
    ]
    for name, summary in (("TTFT", result.ttft), ("ITL", result.itl), ("e2e", result.e2e)):
        if summary is None:
            lines.append(f"  {name:<8} no successful requests")
            continue
        s = summary.as_ms()
        lines.append(
            f"  {name:<8} {s['p50_ms']:8.1f} {s['p95_ms']:8.1f} {s['p99_ms']:8.1f} "
            f"{s['mean_ms']:8.1f} {s['max_ms']:8.1f}"
        )
    errors = ", ".join(f"{k}: {n}" for k, n in sorted(result.errors.items())) or "none"
    lines.append(f"  errors: {result.error_count} ({result.error_rate:.1%}) {errors}")
    lines.append("  threshold        measured      limit  result")
    for row in verdict.rows:
        measured = (
            _ms(row.measured) if row.unit == "ms" else f"{row.measured:.3f}"
        )  # error_rate is always measured
        lines.append(
            f"  {row.name:<14} {measured:>10} {row.threshold:>10g}  "
            f"{'ok' if row.passed else 'FAIL'}"
        )
    lines += _relative_lines(verdict)
    lines += [f"  FAILED: {reason}" for reason in verdict.reasons]
    return lines


def _low(bound: float | None) -> str:
    return " n/a" if bound is None else f"{bound:4.2f}"


def _relative_lines(verdict: LatencyVerdict) -> list[str]:
    lines = [f"  judged by: {verdict.basis}"]
    if not verdict.relative:
        return lines
    lines.append(
        "  vs champion    p50 cand/champ (ms)   p95 cand/champ (ms)   x p95 (low)   MWU p  "
        "floor ms  result"
    )
    for row in verdict.relative:
        lines.append(
            f"  {row.name:<8} {row.candidate_p50_ms:9.1f} /{row.champion_p50_ms:8.1f}   "
            f"{row.candidate_p95_ms:9.1f} /{row.champion_p95_ms:8.1f}   "
            f"{row.ratio_p95:5.2f} ({_low(row.p95_ratio_lower)})  {row.p_value:7.2g}  "
            f"{row.floor_ms:8g}  {'ok' if row.passed else 'FAIL'}"
        )
    return lines


def write_latency(
    out_dir: Path,
    result: LoadResult,
    verdict: LatencyVerdict,
    meta: dict[str, Any],
    champion: LoadResult | None = None,
) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "latency.json", out_dir / "latency.md"
    data = {
        "format": LATENCY_FORMAT,
        "passed": verdict.passed,
        "reasons": list(verdict.reasons),
        **meta,
        "thresholds": [asdict(row) for row in verdict.rows],
        "judged_by": verdict.basis,
        "vs_champion": [
            {**asdict(row), "ratio_p50": row.ratio_p50, "ratio_p95": row.ratio_p95}
            for row in verdict.relative
        ],
        "champion_load": None if champion is None else champion.summary(),
        **result.to_dict(),
    }
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md = ["# Latency gate", "", "```", *latency_summary(result, verdict, meta), "```", ""]
    md.append("![latency histogram](latency.png)")
    md_path.write_text("\n".join(md) + "\n")
    return json_path, md_path
