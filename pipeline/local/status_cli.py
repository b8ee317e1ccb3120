"""`mlcicd status`: what the local pipeline's state holds, after (or during) a run.

Why: once ``mlcicd run`` ends, its MLflow server is gone, and the champion,
who promoted it and which releases failed were only readable by starting a
server by hand. This reads the state directory directly: the lock (is a run in
progress, whose), the registry's sqlite store (champion, its image, the
champion history with who and why, rejected releases included) and the last
runs' ``run.json`` (outcome, time, summary).

Left out: a remote tracking server (``mlcicd registry show --tracking-uri``
does that), and anything that would change the state.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.cli_args import add_definition
from pipeline.definition import DefinitionError, load_definition
from pipeline.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pipeline.local.lock import holder
from pipeline.source import REPO_ROOT


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="the local pipeline's champion, recent runs and their outcomes",
        description="Read the local pipeline's state directory (no server needed): the run "
        "in progress if any, the champion and its image, who promoted or rejected what and "
        "why, and the outcomes of the last runs.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=REPO_ROOT / ".mlcicd",
        metavar="DIR",
        help="the state directory of `mlcicd run` (default: .mlcicd)",
    )
    parser.add_argument("--runs", type=int, default=5, metavar="N", help="runs to list (default 5)")
    add_definition(parser)
    parser.set_defaults(handler=_status)


def recent_runs(state_dir: Path, count: int) -> list[dict[str, Any]]:
    """The last ``count`` runs' reports, newest first (a run killed outright has none)."""
    runs = sorted((state_dir / "runs").glob("*/"), reverse=True)[:count]
    found = []
    for run in runs:
        try:
            found.append(json.loads((run / "run.json").read_text()) | {"dir": str(run)})
        except (OSError, ValueError):
            found.append({"run_id": run.name, "outcome": "no report (killed?)", "dir": str(run)})
    return found


def _champion_lines(state_dir: Path, model: str) -> list[str]:
    from pipeline.registry.client import ModelRegistry, RegistryError, local_tracking_uri

    uri = local_tracking_uri(state_dir)
    if uri is None:
        return ["registry: empty (no run has registered a model here yet)"]
    try:
        data = ModelRegistry(uri, model).show()
    except RegistryError as exc:
        return [f"registry: {exc}"]
    champion = data["aliases"].get("champion")
    lines = [f"champion: {f'v{champion}' if champion else 'none'} ({model})"]
    for row in data["versions"]:
        if row["version"] == champion:
            tags = row["tags"]
            lines.append(f"  git {tags.get('mlcicd.git_sha', '?')[:12]}  "
                         f"image {tags.get('mlcicd.image_digest', '?')}")  # fmt: skip
    lines.append("history (newest first):")
    for event in reversed(data["events"][-10:]):
        lines.append(
            f"  {event['at']} {event['action']} v{event['version']} by {event['by']}: "
            f"{event['reason']}"
        )
    return lines


def _status(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir.resolve()
    if not state_dir.is_dir():
        print(f"mlcicd status: no state in {state_dir}; run `mlcicd run` first", file=sys.stderr)
        return EXIT_FAILED
    try:
        model = load_definition(None, None, args.definition).pipeline.registered_model
    except DefinitionError as exc:
        print(f"mlcicd status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"state: {state_dir}")
    print(f"run in progress: {holder(state_dir) or 'none'}")
    for line in _champion_lines(state_dir, model):
        print(line)
    print("recent runs (newest first):")
    for run in recent_runs(state_dir, args.runs):
        seconds = run.get("seconds")
        took = f" in {seconds:.0f}s" if isinstance(seconds, int | float) and seconds else ""
        print(f"  {run.get('run_id')}: {run.get('outcome')}{took}  {run['dir']}/summary.md")
    return EXIT_OK
