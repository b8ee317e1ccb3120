"""``mlcicd registry register | promote | rollback | show | champion-results``.

The registered model's name comes from the pipeline definition
(``pipeline.registered_model``); ``--registered-model`` overrides it (tests,
forks). The tracking server is ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``,
else the local pipeline's state (``.mlcicd/state``, read directly from its
sqlite store, so ``mlcicd registry show`` works after ``mlcicd run`` ends);
``MLFLOW_TRACKING_TOKEN`` (and MLflow's other auth variables) are read by MLflow
itself, never by this module.

Exit codes: 0 done; 1 the operation failed, including an unreachable server
(retryable: rerunning the same command completes it); 2 bad arguments or
configuration (no tracking URI, unreadable gate file, unknown profile).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.cli_args import add_definition, add_out_dir, add_profile, duration_arg
from pipeline.definition import DefinitionError, load_definition
from pipeline.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pipeline.registry.client import (
    CHALLENGER,
    CHAMPION,
    ModelRegistry,
    RegistryError,
    default_actor,
    local_tracking_uri,
)
from pipeline.registry.lineage import Lineage, LineageError, build_lineage, release_facts
from pipeline.source import REPO_ROOT

RELEASE_FACTS = "release.json"


class _UsageError(ValueError):
    pass


def _registry(args: argparse.Namespace) -> ModelRegistry:
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = local_tracking_uri(args.state_dir)
        if uri is None:
            raise _UsageError(
                "no tracking server: pass --tracking-uri or set MLFLOW_TRACKING_URI "
                f"(and no local pipeline state in {args.state_dir}: run `mlcicd run` first)"
            )
        print(f"mlcicd registry: reading the local pipeline state ({uri})", file=sys.stderr)
    name = args.registered_model
    if not name:
        definition = load_definition(args.profile, None, args.definition)
        name = definition.pipeline.registered_model
    return ModelRegistry(uri, name, experiment=args.experiment)


def _lineage(args: argparse.Namespace) -> Lineage:
    return build_lineage(
        model=args.model,
        model_dir=args.model_dir,
        model_revision=args.model_revision,
        git_sha=args.git_sha,
        git_branch=args.git_branch,
        image=args.image,
        image_digest=args.image_digest,
        pipeline_run_id=args.pipeline_run_id,
        gate_results=[Path(p) for p in args.gate_result],
    )


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.action(args))
    except (_UsageError, LineageError, DefinitionError) as exc:
        print(f"mlcicd registry: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RegistryError as exc:
        print(f"mlcicd registry: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _register(args: argparse.Namespace) -> int:
    lineage = _lineage(args)
    registry = _registry(args)
    done = registry.register(lineage)
    verb = "registered" if done.created else "already registered"
    print(f"version: {done.version}")
    print(
        f"{verb}: {registry.name} version {done.version} (run {done.run_id}); "
        f"alias {CHALLENGER} -> {done.version}"
    )
    print(f"  git {lineage.git_sha} on {lineage.git_branch}")
    print(f"  model {lineage.model.kind} {lineage.model.ref} @ {lineage.model.revision}")
    if lineage.image:
        print(
            f"  image {lineage.image}"
            + (f"@{lineage.image_digest}" if lineage.image_digest else "")
        )
    for metric in lineage.metrics:
        judged = (
            f" (threshold {metric.op or ''} {metric.threshold})"
            if metric.threshold is not None
            else ""
        )
        print(f"  {metric.key} = {metric.value}{judged}")
    if args.out:
        facts = release_facts(lineage, registry.name, str(done.version))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / RELEASE_FACTS).write_text(json.dumps(facts, indent=2) + "\n")
    return EXIT_OK


def _promote(args: argparse.Namespace) -> int:
    """Retried: a promote runs after a healthy rollout, and a registry hiccup must not
    fail the release into an undo of healthy pods; each failure is reported."""
    registry = _registry(args)
    if args.attempts < 1:
        raise _UsageError("--attempts must be >= 1")
    for attempt in range(1, args.attempts + 1):
        try:
            change = registry.promote(args.version, args.actor or default_actor(), args.reason)
            break
        except RegistryError as exc:
            print(f"mlcicd registry: promote attempt {attempt}/{args.attempts}: {exc}",
                  file=sys.stderr)  # fmt: skip
            if attempt == args.attempts:
                raise
            time.sleep(args.retry_delay_s * attempt)
    if not change.changed:
        print(f"{registry.name}: version {change.current} is already {CHAMPION}; nothing to do")
    else:
        print(
            f"{registry.name}: {CHAMPION} -> version {change.current} "
            f"(was {change.previous or 'none'})"
        )
    return EXIT_OK


def _rollback(args: argparse.Namespace) -> int:
    registry = _registry(args)
    change = registry.rollback(args.actor or default_actor(), args.reason)
    print(
        f"{registry.name}: {CHAMPION} rolled back to version {change.current} "
        f"(was {change.previous or 'none'}); reason: {args.reason}"
    )
    return EXIT_OK


def _format_show(data: dict[str, Any]) -> str:
    aliases = ", ".join(f"{k} -> v{v}" for k, v in data["aliases"].items()) or "none"
    lines = [
        f"{data['name']} at {data['tracking_uri']}",
        f"aliases: {aliases}",
        f"champion history (oldest first): {', '.join(data['champion_history']) or 'empty'}",
    ]
    for event in data["events"][-5:]:
        lines.append(
            f"  {event['at']} {event['action']} v{event['version']} by {event['by']}: "
            f"{event['reason']}"
        )
    for row in data["versions"]:
        tags = row["tags"]
        marks = f" [{', '.join(row['aliases'])}]" if row["aliases"] else ""
        lines.append(f"v{row['version']}{marks}  {row['source']}")
        for key in (
            "git_sha",
            "git_branch",
            "model_ref",
            "model_revision",
            "image",
            "image_digest",
        ):
            if f"mlcicd.{key}" in tags:
                lines.append(f"    {key}: {tags[f'mlcicd.{key}']}")
        for key, value in tags.items():
            if key.startswith("mlcicd.gate.") and not key.endswith((".threshold", ".passed")):
                threshold = tags.get(f"{key}.threshold")
                suffix = f" (threshold {threshold})" if threshold else ""
                lines.append(f"    {key.removeprefix('mlcicd.gate.')}: {value}{suffix}")
    return "\n".join(lines)


def _show(args: argparse.Namespace) -> int:
    data = _registry(args).show()
    print(json.dumps(data, indent=2) if args.json else _format_show(data))
    return EXIT_OK


def champion_results_path(out_dir: Path, gate: str) -> Path:
    """Where ``champion-results --out DIR`` writes: the workflow's gate steps read it."""
    return out_dir / f"champion-{gate}.json"


