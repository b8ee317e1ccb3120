"""Compare two renders (``mlcicd infra render``) resource by resource, key by key.

Why not a plain file diff: a reviewer asks "which resources change, and how", and a
unified diff of YAML answers with hunks whose context is often a neighbouring key of
another object. Here each render file is read back into resources (a Kubernetes
object, a Helm release, a GitHub setting, a workflow job, ...) labelled ``Kind/name``,
each resource is flattened to dotted key paths (list items that carry a unique
``name`` are addressed by it: ``spec.metrics[success-rate].successCondition``), and
the report lists per resource the keys added, removed and changed, old -> new.

Secrets: renders are masked already (:mod:`infra.render`); values under a Secret's
``data``/``stringData`` are masked here again, so a diff of two hand-made directories
cannot print one either.

A render directory may hold one stack (``index.yaml`` at its root) or several
(``staging/index.yaml``, ``prod/index.yaml``); labels then carry the stack. Files that
are not YAML are compared as text.

Left out: moves and renames (a renamed resource is one removed and one added).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from infra.render import MASK

Status = Literal["added", "removed", "changed"]
_SECRET_FIELDS = ("data", "stringData")


@dataclass(frozen=True)
class Resource:
    label: str
    file: str
    data: Any


@dataclass
class ResourceChange:
    """One resource's difference; for added/removed resources every key is listed."""

    label: str
    file: str
    status: Status
    added: dict[str, Any] = field(default_factory=dict)
    removed: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def _masked(data: Any) -> Any:
    if isinstance(data, dict) and data.get("kind") == "Secret":
        return {
            k: ({f: MASK for f in v} if k in _SECRET_FIELDS and isinstance(v, dict) else v)
            for k, v in data.items()
        }
    return data


def _entries(label: str, items: Any, file: str, name_key: str = "name") -> Iterator[Resource]:
    for item in items or []:
        kind = item.get("type", label) if isinstance(item, dict) else label
        name = item.get(name_key, "?") if isinstance(item, dict) else "?"
        yield Resource(f"{kind}/{name}", file, item)


def _workflow(text: str, file: str) -> Iterator[Resource]:
    data = yaml.safe_load(text) or {}
    stem = Path(file).stem
    jobs = data.pop("jobs", {}) if isinstance(data, dict) else {}
    yield Resource(f"Workflow/{stem}", file, data)
    for job_id, job in (jobs or {}).items():
        yield Resource(f"WorkflowJob/{stem}/{job_id}", file, job)


def _file_resources(root: Path, relative: str) -> Iterator[Resource]:
    """The resources one render file holds (layout in :mod:`infra.render`)."""
    path = root / relative
    text = path.read_text(errors="replace")
    parts = Path(relative).parts
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        yield Resource(f"File/{relative}", relative, text)
        return
    if parts[0] == "kubernetes" and isinstance(data, dict):
        kind = str(data.get("kind", "object"))
        name = path.stem.removeprefix(f"{kind}-")
        yield Resource(f"{kind}/{name}", relative, _masked(data))
    elif parts[0] == "helm":
        yield Resource(f"HelmRelease/{path.stem}", relative, data)
    elif relative == "index.yaml":
        for item in data or []:
            yield Resource(f"Graph/{item['type']}::{item['name']}", relative, item)
    elif relative == "github/settings.yaml":
        yield from _entries("GitHub", data, relative)
    elif relative == "docker/images.yaml":
        yield from _entries("Image", data, relative)
    elif relative == "providers.yaml":
        yield from _entries("Provider", data, relative)
    elif relative == "outputs.yaml":
        yield Resource("StackOutputs/outputs", relative, data)
    elif parts[:2] == ("github", "workflows"):
        yield from _workflow(text, relative)
    else:
        yield Resource(f"File/{relative}", relative, data)


