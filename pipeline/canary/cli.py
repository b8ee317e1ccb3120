"""``mlcicd canary analyze``: judge a canary from Prometheus, as Argo Rollouts would.

With ``--stable`` the canary is judged against the stable in the same window
of the same scrape (error-rate increase, p99 and TTFT ratios) and the absolute
limits are ceilings; without it the ceilings judge alone, and the report says so.
Thresholds, window, interval, count and limits come from the pipeline
definition (``--profile``/``--environment``/``--definition``); ``--interval``
and ``--count`` may shorten a run (tests, a quick look) but never change a
threshold. Progress (each resolved query, each measured value) goes to stderr;
the verdict JSON goes to stdout and, with ``--out``, to a file.

Exit codes: 0 successful, 1 failed (including Error: too many consecutive
query errors), 3 inconclusive (too little traffic, no data), 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from pipeline.canary.analysis import (
    VERDICT_FILE,
    VERDICTS,
    AnalysisRun,
    Check,
    Limits,
    Measurement,
    Phase,
    checks_from_gate,
    run_analysis,
)
from pipeline.canary.measure import (
    PrometheusQuerier,
    SelectorError,
    TickValues,
    delta,
    judge_tick,
    query_map,
    read_tick,
    selector,
    traffic_note,
)
from pipeline.canary.promql import CanaryQueries, RelativeQueries
from pipeline.cli_args import add_definition, add_environment, add_out_dir, add_profile
from pipeline.definition import (
    DefinitionError,
    PipelineDefinition,
    duration_seconds,
    load_definition,
)
from pipeline.exit_codes import EXIT_FAILED, EXIT_INCONCLUSIVE, EXIT_OK, EXIT_USAGE

EXIT_CODES = {"successful": EXIT_OK, "failed": EXIT_FAILED, "inconclusive": EXIT_INCONCLUSIVE}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _fmt(value: float | None) -> str:
    return "empty" if value is None else f"{value:.4g}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4g}"


def _selectors(args: argparse.Namespace) -> tuple[str, str | None]:
    base = {"job": args.job} if args.job else {}
    if args.stable and not args.canary:
        raise SelectorError("--stable needs --canary (the pair to compare)")
    if args.canary and args.version:
        raise SelectorError("use either --version or the --stable/--canary pair, not both")
    version = args.canary or args.version
    canary = {**base, args.version_label: version} if version else base
    if not canary:
        raise SelectorError("nothing selects the canary: pass --job and/or --version")
    stable = {**base, args.version_label: args.stable} if args.stable else None
    return selector(canary), (selector(stable) if stable is not None else None)


@dataclass
class Plan:
    """What one analysis asks and judges by, resolved from the definition and the args."""

    definition: PipelineDefinition
    interval_s: float
    window_s: float
    limits: Limits
    checks: tuple[Check, ...]
    canary_sel: str
    stable_sel: str | None
    canary_q: dict[str, str]
    stable_q: dict[str, str] | None


def plan(args: argparse.Namespace) -> Plan:
    definition = load_definition(args.profile, args.environment, args.definition)
    gate = definition.canary
    if args.count is not None and args.count < 1:
        raise DefinitionError("--count: must be at least 1")
    canary_sel, stable_sel = _selectors(args)
    canary = CanaryQueries(canary_sel, gate.window)
    stable = CanaryQueries(stable_sel, gate.window) if stable_sel else None
    relative = RelativeQueries.for_gate(canary, stable, gate) if stable else None
    return Plan(
        definition,
        float(duration_seconds(args.interval or gate.interval)),
        float(duration_seconds(gate.window)),
        Limits.from_gate(gate, args.count),
        checks_from_gate(gate, relative=stable is not None),
        canary_sel,
        stable_sel,
        query_map(canary, relative),
        query_map(stable) if stable else None,
    )


def _announce(p: Plan, prometheus_url: str) -> None:
    gate, limits = p.definition.canary, p.limits
    _say(
        f"canary analysis: profile {p.definition.profile}, environment "
        f"{p.definition.environment or '-'}, prometheus {prometheus_url}"
    )
    _say(
        f"  canary selector: {p.canary_sel}" + (f"; stable: {p.stable_sel}" if p.stable_sel else "")
    )
    if p.stable_sel is None:
        _say("  no stable to compare with: the absolute ceilings judge alone")
    _say(
        f"  window {gate.window}, interval {p.interval_s:g}s, count {limits.count}; "
        f"failureLimit {limits.failure_limit}, inconclusiveLimit {limits.inconclusive_limit}, "
        f"consecutiveErrorLimit {limits.consecutive_error_limit}, "
        f"min requests {gate.min_requests}"
    )
    conditions = {c.name: c.condition for c in p.checks}
    for name, promql in p.canary_q.items():
        _say(f"  query {name}" + (f" ({conditions[name]})" if name in conditions else "") + ":")
        _say(f"    {promql}")


def _tick_lines(
    tick: int, at: float, seen: TickValues, base: TickValues | None,
    measured: dict[str, Measurement], running: list[str],
) -> list[str]:  # fmt: skip
    """Each running metric: canary value, stable value and delta (when plain), phase."""
    lines = [f"#{tick + 1} t={at:.1f}s requests={_fmt(seen.values['requests'])}"
             + (f" (stable {_fmt(base.values['requests'])})" if base else "")]  # fmt: skip
    for name in running:
        m = measured[name]
        beside = ""
        if base is not None and name in base.values:
            diff = delta(seen.values[name], base.values[name])
            beside = f" stable={_fmt(base.values[name])} delta={_signed(diff)}"
        lines.append(f"    {name}: canary={_fmt(m.value)}{beside} -> {m.phase.value}"
                     + (f" ({m.message})" if m.phase is not Phase.SUCCESSFUL else ""))  # fmt: skip
    return lines


def analyze(args: argparse.Namespace) -> dict[str, Any]:
    p = plan(args)
    gate = p.definition.canary
    query = PrometheusQuerier(args.prometheus_url)
    _announce(p, args.prometheus_url)
    run = AnalysisRun(tuple(c.name for c in p.checks), p.limits)
    ticks: list[dict[str, Any]] = []
    start = time.monotonic()

    def measure(tick: int) -> dict[str, Measurement]:
        at = time.monotonic() - start
        seen = read_tick(query, p.canary_q)
        base = read_tick(query, p.stable_q) if p.stable_q else None
        note = traffic_note(
            seen.values["requests"], base.values["requests"] if base else None,
            p.window_s, gate.min_requests,
        )  # fmt: skip
        measured = judge_tick(seen, p.checks, gate.min_requests, at, note)
        for line in _tick_lines(tick, at, seen, base, measured, run.running()):
            _say(line)
        row: dict[str, Any] = {"tick": tick + 1, "at": round(at, 3), "canary": seen.values}
        if base is not None:
            row["stable"] = base.values
            row["delta"] = {k: delta(seen.values[k], base.values[k]) for k in base.values}
        ticks.append(row)
        return measured

    phase = run_analysis(run, measure, p.interval_s)
    return _report(p, run, phase, ticks, args.prometheus_url)


def _reasons(run: AnalysisRun) -> list[str]:
    """For each metric that did not succeed: its phase and its last telling measurement."""
    out = []
    for result in run.results.values():
        if result.phase is Phase.SUCCESSFUL:
            continue
        bad = [m for m in result.measurements if m.phase is not Phase.SUCCESSFUL]
        last = bad[-1] if bad else None
        detail = f" {_fmt(last.value)}: {last.message}" if last else ""
        counts = f"{result.failed} failed, {result.inconclusive} inconclusive, {result.error} error"
        out.append(f"{result.name} {result.phase.value} ({counts});{detail}")
    return out


def _report(
    p: Plan, run: AnalysisRun, phase: Phase, ticks: list[dict[str, Any]], prometheus_url: str
) -> dict[str, Any]:
    limits = p.limits
    return {
        "verdict": VERDICTS[phase],
        "phase": phase.value,
        "reasons": _reasons(run),
        "judged_by": "canary vs stable, same window and scrape; absolute limits are ceilings"
        if p.stable_sel
        else "absolute ceilings only: no stable to compare with",
        "profile": p.definition.profile,
        "environment": p.definition.environment,
        "prometheus_url": prometheus_url,
        "selector": p.canary_sel,
        "stable_selector": p.stable_sel,
        "window": p.definition.canary.window,
        "interval_s": p.interval_s,
        "limits": {
            "count": limits.count,
            "failure_limit": limits.failure_limit,
            "inconclusive_limit": limits.inconclusive_limit,
            "consecutive_error_limit": limits.consecutive_error_limit,
            "min_requests": p.definition.canary.min_requests,
        },
        "queries": p.canary_q,
        "conditions": {c.name: c.condition for c in p.checks},
        "metrics": [r.to_json() for r in run.results.values()],
        "ticks": _json_safe(ticks),
    }


def _json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON: report them as strings in the raw tick values."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _handle(args: argparse.Namespace) -> int:
    try:
        report = analyze(args)
    except (DefinitionError, SelectorError) as exc:
        print(f"mlcicd canary analyze: {exc}", file=sys.stderr)
        return EXIT_USAGE
    text = json.dumps(report, indent=2, allow_nan=False)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / VERDICT_FILE).write_text(text + "\n")
    print(text)
    failing = [m["name"] for m in report["metrics"] if m["phase"] != "Successful"]
    _say(
        f"verdict: {report['verdict']} ({report['phase']})"
        + (f"; not successful: {', '.join(failing)}" if failing else "")
    )
    for reason in report["reasons"]:
        _say(f"  {reason}")
    return EXIT_CODES[str(report["verdict"])]


def _golden(args: argparse.Namespace) -> int:
    """``mlcicd canary golden``: the golden-prompt check (pipeline/canary/golden.py)."""
    from pipeline.canary.golden import GOLDEN_FILE, run_golden

    try:
        definition = load_definition(args.profile, args.environment, args.definition)
    except DefinitionError as exc:
        print(f"mlcicd canary golden: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = run_golden(definition, args.endpoint, args.expect_revision)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / GOLDEN_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    print(result.summary())
    return EXIT_OK if result.passed else EXIT_FAILED


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "canary",
        help="canary analysis against Prometheus",
        description="Judge a canary from Prometheus metrics, as Argo Rollouts' analysis does.",
    )
    actions = parser.add_subparsers(dest="canary_command", required=True, metavar="ACTION")
    ana = actions.add_parser(
        "analyze",
        help="measure and judge a canary (Argo semantics)",
        description="Measure the canary's success rate, error rate and latencies in "
        "Prometheus every interval, with the definition's thresholds and Argo's limits. "
        "Exit 0 successful, 1 failed, 3 inconclusive, 2 usage error.",
    )
    ana.add_argument("--prometheus-url", required=True, help="e.g. http://127.0.0.1:9090")
    ana.add_argument("--job", default="inference", help="job label (default: inference)")
    ana.add_argument("--version", help="version label value of the release to judge")
    ana.add_argument("--canary", help="version label of the canary (with --stable)")
    ana.add_argument(
        "--stable", help="version label of the stable release: the canary is judged against it"
    )
    ana.add_argument("--version-label", default="version", help="label name (default: version)")
    add_profile(ana)
    add_environment(ana, "staging or prod: their limits differ")
    add_definition(ana)
    ana.add_argument("--interval", help="override the measurement interval, e.g. 2s")
    ana.add_argument("--count", type=int, help="override the number of measurements")
    add_out_dir(ana, None, f"the verdict, {VERDICT_FILE} (it is printed too)")
    ana.set_defaults(handler=_handle)
    gold = actions.add_parser("golden", help="golden prompts, TTFT and model revision")
    gold.add_argument("--endpoint", required=True, help="the canary alone, e.g. http://...:8000")
    gold.add_argument("--expect-revision", help="the revision the canary must serve")
    add_profile(gold)
    add_environment(gold)
    add_definition(gold)
    add_out_dir(gold, None, "the result, golden.json")
    gold.set_defaults(handler=_golden)