def _champion_results(args: argparse.Namespace) -> int:
    registry = _registry(args)
    out = champion_results_path(args.out, args.gate)
    version = registry.download_gate_result(args.alias, args.gate, out)
    if version is None:
        print(f"{registry.name}: no {args.alias} yet; nothing to compare against")
        return EXIT_OK if args.allow_missing else EXIT_FAILED
    print(f"{registry.name} v{version} ({args.alias}): {args.gate} results written to {out}")
    return EXIT_OK


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        help="MLflow server (default: $MLFLOW_TRACKING_URI, else the local pipeline's "
        "state under --state-dir)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=REPO_ROOT / ".mlcicd",
        metavar="DIR",
        help="the local pipeline's state, read when no tracking URI is given (default: .mlcicd)",
    )
    parser.add_argument("--registered-model", help="default: pipeline.registered_model")
    parser.add_argument("--experiment", help="MLflow experiment (default: the model's name)")
    add_definition(parser)
    add_profile(parser)


def _who(parser: argparse.ArgumentParser, reason_required: bool) -> None:
    parser.add_argument("--actor", help="who (default: $GITHUB_ACTOR, else the OS user)")
    parser.add_argument("--reason", required=reason_required, default="", help="why")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "registry",
        help="the MLflow model registry",
        description="Register model versions with their lineage, promote and roll back the "
        "champion, and show what the registry holds.",
    )
    actions = parser.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    reg = actions.add_parser(
        "register",
        help="register a model version (idempotent)",
        description="Register a model version with its lineage (git, model, image, gate "
        "results) and make it the challenger; the same git sha and model give the same version.",
    )
    _common(reg)
    reg.add_argument(
        "--model",
        dest="model",
        required=True,
        help="builtin, builtin-weak, a model directory or a Hugging Face id",
    )
    reg.add_argument("--model-dir", help="the model's files, when --model names where it came from")
    reg.add_argument("--model-revision", help="Hugging Face commit sha (HF ids only)")
    reg.add_argument("--git-sha", help="default: $GITHUB_SHA or git rev-parse HEAD")
    reg.add_argument("--git-branch", help="default: $GITHUB_REF_NAME or the current branch")
    reg.add_argument(
        "--image",
        dest="image",
        help="image reference, e.g. ghcr.io/org/inference:sha",
    )
    reg.add_argument("--image-digest", help="sha256:... of the pushed image")
    reg.add_argument("--pipeline-run-id", default=os.environ.get("GITHUB_RUN_ID"))
    reg.add_argument(
        "--gate-result",
        dest="gate_result",
        action="append",
        default=[],
        metavar="FILE",
        help="a `mlcicd gate ... --out` result (stored whole) or "
        "{name: value | {value, threshold}} (repeatable)",
    )
    add_out_dir(reg, None, "the release facts, release.json, for `mlcicd report`")
    reg.set_defaults(action=_register, handler=_run)

    pro = actions.add_parser(
        "promote",
        help=f"point {CHAMPION} at a version",
        description=f"Point the {CHAMPION} alias at a version and record who, when and why.",
    )
    _common(pro)
    pro.add_argument("--version", help=f"default: the {CHALLENGER}")
    pro.add_argument("--attempts", type=int, default=1, help="tries before giving up")
    pro.add_argument(
        "--retry-delay", type=duration_arg, default=5.0, dest="retry_delay_s",
        metavar="DURATION", help="wait this long x the attempt number between tries (default: 5s)",
    )  # fmt: skip
    _who(pro, reason_required=False)
    pro.set_defaults(action=_promote, handler=_run)

    back = actions.add_parser(
        "rollback",
        help=f"move {CHAMPION} back to the previous one",
        description=f"Move the {CHAMPION} alias back to the previous champion, recorded.",
    )
    _common(back)
    _who(back, reason_required=True)
    back.set_defaults(action=_rollback, handler=_run)

    show = actions.add_parser(
        "show",
        help="aliases, versions and lineage",
        description="Print the aliases, the champion history (who promoted, rolled back or "
        "rejected what, and why) and every version with its lineage.",
    )
    _common(show)
    show.add_argument("--json", action="store_true")
    show.set_defaults(action=_show, handler=_run)

    champ = actions.add_parser(
        "champion-results",
        help="fetch the champion's gate results",
        description="Download the gate results the champion was registered with, for the "
        "quality gate's paired comparison.",
    )
    _common(champ)
    champ.add_argument("--gate", default="quality")
    champ.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory for the results, champion-<gate>.json (absent when there is no "
        "champion: the rendered workflow tests for the file)",
    )
    champ.add_argument("--alias", default=CHAMPION)
    champ.add_argument(
        "--allow-missing",
        action="store_true",
        help="exit 0 when there is no champion yet (first release)",
    )
    champ.set_defaults(action=_champion_results, handler=_run)
