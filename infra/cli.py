"""``mlcicd infra render``, ``diff`` and ``workflow``: the stack, offline, as files.

Why: reviewing infrastructure changes should not need cloud credentials. ``render`` runs
the same Pulumi program under the mock runtime with the stack's config (secrets replaced
by placeholders and masked) and writes manifests, Helm values, GitHub settings and the
workflow; ``diff`` compares two renders per resource and key (:mod:`infra.render_diff`;
exit 0 identical, 1 different, 2 usage).

Unlike ``pulumi preview`` this never talks to the cluster, GitHub or the state backend,
so it shows what the program declares, not what would change in the live stack.

``workflow`` writes ``.github/workflows/ml-cicd.yml`` exactly as the prod stack commits
it (same renderer, same stack settings), so the file in the repository is generated,
never hand-kept; ``--check`` exits 1 with a diff when the file is stale.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

import yaml

EXIT_OK, EXIT_DIFFERENT, EXIT_USAGE = 0, 1, 2


def _with_image_tag(stack: str, stack_file: Path | None, tag: str, into: Path) -> Path:
    """A copy of the stack file with ``images.tag`` set, so image references do not
    carry the checkout's commit (two commits would otherwise differ in every image)."""
    from infra.config import PROJECT, REPO_ROOT
    from infra.mock_runtime import RenderError

    source = stack_file or REPO_ROOT / f"Pulumi.{stack}.yaml"
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RenderError(f"{source}: {exc}") from exc
    data.setdefault("config", {})[f"{PROJECT}:images.tag"] = tag
    out = into / source.name
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _render(args: argparse.Namespace) -> int:
    from infra.mock_runtime import RenderError, record
    from infra.render import write_render

    try:
        with tempfile.TemporaryDirectory() as scratch:
            stack_file = args.stack_file
            if args.image_tag:
                stack_file = _with_image_tag(args.stack, stack_file, args.image_tag, Path(scratch))
            recording = record(args.stack, stack_file=stack_file)
    except RenderError as exc:
        print(f"mlcicd infra render: {exc}", file=sys.stderr)
        return EXIT_USAGE
    written = write_render(recording, args.out)
    print(
        f"rendered stack {args.stack}: {len(recording['resources'])} resources, "
        f"{len(written)} files in {args.out}"
    )
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    from infra.render_diff import diff_renders, markdown_report

    for path in (args.a, args.b):
        if not path.is_dir():
            print(f"mlcicd infra diff: {path}: not a directory", file=sys.stderr)
            return EXIT_USAGE
    lines, different = diff_renders(args.a, args.b)
    if args.format == "markdown":
        print(markdown_report(lines, args.title), end="")
    else:
        print("\n".join(lines) if different else "no differences")
    return EXIT_DIFFERENT if different else EXIT_OK


def _workflow(args: argparse.Namespace) -> int:
    """Write or ``--check`` every workflow file, under its own name in ``--out``."""
    from infra.config import REPO_ROOT, ConfigError
    from infra.program import WORKFLOW_STACK, stack_workflow_files
    from infra.workflow import WORKFLOW_PATH

    try:
        files = stack_workflow_files(WORKFLOW_STACK)
    except ConfigError as exc:
        print(f"mlcicd infra workflow: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # The checkout the renderer reads pipeline.toml and Pulumi.prod.yaml from.
    out_dir: Path = args.out or (REPO_ROOT / WORKFLOW_PATH).parent
    targets = {out_dir / Path(path).name: fresh for path, fresh in files.items()}
    if not args.check:
        for out, fresh in targets.items():
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(fresh)
            print(f"wrote {out} (stack {WORKFLOW_STACK})")
        return EXIT_OK
    results = [_check_one(out, fresh, WORKFLOW_STACK) for out, fresh in targets.items()]
    return EXIT_OK if all(results) else EXIT_DIFFERENT


def _check_one(out: Path, fresh: str, stack: str) -> bool:
    """True when ``out`` equals the fresh render; else print why (missing, or a diff)."""
    if not out.is_file():
        print(f"{out}: missing; run `mlcicd infra workflow` to generate it")
        return False
    committed = out.read_text()
    if committed == fresh:
        print(f"{out} is up to date")
        return True
    diff = difflib.unified_diff(
        committed.splitlines(keepends=True),
        fresh.splitlines(keepends=True),
        fromfile=str(out),
        tofile=f"fresh render (stack {stack})",
    )
    sys.stdout.writelines(diff)
    print(f"\n{out} is stale; run `mlcicd infra workflow` to regenerate it")
    return False


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("infra", help="render or diff the Pulumi stacks offline")
    actions = parser.add_subparsers(dest="infra_command", required=True, metavar="ACTION")
    render = actions.add_parser("render", help="run the Pulumi program under mocks; write files")
    render.add_argument("--stack", required=True, help="stack name (Pulumi.<stack>.yaml)")
    render.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="output directory (replaced)"
    )
    render.add_argument(
        "--stack-file", type=Path, help="use this stack file instead of Pulumi.<stack>.yaml"
    )
    render.add_argument(
        "--image-tag",
        help="tag images with this instead of the commit (review renders of two commits)",
    )
    render.set_defaults(handler=_render)
    diff = actions.add_parser(
        "diff",
        help="compare two render directories, per resource and key",
        description="Exit status: 0 identical, 1 different, 2 usage error.",
    )
    diff.add_argument("a", type=Path, help="the old render (e.g. the pull request's base)")
    diff.add_argument("b", type=Path, help="the new render (e.g. the pull request's head)")
    diff.add_argument(
        "--format",
        choices=("text", "markdown"),
        default="text",
        help="markdown: a heading and a diff block, for a job summary or PR comment",
    )
    diff.add_argument("--title", default="Infrastructure diff", help="markdown heading")
    diff.set_defaults(handler=_diff)
    workflow = actions.add_parser(
        "workflow", help="write the GitHub workflows as the prod stack commits them"
    )
    workflow.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="directory for the workflow files, ml-cicd.yml and ml-cicd-comment.yml "
        "(default: .github/workflows in the checkout)",
    )
    workflow.add_argument(
        "--check", action="store_true", help="exit 1 and print a diff if a file is stale"
    )
    workflow.set_defaults(handler=_workflow)
