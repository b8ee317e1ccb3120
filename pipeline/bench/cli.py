"""``mlcicd bench``: run the benchmark and write bench.json, bench.md and bench.png.

Three columns, one run: our server, the naive pipeline server and the peer
(CTranslate2 in process on the same weights, fp32 and int8; optional extra
``peer``: without it the peer's cells say so and its targets read NOT MEASURED).
The one-client target is taken in turns with the peer, after our server's
levels (pipeline/bench/paired.py), so both sides meet the same minute of the host.

What runs is the ``bench`` table of the pipeline definition (models,
concurrency levels, request counts, time budget, targets) for ``--profile``
(default ``cpu``); flags override a value for one run and the override is
recorded in the output's ``config``. ``--quick`` is the smoke-test shape used by
the integration test: the built-in model only, concurrency 1 and 4, a few
requests.

Exit codes: 0 the benchmark ran (targets may still read MISS: the benchmark
reports, the gates decide), 1 a server failed or, with ``--fail-on-miss``, a
target was missed, 2 a usage or definition error.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.bench.machine import ISA_ENV, machine_info
from pipeline.bench.report import build_document, render_markdown, render_plot, write_json
from pipeline.bench.runner import conversion_of, run_bench, server_argv
from pipeline.bench.targets import SERVERS, ServerKind, TargetOutcome, evaluate_targets
from pipeline.cli_args import add_out_dir, duration_arg
from pipeline.definition import Bench, DefinitionError, load_definition
from pipeline.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pipeline.processes import ServiceError


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _str_list(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return values


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark our server against the naive baseline and CTranslate2",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default="cpu", help="definition profile (default: cpu)")
    parser.add_argument("--definition", default=None, help="pipeline.toml to read")
    add_out_dir(parser, Path("out/bench"), "the report, JSON and plot")
    parser.add_argument("--quick", action="store_true", help="builtin model, c=1,4, few requests")
    parser.add_argument("--models", type=_str_list, help="comma-separated model refs")
    parser.add_argument("--concurrency", type=_int_list, help="comma-separated levels")
    parser.add_argument(
        "--servers",
        type=_str_list,
        default=(*SERVERS, "peer"),
        help="comma-separated: ours,baseline,peer (default all; peer = CTranslate2 in process)",
    )
    parser.add_argument(
        "--isa",
        choices=sorted(ISA_ENV),
        help="cap every library of the run to this ISA (e.g. avx2 on an AVX-512 machine)",
    )
    parser.add_argument("--requests-per-client", type=int, dest="requests_per_client")
    parser.add_argument("--min-requests", type=int, dest="min_requests")
    parser.add_argument("--warmup-requests", type=int, dest="warmup_requests")
    parser.add_argument("--max-new-tokens", type=int, dest="max_new_tokens")
    parser.add_argument(
        "--cell-budget", type=duration_arg, dest="cell_budget_s", metavar="DURATION",
        help="time budget per (server, model, concurrency) cell, e.g. 150s",
    )  # fmt: skip
    parser.add_argument(
        "--torch-threads",
        type=int,
        dest="torch_threads",
        help="OMP/MKL threads for both servers (default: torch's own choice)",
    )
    parser.add_argument(
        "--quantize",
        choices=("int8",),
        help="also run each model's int8 candidate (inference/quantize.py) through our server "
        "and the baseline, as a model of its own (the peer has its own int8 column)",
    )
    parser.add_argument(
        "--engine",
        choices=("torch", "ctranslate2"),
        default="torch",
        help="our server's engine; ctranslate2 serves each model's conversion "
        "(pipeline/convert.py), made here once and cached",
    )
    parser.add_argument("--fail-on-miss", action="store_true", help="exit 1 when a target misses")
    parser.set_defaults(handler=handle)


def _resolve(args: argparse.Namespace) -> tuple[Bench, tuple[ServerKind, ...], bool]:
    """The bench table with this run's overrides; DefinitionError/ValueError name the flag."""
    definition = load_definition(args.profile, None, args.definition)
    if definition.bench is None:
        raise DefinitionError(f"profile {definition.profile!r} has no [bench] table")
    update: dict[str, Any] = {}
    if args.quick:
        update.update(
            models=("builtin",),
            concurrency=(1, 4),
            requests_per_client=2,
            min_requests=8,
            warmup_requests=2,
            peer_repeats=1,
            peer_processes=1,
            paired_rounds=2,
            paired_requests=1,
        )
    for key in ("models", "concurrency"):
        if getattr(args, key) is not None:
            update[key] = getattr(args, key)
    if args.quantize is not None and args.engine == "ctranslate2":
        raise ValueError(
            "--engine ctranslate2 serves each model's fp32 conversion, and --quantize int8 "
            "adds torch's int8 candidate: run them separately"
        )
    if args.quantize is not None:
        models = update.get("models", definition.bench.models)
        update["models"] = (*models, *(_int8_candidate(m) for m in models))
    for key in ("requests_per_client", "min_requests", "warmup_requests", "max_new_tokens"):
        value = getattr(args, key)
        if value is not None:
            if value < (0 if key == "warmup_requests" else 1):
                raise ValueError(f"--{key.replace('_', '-')} must be positive, got {value}")
            update[key] = value
    if args.torch_threads is not None and args.torch_threads < 1:
        raise ValueError(f"--torch-threads must be >= 1, got {args.torch_threads}")
    if args.cell_budget_s is not None:
        if args.cell_budget_s <= 0:
            raise ValueError(f"--cell-budget must be > 0, got {args.cell_budget_s}")
        update["cell_budget_s"] = args.cell_budget_s
    unknown = [s for s in args.servers if s not in (*SERVERS, "peer")]
    if unknown:
        raise ValueError(f"--servers: unknown server(s) {unknown}; expected ours, baseline, peer")
    servers: tuple[ServerKind, ...] = tuple(s for s in SERVERS if s in args.servers)
    return definition.bench.model_copy(update=update), servers, "peer" in args.servers


