"""What a release report is made of, read back from the run's report files.

Why from files: the gates, the registry and the canary each write their result as
JSON where they run (a GPU job, the build job, the production job, or one local
run directory); the report is the one place that reads them together. It reads
whatever is there, so a run that stopped at a gate still gets a report that says
which gates ran and what they measured.

Files looked for under the reports directory (at any depth, as CI artifacts and
the local run directory lay them out differently):

- ``quality.json`` (``mlcicd gate quality``), ``latency.json`` (``mlcicd gate latency``);
- ``release.json`` (``mlcicd registry register --out``): image, digest, model version,
  model hash/revision, git revision;
- ``canary.json`` (CI: one analysis over the rollout), or one in each
  ``canary-step-<n>-w<weight>/`` (``mlcicd run``: one analysis per traffic step), from
  ``mlcicd canary analyze --out``.

Left out: the champion's own latency (the registry keeps quality results only).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.canary.analysis import VERDICT_FILE
from pipeline.gates.reports import LATENCY_FORMAT, QUALITY_FORMAT
from pipeline.registry.lineage import RELEASE_FORMAT

# The local runner's step directories (pipeline.canary.analysis.step_dir_name).
_STEP_DIR = re.compile(r"^canary-step-(\d+)-w(\d+)$")


class ReportInputError(ValueError):
    """A report file exists but cannot be read; the message names it."""


@dataclass(frozen=True)
class CanaryStep:
    """One canary analysis (one traffic step locally; the whole rollout in CI)."""

    number: int
    weight: int | None
    verdict: str
    conditions: dict[str, str]
    ticks: list[dict[str, Any]]
    source: Path


@dataclass
class ReleaseData:
    """Everything the report shows; each part is None/empty when it did not run."""

    quality: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    release: dict[str, Any] = field(default_factory=dict)
    canary: list[CanaryStep] = field(default_factory=list)
    sources: dict[str, Path] = field(default_factory=dict)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportInputError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ReportInputError(f"{path}: expected a JSON object")
    return data


def _one(root: Path, name: str, fmt: str) -> tuple[dict[str, Any], Path] | None:
    """The newest file called ``name`` under ``root`` with the expected format."""
    found = sorted(root.rglob(name), key=lambda p: p.stat().st_mtime)
    for path in reversed(found):
        data = _read(path)
        if data.get("format") == fmt:
            return data, path
    return None


def _canary_steps(root: Path) -> list[CanaryStep]:
    steps: list[CanaryStep] = []
    for path in sorted(root.rglob(VERDICT_FILE)):
        data = _read(path)
        if "verdict" not in data:
            continue
        match = _STEP_DIR.match(path.parent.name)
        number = int(match.group(1)) if match else len(steps) + 1
        weight = int(match.group(2)) if match else None
        steps.append(
            CanaryStep(
                number=number,
                weight=weight,
                verdict=str(data["verdict"]),
                conditions=dict(data.get("conditions") or {}),
                ticks=list(data.get("ticks") or []),
                source=path,
            )
        )
    return sorted(steps, key=lambda s: s.number)


def collect(root: Path, release: dict[str, Any] | None = None) -> ReleaseData:
    """Read every report under ``root``; ``release`` adds or overrides release facts."""
    data = ReleaseData()
    if (found := _one(root, "quality.json", QUALITY_FORMAT)) is not None:
        data.quality, data.sources["quality"] = found
    if (found := _one(root, "latency.json", LATENCY_FORMAT)) is not None:
        data.latency, data.sources["latency"] = found
    if (found := _one(root, "release.json", RELEASE_FORMAT)) is not None:
        data.release, data.sources["release"] = dict(found[0]), found[1]
    data.release.update({k: v for k, v in (release or {}).items() if v})
    data.canary = _canary_steps(root)
    return data
