"""`mlcicd run`: the whole pipeline on this machine (runner.py says what each stage does)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.cli_args import add_definition, add_environment, add_profile, profile_for, stage_ids
from pipeline.definition import DefinitionError, load_definition
from pipeline.exit_codes import EXIT_USAGE
from pipeline.source import REPO_ROOT


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the whole pipeline locally against real services",
        description=(
            "Run every stage of the pipeline definition on this machine: code quality, "
            "model tests and gates, image build and push to a local OCI registry, model "
            "registration in MLflow, staging deploy and smoke tests, and a canary rollout "
            "judged by Prometheus, ending in promotion or rollback. One run at a time per "
            "state directory; SIGINT, SIGTERM and SIGHUP stop it cleanly (exit 130)."
        ),
    )
    add_profile(parser)
    add_definition(parser)
    add_environment(
        parser,
        "the last environment to deploy to: staging stops before any prod stage "
        "(default: every stage)",
    )
    parser.add_argument(
        "--model",
        default="builtin",
        help="candidate model: builtin, builtin-weak (a release the gates must block) or a "
        "local directory (default: builtin)",
    )
    parser.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="make the candidate the --model's weights served int8 (inference/quantize.py): "
        "judged by the same gates against the fp32 champion, promoted or blocked on evidence",
    )
    parser.add_argument(
        "--canary-fault",
        choices=("none", "errors", "latency"),
        default="none",
        help="inject a fault into the canary to see analysis fail and traffic roll back",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=REPO_ROOT / ".mlcicd",
        metavar="DIR",
        help="where MLflow, the registry, the step cache and run logs keep their data "
        "(default: .mlcicd)",
    )
    ids = stage_ids()
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="STAGE",
        help=f"skip a stage by id; repeat to skip several (stages: {', '.join(ids)})",
    )
    parser.add_argument(
        "--skip-commands",
        action="store_true",
        help="skip lint and test commands (not deploy smoke tests); run every gate and action",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="re-run every step, even one whose inputs are unchanged since it last passed",
    )
    parser.add_argument(
        "--keep-runs",
        type=int,
        default=20,
        metavar="N",
        help="keep the last N run directories under STATE_DIR/runs (default: 20; 0 keeps all)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from pipeline.local.context import RunOptions
    from pipeline.local.runner import LocalRunner

    profile = profile_for(args.profile, args.model)
    try:
        definition = load_definition(profile, None, args.definition)
    except DefinitionError as exc:
        print(f"mlcicd run: {exc}")
        return EXIT_USAGE
    known = [stage.id for stage in definition.stages]
    unknown = sorted(set(args.skip) - set(known))
    if unknown:
        print(
            f"mlcicd run: --skip {', '.join(unknown)}: no such stage (stages: {', '.join(known)})"
        )
        return EXIT_USAGE
    candidate = args.model
    if args.quantize is not None:
        try:
            candidate = str(_quantized_candidate(args.model, args.quantize, args.state_dir))
        except (ValueError, OSError) as exc:
            print(f"mlcicd run: --quantize {args.quantize}: {exc}")
            return EXIT_USAGE
        print(f"candidate: {candidate} ({args.model} served {args.quantize})")
    options = RunOptions(
        profile=definition.profile,
        candidate=candidate,
        canary_fault=args.canary_fault,
        state_dir=args.state_dir.resolve(),
        skip_stages=tuple(args.skip),
        skip_commands=args.skip_commands,
        definition=args.definition.resolve() if args.definition else None,
        environment=args.environment,
        use_cache=not args.no_cache,
        keep_runs=args.keep_runs,
    )
    return LocalRunner(options).run()


def _quantized_candidate(model: str, quantization: str, state_dir: Path) -> Path:
    """The ``--model``'s directory copied and marked ``quantization`` (inference/quantize.py).

    A directory of its own, so the gates, the image, the registry and the canary
    treat it as the model change it is; its content hash differs from the source's.
    """
    from inference.loader import model_directory
    from inference.quantize import quantized_model_dir

    _, directory = model_directory(model)
    if directory is None:
        raise ValueError(f"--model {model}: the local pipeline ships local models only")
    return quantized_model_dir(directory, "int8", state_dir.resolve() / "candidates")
