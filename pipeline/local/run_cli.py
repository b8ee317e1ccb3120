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
        "--convert",
        choices=("ctranslate2",),
        default=None,
        help="make the candidate the --model's CTranslate2 conversion (pipeline/convert.py; "
        "with --quantize int8, CTranslate2's int8), served by the ctranslate2 engine and "
        "judged by the same gates against the unconverted champion",
    )
    parser.add_argument(
        "--canary-fault",
        choices=("none", "errors", "latency"),
        default="none",
        help="inject a fault into the canary to see analysis fail and traffic roll back",
    )
    parser.add_argument(
        "--promote-fault",
        action="store_true",
        help="make the registry unreachable at promote, after a healthy canary: the "
        "release is reported as not promoted and its healthy pods keep serving",
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
    try:
        candidate = _candidate(args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"mlcicd run: {exc}")
        return EXIT_USAGE
    options = RunOptions(
        profile=definition.profile,
        candidate=candidate,
        canary_fault=args.canary_fault,
        promote_fault=args.promote_fault,
        state_dir=args.state_dir.resolve(),
        skip_stages=tuple(args.skip),
        skip_commands=args.skip_commands,
        definition=args.definition.resolve() if args.definition else None,
        environment=args.environment,
        use_cache=not args.no_cache,
        keep_runs=args.keep_runs,
    )
    return LocalRunner(options).run()


def _candidate(args: argparse.Namespace) -> str:
    """The model the run releases: ``--model`` itself, or the candidate that
    ``--quantize`` / ``--convert`` make of it (errors name the flag)."""
    if args.convert is not None:
        quantization = "int8" if args.quantize == "int8" else "float32"
        print(f"converting {args.model} with CTranslate2 ({quantization}) ...", flush=True)
        candidate = _converted_candidate(args.model, quantization, args.state_dir)
        print(f"candidate: {candidate} ({args.model} converted, {quantization})")
        return str(candidate)
    if args.quantize is not None:
        try:
            candidate = _quantized_candidate(args.model, args.quantize, args.state_dir)
        except ValueError as exc:
            raise ValueError(f"--quantize {args.quantize}: {exc}") from exc
        print(f"candidate: {candidate} ({args.model} served {args.quantize})")
        return str(candidate)
    return str(args.model)


def _converted_candidate(model: str, quantization: str, state_dir: Path) -> Path:
    """The conversion step: ``--model``'s directory plus its CTranslate2 conversion."""
    from pipeline.convert import ctranslate2_candidate, source_directory

    source = source_directory(model, "--convert ctranslate2")
    try:
        return ctranslate2_candidate(source, quantization, state_dir.resolve() / "candidates")
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"--convert ctranslate2: {exc}") from exc


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
