"""The import contract: layers point down only, and nothing imports in a cycle.

The contract lives in pyproject.toml (``[tool.mlcicd.architecture]``). Every
import counts: top-level, lazy (inside a function) and ``TYPE_CHECKING`` ones,
since each is an arrow a reader has to follow. Built with ``ast`` only.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from pipeline.source import REPO_ROOT

LAYERS: list[str] = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["mlcicd"][
    "architecture"
]["layers"]

Graph = dict[str, set[str]]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(tree: ast.AST, known: set[str]) -> set[str]:
    """The project modules a module imports (``from a import b`` counts ``a.b`` if it exists)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def build_graph(root: Path, packages: Iterable[str]) -> Graph:
    files = {module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    known = set(files)
    return {
        mod: imports_of(ast.parse(path.read_text()), known) - {mod} for mod, path in files.items()
    }


def upward_imports(graph: Mapping[str, set[str]], layers: list[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(layers)}
    bad = []
    for mod, targets in sorted(graph.items()):
        for target in sorted(targets):
            if rank[target.split(".")[0]] < rank[mod.split(".")[0]]:
                bad.append(f"{mod} -> {target}")
    return bad


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle as a path of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def subsystem_graph(graph: Mapping[str, set[str]]) -> Graph:
    """``pipeline.<subsystem>`` to ``pipeline.<subsystem>``: the folders must not form a cycle."""

    def subsystem(mod: str) -> str | None:
        parts = mod.split(".")
        return ".".join(parts[:2]) if parts[0] == "pipeline" and len(parts) > 2 else None

    out: Graph = {}
    for mod, targets in graph.items():
        src = subsystem(mod)
        if src is None:
            continue
        for target in targets:
            dst = subsystem(target)
            if dst is not None and dst != src:
                out.setdefault(src, set()).add(dst)
    return out


GRAPH = build_graph(REPO_ROOT, LAYERS)


def test_the_graph_sees_every_package() -> None:
    assert {mod.split(".")[0] for mod in GRAPH} == set(LAYERS)
    assert "pipeline.definition" in GRAPH["pipeline.gates.cli"]


def test_no_layer_imports_a_layer_above_it() -> None:
    assert upward_imports(GRAPH, LAYERS) == []


def test_no_module_imports_in_a_cycle() -> None:
    assert find_cycle(GRAPH) is None


def test_no_pipeline_subsystems_import_each_other_in_a_cycle() -> None:
    assert find_cycle(subsystem_graph(GRAPH)) is None


# The checks themselves, on planted defects, so a checker that sees nothing cannot pass.


def _write(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    ("files", "upward", "cycle"),
    [
        ({"inference/a.py": "from pipeline import b\n", "pipeline/b.py": ""}, True, False),
        (
            {
                "pipeline/x/m.py": "def f():\n    from pipeline.y import n\n",
                "pipeline/y/n.py": "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pipeline.x.m import f\n",
            },
            False,
            True,
        ),
    ],
)
def test_planted_defects_are_found(
    tmp_path: Path, files: dict[str, str], upward: bool, cycle: bool
) -> None:
    _write(tmp_path, {"inference/__init__.py": "", "pipeline/__init__.py": "", **files})
    graph = build_graph(tmp_path, ["pipeline", "inference"])
    assert bool(upward_imports(graph, ["pipeline", "inference"])) is upward
    assert (find_cycle(graph) is not None) is cycle