def load_resources(root: Path) -> dict[str, Resource]:
    """Every resource under ``root``, by label (stack-prefixed when ``root`` holds several)."""
    stacks = sorted(p.parent for p in root.rglob("index.yaml"))
    found: dict[str, Resource] = {}
    claimed: set[Path] = set()
    for stack_root in stacks or [root]:
        prefix = stack_root.relative_to(root).as_posix()
        prefix = "" if prefix == "." else prefix
        for path in sorted(p for p in stack_root.rglob("*") if p.is_file()):
            claimed.add(path)
            for res in _file_resources(stack_root, path.relative_to(stack_root).as_posix()):
                label = f"{prefix}: {res.label}" if prefix else res.label
                file = f"{prefix}/{res.file}" if prefix else res.file
                found[label] = Resource(label, file, res.data)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p not in claimed):
        relative = path.relative_to(root).as_posix()
        found[f"File/{relative}"] = Resource(f"File/{relative}", relative, path.read_text())
    return found


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [x]}}`` -> ``{"a.b[0]": x}``; list items with unique names use them."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key in sorted(value, key=str):
            out.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value:
        names = [item.get("name") if isinstance(item, dict) else None for item in value]
        keyed = all(isinstance(n, str) for n in names) and len(set(names)) == len(names)
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{names[index] if keyed else index}]"))
        return out
    return {prefix or ".": value}


def compare(a: Path, b: Path) -> list[ResourceChange]:
    """Resource changes from render ``a`` to render ``b``, in label order."""
    old, new = load_resources(a), load_resources(b)
    changes: list[ResourceChange] = []
    for label in sorted(old.keys() | new.keys()):
        if label not in new:
            changes.append(
                ResourceChange(label, old[label].file, "removed", removed=flatten(old[label].data))
            )
        elif label not in old:
            changes.append(
                ResourceChange(label, new[label].file, "added", added=flatten(new[label].data))
            )
        else:
            before, after = flatten(old[label].data), flatten(new[label].data)
            change = ResourceChange(
                label,
                new[label].file,
                "changed",
                added={k: after[k] for k in sorted(after.keys() - before.keys())},
                removed={k: before[k] for k in sorted(before.keys() - after.keys())},
                changed={
                    k: (before[k], after[k])
                    for k in sorted(before.keys() & after.keys())
                    if before[k] != after[k]
                },
            )
            if change.added or change.removed or change.changed:
                changes.append(change)
    return changes


def _show(value: Any) -> str:
    return value if isinstance(value, str) and "\n" not in value else json.dumps(value)


def _key_lines(change: ResourceChange) -> list[str]:
    """Diff-marked lines (``+``/``-`` in column 0, so a ```diff block colours them)."""
    lines = [f"+   {k}: {_show(v)}" for k, v in change.added.items()]
    lines += [f"-   {k}: {_show(v)}" for k, v in change.removed.items()]
    for key, (old, new) in change.changed.items():
        if isinstance(old, str) and isinstance(new, str) and ("\n" in old or "\n" in new):
            body = list(difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=1))
            lines.append(f"~   {key}:")
            lines += [f"{line[:1]}       {line[1:]}" for line in body[2:] if line[:1] in "+- "]
        else:
            lines += [f"-   {key}: {_show(old)}", f"+   {key}: {_show(new)}"]
    return lines


_MARK = {"added": "+", "removed": "-", "changed": "~"}


def report_lines(changes: list[ResourceChange]) -> list[str]:
    """The text report: one block per resource, one line per key (see the module doc)."""
    lines: list[str] = []
    for change in changes:
        if change.status == "changed":
            counts = (
                f"{len(change.changed)} changed, {len(change.added)} added, "
                f"{len(change.removed)} removed keys"
            )
        else:
            counts = change.status
        lines.append(f"{_MARK[change.status]} {change.label}  ({counts}; {change.file})")
        lines += _key_lines(change)
    if changes:
        totals = {s: sum(c.status == s for c in changes) for s in ("changed", "added", "removed")}
        lines.append(
            f"{len(changes)} resources differ: "
            + ", ".join(f"{n} {status}" for status, n in totals.items())
        )
    return lines


def diff_renders(a: Path, b: Path) -> tuple[list[str], bool]:
    """(report lines, whether anything differs)."""
    changes = compare(a, b)
    return report_lines(changes), bool(changes)


# GitHub refuses comments over 65,536 characters; the review comment also carries two
# live previews (infra/workflow_review.py, PREVIEW_LIMIT each).
COMMENT_LIMIT = 30_000


def markdown_report(lines: list[str], title: str) -> str:
    """The report as a GitHub comment/summary section: a heading and a diff block."""
    if not lines:
        return f"### {title}\n\nNo differences.\n"
    body, kept = "", 0
    for line in lines:
        if len(body) + len(line) > COMMENT_LIMIT:
            break
        body += line.replace("```", "'''") + "\n"
        kept += 1
    cut = "" if kept == len(lines) else f"\n({len(lines) - kept} more lines in the job log)\n"
    return f"### {title}\n\n{lines[-1]}\n\n```diff\n{body}```\n{cut}"
