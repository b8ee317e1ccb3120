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
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pipeline.cli_args import add_definition, add_environment, add_out_dir, add_profile, profile_for
from pipeline.definition import DefinitionError, PipelineDefinition, load_definition
from pipeline.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pipeline.gates.checks import Case, SuiteError, load_suite
from pipeline.gates.latency import write_histogram
from pipeline.gates.quality import (
    CaseResult,
    ChampionResultsError,
    EngineGenerator,
    HttpGenerator,
    load_champion_results,
    run_suite,
)
from pipeline.gates.reports import latency_summary, quality_summary, write_latency, write_quality
from pipeline.gates.verdicts import (
    latency_verdict,
    load_plan,
    measure_latency,
    quality_verdict,
    unequal_threads,
)
from pipeline.processes import ServiceError
from pipeline.serving import pod_threads, running_server
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
    latency.add_argument(
        "--threads",
        type=int,
        help="torch threads for each server started here (default: this machine's cores "
        "shared among them and one more share); give a champion at --champion-url the same",
    )
    champion = latency.add_mutually_exclusive_group()
    champion.add_argument(
        "--champion-model", help="serve this champion beside the candidate and compare (paired)"
    )
    champion.add_argument("--champion-url", help="a running champion server to compare with")
    champion.add_argument(
        "--champion-results",
        type=Path,
        help="the champion's quality.json (from `mlcicd registry champion-results`): "
        "serve the model it names beside the candidate",
    )
    latency.set_defaults(handler=latency_command)

    from pipeline.gates.calibrate import add_parser

    add_parser(gates)


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


@contextmanager
def served(
    definition: PipelineDefinition,
    out: Path,
    name: str,
    model: str | None,
    url: str | None,
    args: Sequence[str] = (),
    threads: int | None = None,
) -> Iterator[str | None]:
    """The URL of ``url``, or of ``model`` served for the block; None when neither is given."""
    if url or not model:
        yield url
        return
    _err(f"starting the {name} server for {model} ...")
    with running_server(name, model, out, definition.serving, args=args, threads=threads) as server:
        yield server.url


def champion_model_from_results(path: Path) -> str:
    """The model a champion's quality.json was measured on; ValueError names the file."""
    try:
        model = json.loads(path.read_text()).get("model")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: not a readable quality.json ({exc})") from exc
    if not isinstance(model, str) or not model:
        raise ValueError(f"{path}: names no model (key 'model')")
    return model


def latency_command(args: argparse.Namespace) -> int:
    try:
        definition = _definition(args)
        plan = load_plan(args, definition)
        if args.champion_results is not None:
            args.champion_model = champion_model_from_results(args.champion_results)
    except (DefinitionError, ValueError) as exc:
        _err(f"mlcicd gate latency: {exc}")
        return EXIT_USAGE
    for given in (args.url, args.champion_url):
        unreachable = _cannot_connect(given) if given else None
        if unreachable:
            _err(f"mlcicd gate latency: cannot connect to {given}: {unreachable}")
            return EXIT_USAGE
    if args.threads is not None and args.threads < 1:
        _err(f"mlcicd gate latency: --threads must be >= 1, got {args.threads}")
        return EXIT_USAGE
    device = ["--device", args.device, "--dtype", args.dtype]
    # Servers started here share the cores: each gets its share, as in the rollout.
    local = [m for m, u in ((args.model, args.url), (args.champion_model, args.champion_url))
             if m and not u]  # fmt: skip
    threads = args.threads or (
        pod_threads(len(local)) if local and args.device in ("cpu", "auto") else None
    )
    try:
        with ExitStack() as stack:
            url = stack.enter_context(
                served(definition, args.out, "server", args.model, args.url,
                       [*args.server_arg, *device], threads)
            )  # fmt: skip
            champion_url = stack.enter_context(
                served(definition, args.out, "champion", args.champion_model,
                       args.champion_url, device, threads)
            )  # fmt: skip
            assert url is not None
            unequal = unequal_threads(url, champion_url) if champion_url else None
            if unequal:
                _err(f"mlcicd gate latency: {unequal}")
                return EXIT_USAGE
            result, champion = measure_latency(definition, plan, url, champion_url)
    except ServiceError as exc:
        _err(f"mlcicd gate latency: the server did not start: {exc}")
        return EXIT_USAGE
    verdict = latency_verdict(definition, result, champion)
    meta = {
        "model": args.model or args.url,
        "champion": args.champion_model or args.champion_url,
        "profile": definition.profile,
        "environment": definition.environment,
        "definition": definition.source,
        "fixed_tokens": args.fixed_tokens,
    }
    json_path, md_path = write_latency(args.out, result, verdict, meta, champion)
    png = args.out / "latency.png"
    write_histogram(result, verdict, png)
    print("\n".join(latency_summary(result, verdict, meta)))
    print(f"  reports: {json_path}, {md_path}, {png}")
    return EXIT_OK if verdict.passed else EXIT_FAILED
