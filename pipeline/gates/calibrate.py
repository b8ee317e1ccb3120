"""``mlcicd gate calibrate``: measure the gates themselves.

Why: a gate that rejects healthy releases on a busy machine teaches people to
rerun until green, and one that waves a fault through is no gate. Both rates
can be measured: run the quality and latency gates N times on a known-good
release and N times on each known-bad one, and count.

Releases (``VARIANTS``), each served as a candidate beside the champion
(``builtin``, served once for the whole calibration):

- ``good``: the champion's own model, no fault; every rejection is a false reject;
- ``latency-300ms``: every request delayed 300 ms (``--fault-latency-ms``);
- ``errors-5pct``: 5 % of requests answered 500 (``--fault-error-rate``);
- ``weak``: the deliberately weaker built-in model (``builtin-weak``).

A release is accepted when both gates pass, as in the pipeline (``--gates``
narrows a calibration to one gate); the report also
counts which gate rejected it, so a fault caught for the wrong reason shows.
Conditions: ``quiet`` (the machine as it is) and ``hog`` (plus a busy loop
pinning one core for the condition's whole length). Rates come with the gates'
own Wilson interval.

Deliberately left out: the canary analysis (it needs Prometheus and a traffic
split, calibrated through repeated ``mlcicd run --canary-fault``), and server
start-up, which is not part of a gate's judgement (each release's server is
started once per condition and judged N times).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pipeline.cli_args import add_definition, add_out_dir, add_profile, profile_for
from pipeline.definition import DefinitionError, PipelineDefinition, load_definition
from pipeline.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pipeline.gates.checks import load_suite
from pipeline.gates.latency import LatencyVerdict
from pipeline.gates.quality import HttpGenerator, run_suite
from pipeline.gates.stats import wilson_interval
from pipeline.gates.verdicts import LoadPlan, latency_verdict, measure_latency, quality_verdict
from pipeline.serving import pod_threads, running_server
from pipeline.source import REPO_ROOT

CHAMPION = "builtin"


@dataclass(frozen=True)
class Variant:
    model: str
    server_args: tuple[str, ...]
    bad: bool


VARIANTS: dict[str, Variant] = {
    "good": Variant("builtin", (), bad=False),
    "latency-300ms": Variant("builtin", ("--fault-latency-ms", "300"), bad=True),
    "errors-5pct": Variant("builtin", ("--fault-error-rate", "0.05"), bad=True),
    "weak": Variant("builtin-weak", (), bad=True),
}
CONDITIONS = ("quiet", "hog")


@dataclass
class Tally:
    """N judgements of one release under one condition."""

    variant: str
    condition: str
    bad: bool
    runs: int = 0
    rejected: int = 0
    rejected_by: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self, failed_gates: list[str]) -> None:
        self.runs += 1
        if failed_gates:
            self.rejected += 1
        for gate in failed_gates:
            self.rejected_by[gate] = self.rejected_by.get(gate, 0) + 1

    @property
    def wrong(self) -> int:
        """False rejects of a good release, false accepts of a bad one."""
        return self.runs - self.rejected if self.bad else self.rejected

    def to_json(self) -> dict[str, Any]:
        ci = wilson_interval(self.wrong, self.runs)
        return {
            "variant": self.variant,
            "condition": self.condition,
            "kind": "false accept" if self.bad else "false reject",
            "runs": self.runs,
            "rejected": self.rejected,
            "rejected_by": self.rejected_by,
            "wrong": self.wrong,
            "rate": self.wrong / self.runs if self.runs else None,
            "ci95": [ci.low, ci.high],
            "seconds": round(self.seconds, 1),
        }


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextmanager
def cpu_hog(enabled: bool) -> Iterator[None]:
    """A busy loop in a child process: one core taken for the block's length."""
    if not enabled:
        yield
        return
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def quality_once(definition: PipelineDefinition, url: str) -> list[Any]:
    q = definition.quality
    path = Path(q.suite) if Path(q.suite).is_absolute() else REPO_ROOT / q.suite

    async def go() -> list[Any]:
        async with httpx.AsyncClient(timeout=q.case_timeout_s + 5.0) as client:
            return await run_suite(
                load_suite(path),
                HttpGenerator(client, url),
                max_new_tokens=q.max_new_tokens,
                case_timeout_s=q.case_timeout_s,
            )

    return asyncio.run(go())


def latency_failures(verdict: LatencyVerdict) -> list[str]:
    """Which part of the latency gate rejected: the comparison, a time ceiling, errors."""
    if verdict.passed:
        return []
    parts = []
    if any(not row.passed for row in verdict.relative):
        parts.append("latency:vs-champion")
    if any(not row.passed for row in verdict.rows if row.name != "error_rate"):
        parts.append("latency:ceiling")
    if any(not row.passed for row in verdict.rows if row.name == "error_rate"):
        parts.append("latency:errors")
    return parts or ["latency"]


