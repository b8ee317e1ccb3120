"""What the local runner's stages share: options, the state handed between stages, and
the runner's interface as the canary stage sees it.

Why a module of its own: the canary stage needs the runner's steps and services,
and the runner starts the canary stage; both import this, neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pipeline.definition import PipelineDefinition
from pipeline.local.cache import StepCache
from pipeline.local.image_bundle import PushedImage
from pipeline.local.report import Console, RunReport, StepRecord
from pipeline.local.services import Service
from pipeline.source import REPO_ROOT

if TYPE_CHECKING:
    from pipeline.registry.client import ModelRegistry


class StageFailed(Exception):
    """A step failed; the pipeline stops here."""


@dataclass
class RunOptions:
    profile: str = "builtin"
    candidate: str = "builtin"
    canary_fault: str = "none"  # none | errors | latency
    # Demo/test: the registry is unreachable when the healthy canary is promoted.
    promote_fault: bool = False
    state_dir: Path = REPO_ROOT / ".mlcicd"
    skip_stages: tuple[str, ...] = ()
    # Skip the shell commands of stages without an action (lint, unit and inference
    # tests) but run every gate, action and deploy smoke test: for when those commands
    # already ran, e.g. inside the test suite.
    skip_commands: bool = False
    definition: Path | None = None  # None: pipeline.toml
    # The last environment deployed to: "staging" stops before any prod stage.
    environment: str | None = None
    use_cache: bool = True  # --no-cache turns it off
    keep_runs: int = 20  # run directories kept under <state-dir>/runs


@dataclass
class RunState:
    """What earlier stages hand to later ones."""

    image: PushedImage | None = None
    model_version: str | None = None
    # The registered revision (content hash) every pod serving the release must report.
    model_revision: str | None = None
    # The registered version is the registry's champion already (a re-release).
    already_champion: bool = False


class RunContext(Protocol):
    """The runner as a stage sees it (implemented by :class:`pipeline.local.runner.LocalRunner`)."""

    options: RunOptions
    definition: PipelineDefinition
    git_sha: str
    branch: str
    cache: StepCache
    state: RunState
    services: dict[str, Service]
    console: Console
    report: RunReport
    run_id: str
    run_dir: Path
    logs: Path
    reports: Path

    def step(self, stage: str, name: str) -> AbstractContextManager[StepRecord]: ...

    def run_logged(
        self, record: StepRecord, argv: Sequence[str] | str, ok_codes: Sequence[int] = (0,),
        **env: str,
    ) -> int: ...  # fmt: skip

    def mlcicd(self, *args: str) -> list[str]: ...

    def env(self, **extra: str) -> dict[str, str]: ...

    def registry(self) -> ModelRegistry: ...

    def fingerprint(self) -> str: ...

    def cached(self, record: StepRecord, key: str, inputs: Sequence[str]) -> bool: ...

    def deploy_image(
        self,
        name: str,
        image: PushedImage,
        *extra_args: str,
        revision: str,
        threads: int | None = None,
    ) -> Service: ...

    def on_exit(self, callback: Callable[[], object]) -> None: ...
