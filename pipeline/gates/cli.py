"""``mlcicd gate quality`` and ``mlcicd gate latency``: the release gates on the command line.

Every threshold comes from the pipeline definition (``--profile``,
``--environment``, ``--definition``); the options here only choose what to
measure (model or URL, suite, request count, load shape) and where reports go.
Exit codes: 0 pass, 1 the gate failed, 2 usage or configuration error.
Progress goes to stderr, the verdict to stdout, the reports to ``--out``.

Left out: running both gates in one command (the local runner and the workflow
call them as separate steps, so each shows up as its own result).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pipeline.cli_args import add_definition, add_environment, add_out_dir, add_profile, profile_for
from pipeline.definition import DefinitionError, PipelineDefinition, load_definition
from pipeline.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pipeline.gates.checks import Case, SuiteError, load_suite
from pipeline.gates.latency import LatencyVerdict, judge_latency, write_histogram
from pipeline.gates.quality import (
    CaseResult,
    ChampionResultsError,
    EngineGenerator,
    HttpGenerator,
    QualityVerdict,
    judge_quality,
    load_champion_results,
    run_suite,
)
from pipeline.gates.reports import latency_summary, quality_summary, write_latency, write_quality
from pipeline.load.generator import LoadResult, run_load
from pipeline.processes import ServiceError
from pipeline.serving import running_server
from pipeline.source import REPO_ROOT

if TYPE_CHECKING:
    from inference.loader import LoadedModel

DEFAULT_OUT = "reports/gates"  # ignored by git


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _definition(args: argparse.Namespace) -> PipelineDefinition:
    profile = profile_for(args.profile, args.model)
    return load_definition(profile, args.environment, args.definition)


def _common(parser: argparse.ArgumentParser) -> None:
    add_profile(parser)
    add_environment(parser)
    add_definition(parser)
    add_out_dir(parser, Path(DEFAULT_OUT), "the gate's reports")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="builtin, builtin-weak, a model directory or a HF id")
    target.add_argument("--url", help="a running inference server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--device", default="auto", help="with --model: auto, cpu or cuda")
    parser.add_argument("--dtype", default="auto", help="with --model: auto, fp32, fp16, bf16")


def quality_verdict(
    definition: PipelineDefinition,
    results: Sequence[CaseResult],
    champion: Mapping[str, bool] | None = None,
) -> QualityVerdict:
    """The quality gate's decision with the definition's thresholds."""
    return judge_quality(
        results,
        min_pass_rate=definition.quality.min_pass_rate,
        max_regression_vs_champion=definition.quality.max_regression_vs_champion,
        champion=champion,
    )


def latency_verdict(definition: PipelineDefinition, result: LoadResult) -> LatencyVerdict:
    """The latency gate's decision with the definition's thresholds."""
    lat = definition.latency
    return judge_latency(
        result,
        max_ttft_p99_ms=lat.max_ttft_p99_ms,
        max_e2e_mean_ms=lat.max_e2e_mean_ms,
        max_error_rate=lat.max_error_rate,
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gate = subparsers.add_parser(
        "gate",
        help="run a release gate (quality, latency)",
        description="Judge a model by one release gate, thresholds from the pipeline "
        "definition. Exit 0 pass, 1 fail, 2 usage or configuration error.",
    )
    gates = gate.add_subparsers(dest="gate", required=True, metavar="GATE")

    quality = gates.add_parser(
        "quality",
        help="run the eval suite and judge the pass rate",
        description="Run the definition's eval suite against a model (in process) or a "
        "server, judge the pass rate and, given the champion's results, the paired "
        "regression against it.",
    )
    _common(quality)
    quality.add_argument("--suite", type=Path, help="JSONL suite (default: the definition's)")
    quality.add_argument(
        "--champion-results",
        type=Path,
        help="the champion's quality.json, for the paired regression check",
    )
    quality.set_defaults(handler=quality_command)

    latency = gates.add_parser(
        "latency",
        help="load-test a server and judge its latency",
        description="Load-test a server (started here for --model, or at --url) and judge "
        "time to first token, mean latency and error rate. A --url where nothing "
        "answers is a usage error (exit 2), not a failed gate.",
    )
    _common(latency)
    load = latency.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, help="closed-loop workers (default: definition)")
    load.add_argument("--rate", type=float, help="open-loop Poisson arrivals per second")
    latency.add_argument("--requests", type=int, help="measured requests (default: definition)")
    latency.add_argument("--warmup", type=int, help="warm-up requests (default: definition)")
    latency.add_argument("--seed", type=int, default=0, help="seed of the Poisson schedule")
    latency.add_argument(
        "--no-fixed-tokens",
        dest="fixed_tokens",
        action="store_false",
        help="let generations stop early (default: exactly max_new_tokens each, via the "
        "completions API's min_tokens)",
    )
    latency.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="with --model: extra argument for `mlcicd serve`, repeatable "
        "(e.g. --server-arg=--fault-error-rate --server-arg=0.2)",
    )
    latency.set_defaults(handler=latency_command)


# -- quality -------------------------------------------------------------------------


def _suite_path(args: argparse.Namespace, definition: PipelineDefinition) -> Path:
    if args.suite is not None:
        return Path(args.suite)
    path = Path(definition.quality.suite)
    return path if path.is_absolute() else REPO_ROOT / path


def _progress(total: int) -> Callable[[CaseResult], None]:
    seen = [0]

    def show(result: CaseResult) -> None:
        seen[0] += 1
        note = f" ({result.error})" if result.error else ""
        _err(
            f"[{seen[0]:>3}/{total}] {result.status.upper():<7} {result.id} "
            f"{result.duration_s:.2f}s{note}"
        )

    return show


async def _run_quality(
    args: argparse.Namespace,
    definition: PipelineDefinition,
    cases: list[Case],
    loaded: LoadedModel | None,
) -> list[CaseResult]:
    q = definition.quality
    limits: dict[str, Any] = {
        "max_new_tokens": q.max_new_tokens,
        "case_timeout_s": q.case_timeout_s,
        "on_result": _progress(len(cases)),
    }
    if loaded is None:
        async with httpx.AsyncClient(timeout=q.case_timeout_s + 5.0) as client:
            generator = HttpGenerator(client, args.url)
            return await run_suite(cases, generator, **limits)

    from inference.torch_engine import TorchEngine

    # One sequence at a time: a case's timeout then measures that case alone.
    engine = TorchEngine(loaded, max_batch_size=1, batch_window_s=0.0, queue_cap=len(cases) + 1)
    engine.start()
    try:
        return await run_suite(cases, EngineGenerator(engine), **limits)
    finally:
        engine.stop()


def quality_command(args: argparse.Namespace) -> int:
    try:
        definition = _definition(args)
        suite = _suite_path(args, definition)
        cases = load_suite(suite)
        champion = load_champion_results(args.champion_results) if args.champion_results else None
    except (DefinitionError, SuiteError, ChampionResultsError) as exc:
        _err(f"mlcicd gate quality: {exc}")
        return EXIT_USAGE
    if champion is not None and not set(champion) & {c.id for c in cases}:
        _err(
            f"mlcicd gate quality: {args.champion_results}: no case id in common with "
            f"{suite}; a paired comparison is impossible"
        )
        return EXIT_USAGE
    loaded = None
    target: dict[str, Any] = {"model": args.url, "revision": None, "url": args.url}
    if args.model:
        from inference.loader import ModelLoadError, load_model

        _err(f"loading model {args.model!r} ...")
        try:
            loaded = load_model(args.model, device=args.device, dtype=args.dtype)
        except (ModelLoadError, ValueError) as exc:
            _err(f"mlcicd gate quality: {exc}")
            return EXIT_USAGE
        target = {"model": loaded.name, "revision": loaded.revision, "url": None}
    results = asyncio.run(_run_quality(args, definition, cases, loaded))
    verdict = quality_verdict(definition, results, champion)
    meta = {
        **target,
        "suite": str(suite),
        "profile": definition.profile,
        "environment": definition.environment,
        "definition": definition.source,
    }
    json_path, md_path = write_quality(args.out, verdict, results, meta)
    print("\n".join(quality_summary(verdict, meta)))
    print(f"  reports: {json_path}, {md_path}")
    return EXIT_OK if verdict.passed else EXIT_FAILED


# -- latency -------------------------------------------------------------------------


def _cannot_connect(url: str) -> str | None:
    """Why ``url`` cannot be reached at all, or None if something answers HTTP there.

    A server that is not there is a usage error (exit 2), not a failed gate: a
    gate judges a release, and there is no release to judge.
    """
    try:
        httpx.get(url.rstrip("/") + "/health", timeout=5.0)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
        return str(exc) or type(exc).__name__
    except httpx.HTTPError:
        return None  # it answered, if badly: the gate will judge that
    return None


def latency_command(args: argparse.Namespace) -> int:
    try:
        definition = _definition(args)
    except DefinitionError as exc:
        _err(f"mlcicd gate latency: {exc}")
        return EXIT_USAGE
    lat = definition.latency
    requests = args.requests if args.requests is not None else lat.requests
    warmup = args.warmup if args.warmup is not None else lat.warmup_requests
    concurrency = None if args.rate is not None else (args.concurrency or lat.concurrency)
    for name, value in (("--requests", requests), ("--concurrency", concurrency or 1)):
        if value < 1:
            _err(f"mlcicd gate latency: {name} must be >= 1, got {value}")
            return EXIT_USAGE
    if warmup < 0 or (args.rate is not None and args.rate <= 0):
        _err("mlcicd gate latency: --warmup must be >= 0 and --rate > 0")
        return EXIT_USAGE

    def measure(url: str) -> int:
        result = asyncio.run(
            run_load(
                url,
                requests=requests,
                warmup=warmup,
                max_new_tokens=lat.max_new_tokens,
                concurrency=concurrency,
                rate=args.rate,
                fixed_tokens=args.fixed_tokens,
                seed=args.seed,
                request_timeout_s=definition.serving.request_deadline_s + 5.0,
            )
        )
        verdict = latency_verdict(definition, result)
        meta = {
            "model": args.model or args.url,
            "profile": definition.profile,
            "environment": definition.environment,
            "definition": definition.source,
            "fixed_tokens": args.fixed_tokens,
        }
        json_path, md_path = write_latency(args.out, result, verdict, meta)
        png = args.out / "latency.png"
        write_histogram(result, verdict, png)
        print("\n".join(latency_summary(result, verdict, meta)))
        print(f"  reports: {json_path}, {md_path}, {png}")
        return EXIT_OK if verdict.passed else EXIT_FAILED

    if args.url:
        unreachable = _cannot_connect(args.url)
        if unreachable:
            _err(f"mlcicd gate latency: cannot connect to {args.url}: {unreachable}")
            return EXIT_USAGE
        return measure(args.url)
    server_args = [*args.server_arg, "--device", args.device, "--dtype", args.dtype]
    _err(f"starting the server for {args.model} ...")
    try:
        with running_server(
            "server", args.model, args.out, definition.serving, args=server_args
        ) as server:
            return measure(server.url)
    except ServiceError as exc:
        _err(f"mlcicd gate latency: the server did not start: {exc}")
        return EXIT_USAGE
