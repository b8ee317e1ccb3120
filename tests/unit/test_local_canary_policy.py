"""The local canary's release policy, without servers: what is undone and what is reported.

A failed rollout or analysis hands traffic back to stable; a promote that fails after a
healthy canary is retried by the CLI, then reported, and the canary keeps serving.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipeline.definition import load_definition
from pipeline.local.canary import UNREACHABLE_REGISTRY, CanaryRollout
from pipeline.local.context import RunOptions, RunState, StageFailed
from pipeline.local.report import RunReport, StepRecord


class FakeRunner:
    """The RunContext the canary stage sees; commands 'fail' when ``failing`` is in them."""

    def __init__(self, tmp_path: Path, failing: str | None = None, **options: Any) -> None:
        self.options = RunOptions(state_dir=tmp_path, **options)
        self.state = RunState(model_version="7", model_revision="c" * 64)
        self.report = RunReport("run-1", "builtin", "builtin", "sha")
        self.run_id = "run-1"
        self.commands: list[list[str]] = []
        self.failing = failing

    @contextmanager
    def step(self, stage: str, name: str) -> Iterator[StepRecord]:
        record = StepRecord(stage, name, "passed", 0.0)
        try:
            yield record
        except StageFailed:
            record.status = "failed"
            raise
        finally:
            self.report.steps.append(record)

    def mlcicd(self, *args: str) -> list[str]:
        return ["mlcicd", *args]

    def run_logged(self, record: StepRecord, argv: Sequence[str] | str, **_: Any) -> int:
        self.commands.append(list(argv))
        if self.failing and self.failing in argv:
            raise StageFailed("exit 1")
        return 0


def _rollout(runner: FakeRunner) -> CanaryRollout:
    stage = load_definition("builtin").stage("deploy-production")
    return CanaryRollout(runner, stage)  # type: ignore[arg-type]


def test_a_healthy_canary_is_promoted_with_the_definitions_retries(tmp_path: Path) -> None:
    runner = FakeRunner(tmp_path)
    _rollout(runner).promote()
    (command,) = runner.commands
    attempts = load_definition("builtin", "prod").deploy.promote_attempts
    assert command[:4] == ["mlcicd", "registry", "promote", "--version"]
    assert command[command.index("--attempts") + 1] == str(attempts)
    assert runner.report.outcome == "promoted v7 to champion"


def test_a_failed_promote_is_reported_and_nothing_is_undone(tmp_path: Path) -> None:
    runner = FakeRunner(tmp_path, failing=UNREACHABLE_REGISTRY, promote_fault=True)
    with pytest.raises(StageFailed, match="not promoted: v7 is healthy and serves all traffic"):
        _rollout(runner).promote()
    assert runner.report.outcome.endswith("(rerun: mlcicd registry promote --version 7)")
    assert "no rollback" in runner.report.outcome
    # Only the promote ran: no rollback, no registry rollback.
    assert [c[1:3] for c in runner.commands] == [["registry", "promote"]]
    assert [s.status for s in runner.report.steps] == ["failed"]
