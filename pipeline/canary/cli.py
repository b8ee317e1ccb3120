"""``mlcicd canary analyze``: judge a canary from Prometheus, as Argo Rollouts would.

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
from pathlib import Path
from typing import Any

from pipeline.canary.analysis import (
    VERDICTS,
    AnalysisRun,
    Limits,
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
)
from pipeline.canary.promql import CanaryQueries
from pipeline.cli_args import add_definition, add_environment, add_out_dir, add_profile
from pipeline.definition import DefinitionError, duration_seconds, load_definition
from pipeline.exit_codes import EXIT_FAILED, EXIT_INCONCLUSIVE, EXIT_OK, EXIT_USAGE

EXIT_CODES = {"successful": EXIT_OK, "failed": EXIT_FAILED, "inconclusive": EXIT_INCONCLUSIVE}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _fmt(value: float | None) -> str:
    return "empty" if value is None else f"{value:.4g}"


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


def analyze(args: argparse.Namespace) -> dict[str, Any]:
    definition = load_definition(args.profile, args.environment, args.definition)
    gate = definition.canary
    interval_s = float(duration_seconds(args.interval or gate.interval))
    if args.count is not None and args.count < 1:
        raise DefinitionError("--count: must be at least 1")
    limits = Limits.from_gate(gate, args.count)
    checks = checks_from_gate(gate)
    canary_sel, stable_sel = _selectors(args)
    canary_q = query_map(CanaryQueries(canary_sel, gate.window))
    stable_q = query_map(CanaryQueries(stable_sel, gate.window)) if stable_sel else None
    query = PrometheusQuerier(args.prometheus_url)

    _say(
        f"canary analysis: profile {definition.profile}, environment "
        f"{definition.environment or '-'}, prometheus {args.prometheus_url}"
    )
    _say(f"  canary selector: {canary_sel}" + (f"; stable: {stable_sel}" if stable_sel else ""))
    _say(
        f"  window {gate.window}, interval {interval_s:g}s, count {limits.count}; "
        f"failureLimit {limits.failure_limit}, inconclusiveLimit {limits.inconclusive_limit}, "
        f"consecutiveErrorLimit {limits.consecutive_error_limit}, "
        f"min requests {gate.min_requests}"
    )
    conditions = {c.name: c.condition for c in checks}
    for name, promql in canary_q.items():
        _say(f"  query {name}" + (f" ({conditions[name]})" if name in conditions else "") + ":")
        _say(f"    {promql}")

    run = AnalysisRun(tuple(c.name for c in checks), limits)
    ticks: list[dict[str, Any]] = []
    start = time.monotonic()

    def measure(tick: int) -> dict[str, Any]:
        at = time.monotonic() - start
        seen = read_tick(query, canary_q)
        measured = judge_tick(seen, checks, gate.min_requests, at)
        base: TickValues | None = read_tick(query, stable_q) if stable_q else None
        parts = [f"requests={_fmt(seen.values['requests'])}"]
        for name in run.running():
            parts.append(f"{name}={_fmt(measured[name].value)} {measured[name].phase.value}")
        _say(f"#{tick + 1} t={at:.1f}s " + "  ".join(parts))
        why: dict[str, list[str]] = {}
        for name, m in measured.items():
            if m.phase in (Phase.ERROR, Phase.INCONCLUSIVE) and name in run.running():
                why.setdefault(m.message, []).append(name)
        for message, names in why.items():
            _say(f"    {', '.join(names)}: {message}")
        row: dict[str, Any] = {"tick": tick + 1, "at": round(at, 3), "canary": seen.values}
        if base is not None:
            row["stable"] = base.values
            row["delta"] = {k: delta(seen.values[k], base.values[k]) for k in canary_q}
            _say(
                "    stable: "
                + "  ".join(f"{k}={_fmt(v)}" for k, v in base.values.items())
                + "  delta: "
                + "  ".join(f"{k}={_fmt(v)}" for k, v in row["delta"].items())
            )
        ticks.append(row)
        return measured

    phase = run_analysis(run, measure, interval_s)
    verdict = VERDICTS[phase]
    return {
        "verdict": verdict,
        "phase": phase.value,
        "profile": definition.profile,
        "environment": definition.environment,
        "prometheus_url": args.prometheus_url,
        "selector": canary_sel,
        "stable_selector": stable_sel,
        "window": gate.window,
        "interval_s": interval_s,
        "limits": {
            "count": limits.count,
            "failure_limit": limits.failure_limit,
            "inconclusive_limit": limits.inconclusive_limit,
            "consecutive_error_limit": limits.consecutive_error_limit,
            "min_requests": gate.min_requests,
        },
        "queries": canary_q,
        "conditions": conditions,
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
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    failing = [m["name"] for m in report["metrics"] if m["phase"] != "Successful"]
    _say(
        f"verdict: {report['verdict']} ({report['phase']})"
        + (f"; not successful: {', '.join(failing)}" if failing else "")
    )
    return EXIT_CODES[str(report["verdict"])]


def _golden(args: argparse.Namespace) -> int:
    """``mlcicd canary golden``: the golden-prompt check (pipeline/canary/golden.py)."""
    from pipeline.canary.golden import run_golden

    try:
        definition = load_definition(args.profile, args.environment, args.definition)
    except DefinitionError as exc:
        print(f"mlcicd canary golden: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = run_golden(definition, args.endpoint, args.expect_revision)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "golden.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
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
    ana.add_argument("--stable", help="version label of the stable release (reported, not judged)")
    ana.add_argument("--version-label", default="version", help="label name (default: version)")
    add_profile(ana)
    add_environment(ana, "staging or prod: their limits differ")
    add_definition(ana)
    ana.add_argument("--interval", help="override the measurement interval, e.g. 2s")
    ana.add_argument("--count", type=int, help="override the number of measurements")
    ana.add_argument("--out", help="also write the verdict JSON here")
    ana.set_defaults(handler=_handle)
    gold = actions.add_parser("golden", help="golden prompts, TTFT and model revision")
    gold.add_argument("--endpoint", required=True, help="the canary alone, e.g. http://...:8000")
    gold.add_argument("--expect-revision", help="the revision the canary must serve")
    add_profile(gold)
    add_environment(gold)
    add_definition(gold)
    add_out_dir(gold, None, "the result, golden.json")
    gold.set_defaults(handler=_golden)