def _int8_candidate(model: str) -> str:
    """The int8 candidate directory of ``model`` (made once, under the model cache)."""
    from inference.builtin_model import cache_root
    from inference.loader import model_directory
    from inference.quantize import quantized_model_dir

    _, directory = model_directory(model)
    if directory is None:
        raise ValueError(f"--quantize: model {model!r} is not a local directory")
    return str(quantized_model_dir(directory, "int8", cache_root() / "candidates"))


def _converted(models: tuple[str, ...]) -> bool:
    """Make each model's conversion before anything is measured; False (said) if one fails."""
    try:
        for model in models:
            print(f"mlcicd bench: converting {model} with CTranslate2 ...", file=sys.stderr)
            conversion_of(model)
    except (ValueError, RuntimeError) as exc:
        print(f"mlcicd bench: {exc}", file=sys.stderr)
        return False
    return True


class _Terminated(Exception):
    """SIGTERM arrived; raised so every ``finally`` runs and no server is left behind."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated(f"signal {signum}")


def handle(args: argparse.Namespace) -> int:
    try:
        bench, servers, peer = _resolve(args)
    except (DefinitionError, ValueError) as exc:
        print(f"mlcicd bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.isa is not None:  # before anything imports torch; every child inherits it
        os.environ.update(ISA_ENV[args.isa])
    if args.engine == "ctranslate2" and not _converted(bench.models):
        return EXIT_USAGE
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started_wall = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.monotonic()

    def progress(message: str) -> None:
        elapsed = time.monotonic() - started
        print(f"[bench {elapsed:6.0f}s] {message}", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args, bench, servers, peer, out, started, started_wall, progress)
    except (_Terminated, KeyboardInterrupt):
        print("mlcicd bench: interrupted; servers stopped, nothing written", file=sys.stderr)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(
    args: argparse.Namespace,
    bench: Bench,
    servers: tuple[ServerKind, ...],
    peer: bool,
    out: Path,
    started: float,
    started_wall: str,
    progress: Callable[[str], None],
) -> int:
    machine = machine_info()
    progress(
        f"{machine['nproc']} CPUs ({machine['cpu_model']}, {machine['isa']}"
        f"{', capped to ' + machine['isa_forced'] if machine['isa_forced'] else ''}), "
        f"torch {machine['torch']}, oneDNN {machine['onednn']}, "
        f"CTranslate2 {machine['ctranslate2'] or 'not installed'}, models {list(bench.models)}, "
        f"concurrency {list(bench.concurrency)}, servers {servers}, peer {peer}"
    )
    try:
        cells, floors, peers, paired = run_bench(
            bench,
            bench.models,
            bench.concurrency,
            out / "logs",
            progress,
            servers,
            torch_threads=args.torch_threads,
            peer=peer,
            engine=args.engine,
        )
    except ServiceError as exc:
        print(f"mlcicd bench: a server failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    machine["load_average_end"] = list(os.getloadavg())
    weights = {model: int(floor["weights_bytes"]) for model, floor in floors.items()}
    outcomes = evaluate_targets(bench.targets, cells, weights, peers, paired)
    command = "mlcicd bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else [])
    document = build_document(
        command=command.strip(),
        machine=machine,
        config={
            **bench.model_dump(mode="json"),
            "torch_threads": args.torch_threads,
            "isa": args.isa,
            "engine": args.engine,
        },
        weights=weights,
        floors=floors,
        servers={
            k: shlex.join(["python", *server_argv(k, "MODEL", "PORT", args.engine)[1:]])
            for k in servers
        },
        cells=cells,
        peers=peers,
        paired=paired,
        targets=outcomes,
        started_at=started_wall,
        duration_s=time.monotonic() - started,
    )
    write_json(document, out / "bench.json")
    (out / "bench.md").write_text(render_markdown(document))
    render_plot(document, out / "bench.png")
    progress(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return _verdicts(outcomes, args.fail_on_miss)


def _verdicts(outcomes: list[TargetOutcome], fail_on_miss: bool) -> int:
    """Print one line per target; the exit code (a miss fails only with --fail-on-miss)."""
    for outcome in outcomes:
        shown = "n/a" if outcome.measured is None else f"{outcome.measured:.2f}"
        print(f"{outcome.status:12} {outcome.id}: {shown} ({outcome.detail})")
    if fail_on_miss and any(o.status == "MISS" for o in outcomes):
        return EXIT_FAILED
    return EXIT_OK
