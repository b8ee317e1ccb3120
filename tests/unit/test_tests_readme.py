"""tests/README.md maps every module to its tests, and names only test files that exist."""

from __future__ import annotations

import re

from pipeline.source import REPO_ROOT

README = REPO_ROOT / "tests" / "README.md"
PACKAGES = ("mlcicd", "infra", "pipeline", "inference")


def _modules() -> set[str]:
    found = set()
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            if path.name != "__init__.py":
                found.add(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts))
    return found


def test_every_module_is_mapped_to_its_tests() -> None:
    mapped = set(re.findall(r"^\| `([\w.]+)` \|", README.read_text(), re.MULTILINE))
    assert sorted(_modules() - mapped) == [], "add these modules to tests/README.md"
    assert sorted(mapped - _modules()) == [], "these modules no longer exist"


def test_every_test_file_named_exists() -> None:
    named = set(
        re.findall(r"\b((?:unit|inference|integration|infra)/[\w/]+\.py)", README.read_text())
    )
    assert named
    missing = sorted(name for name in named if not (REPO_ROOT / "tests" / name).exists())
    assert missing == []