def judge_once(
    definition: PipelineDefinition,
    gates: list[str],
    url: str,
    champion_url: str,
    champion_cases: dict[str, bool],
    requests: int,
    warmup: int,
    seed: int,
) -> list[str]:
    """The gates, as the pipeline runs them; the names of those that failed."""
    failed: list[str] = []
    reasons: list[str] = []
    if "quality" in gates:
        quality = quality_verdict(definition, quality_once(definition, url), champion_cases)
        reasons += quality.reasons
        if not quality.passed:
            failed.append("quality")
    if "latency" in gates:
        lat = definition.latency
        plan = LoadPlan(requests, warmup, lat.concurrency, None, True, seed)
        result, champion = measure_latency(definition, plan, url, champion_url)
        verdict = latency_verdict(definition, result, champion)
        reasons += verdict.reasons
        failed += latency_failures(verdict)
    reasons = ["; ".join(reasons)[:300]]
    _say(f"    -> {'rejected by ' + ', '.join(failed) if failed else 'accepted'} {reasons[0]}")
    return failed


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    """Every (condition, release) cell; the report is rewritten after each, so a long
    calibration that is stopped still leaves the cells it finished."""
    # The releases are built-in models, so the profile defaults to builtin.
    definition = load_definition(profile_for(args.profile, CHAMPION), None, args.definition)
    requests = args.requests or definition.latency.requests
    warmup = definition.latency.warmup_requests if args.warmup is None else args.warmup
    tallies: list[Tally] = []

    def report() -> dict[str, Any]:
        return {
            "format": "mlcicd.calibration/v1",
            "profile": definition.profile,
            "runs_per_cell": args.runs,
            "gates": args.gates,
            "latency_requests_per_side": requests,
            "latency_warmup_per_side": warmup,
            "command": " ".join(["mlcicd", *sys.argv[1:]]),
            "cells": [t.to_json() for t in tallies],
        }

    log_dir = args.out / "servers"
    threads = pod_threads(2)  # champion and candidate share the cores, as in the pipeline
    with running_server(
        "champion", CHAMPION, log_dir, definition.serving, threads=threads
    ) as champion:
        champion_cases = (
            {r.id: r.passed for r in quality_once(definition, champion.url)}
            if "quality" in args.gates
            else {}
        )
        for condition in args.conditions:
            with cpu_hog(condition == "hog"):
                for name in args.variants:
                    variant = VARIANTS[name]
                    tally = Tally(name, condition, variant.bad)
                    started = time.monotonic()
                    with ExitStack() as stack:
                        server = stack.enter_context(
                            running_server(
                                f"candidate-{name}", variant.model, log_dir, definition.serving,
                                args=variant.server_args, threads=threads,
                            )
                        )  # fmt: skip
                        for run in range(args.runs):
                            _say(f"[{condition}] {name}: run {run + 1}/{args.runs}")
                            tally.record(
                                judge_once(definition, args.gates, server.url, champion.url,
                                           champion_cases, requests, warmup, seed=run)
                            )  # fmt: skip
                    tally.seconds = time.monotonic() - started
                    tallies.append(tally)
                    write(args.out, report())
    return report()


def write(out: Path, report: dict[str, Any]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (out / "calibration.md").write_text(table)
    return table


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| release | condition | measures | wrong / runs | rate | 95% CI (Wilson) | rejected by |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in report["cells"]:
        by = ", ".join(f"{g} {n}" for g, n in sorted(c["rejected_by"].items())) or "-"
        rate = "n/a" if c["rate"] is None else f"{c['rate']:.0%}"
        lines.append(
            f"| {c['variant']} | {c['condition']} | {c['kind']} | {c['wrong']} / {c['runs']} "
            f"| {rate} | {c['ci95'][0]:.0%}-{c['ci95'][1]:.0%} | {by} |"
        )
    return "\n".join(lines) + "\n"


def calibrate_command(args: argparse.Namespace) -> int:
    unknown = [v for v in args.variants if v not in VARIANTS]
    unknown += [g for g in args.gates if g not in ("quality", "latency")]
    unknown += [c for c in args.conditions if c not in CONDITIONS]
    if unknown or args.runs < 1:
        _err = f"unknown {', '.join(unknown)}" if unknown else "--runs must be >= 1"
        _say(f"mlcicd gate calibrate: {_err}")
        return EXIT_USAGE
    try:
        report = calibrate(args)
    except DefinitionError as exc:
        _say(f"mlcicd gate calibrate: {exc}")
        return EXIT_USAGE
    print(write(args.out, report))
    wrong = sum(c["wrong"] for c in report["cells"])
    return EXIT_OK if wrong == 0 else EXIT_FAILED


def add_parser(gates: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = gates.add_parser(
        "calibrate",
        help="measure the gates' false-reject and false-accept rates",
        description="Judge a known-good release and known-bad ones (300 ms latency, 5%% "
        "errors, builtin-weak) N times each with the quality and latency gates, quiet and "
        "with a one-core CPU hog; report false rejects and false accepts with Wilson "
        "intervals. Exit 0 when no verdict was wrong, 1 otherwise.",
    )
    add_profile(parser)
    add_definition(parser)
    parser.add_argument("--runs", type=int, default=20, help="judgements per release and condition")
    parser.add_argument("--requests", type=int, help="latency requests per side (definition's)")
    parser.add_argument("--warmup", type=int, help="latency warm-up requests (definition's)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help=", ".join(VARIANTS))
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), help="quiet, hog")
    parser.add_argument(
        "--gates",
        nargs="+",
        default=["quality", "latency"],
        help="the gates a release must pass (default both, as in the pipeline)",
    )
    add_out_dir(parser, Path("reports/calibration"), "calibration.json and calibration.md")
    parser.set_defaults(handler=calibrate_command)
