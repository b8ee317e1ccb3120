"""The local canary's release policy, without servers: what is undone and what is reported.

A failed rollout or analysis hands traffic back to stable; a promote that fails after a
healthy canary is retried, then reported, and the canary keeps serving.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipeline.definition import load_definition
from pipeline.local import canary as local_canary
from pipeline.local.canary import CanaryRollout
from pipeline.local.context import RunOptions, RunState, StageFailed
from pipeline.local.report import RunReport, StepRecord
from pipeline.registry.client import ChampionChange, RegistryUnreachable


class FakeRegistry:
    """Promotes, or raises ``failures`` times first; records every call."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[str] = []

    def promote(self, version: str, actor: str, reason: str) -> ChampionChange:
        self.calls.append(f"promote {version}")
        if self.failures:
            self.failures -= 1
            raise RegistryUnreachable("MLflow is unreachable")
        return ChampionChange("6", version, changed=True)

    def reject(self, version: str, actor: str, reason: str) -> None:
        self.calls.append(f"reject {version}")


class FakeRunner:
    """The RunContext the canary stage sees; commands 'fail' when ``failing`` is in them."""

    def __init__(self, tmp_path: Path, registry: FakeRegistry, **options: Any) -> None:
        self.options = RunOptions(state_dir=tmp_path, **options)
        self._registry = registry
        self.state = RunState(model_version="7", model_revision="c" * 64)
        self.report = RunReport("run-1", "builtin", "builtin", "sha")
        self.run_id = "run-1"

    def registry(self) -> FakeRegistry:
        return self._registry

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


def _rollout(runner: FakeRunner) -> CanaryRollout:
    stage = load_definition("builtin").stage("deploy-production")
    return CanaryRollout(runner, stage)  # type: ignore[arg-type]


def test_a_registry_hiccup_is_retried_and_the_canary_promoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_canary.time, "sleep", lambda s: None)
    registry = FakeRegistry(failures=1)
    runner = FakeRunner(tmp_path, registry)
    _rollout(runner).promote()
    assert registry.calls == ["promote 7", "promote 7"]
    assert runner.report.outcome == "promoted v7 to champion"


def test_a_failed_promote_is_reported_and_nothing_is_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_canary.time, "sleep", lambda s: None)
    attempts = load_definition("builtin", "prod").deploy.promote_attempts
    registry = FakeRegistry(failures=attempts)
    runner = FakeRunner(tmp_path, registry)
    with pytest.raises(StageFailed, match="not promoted: v7 is healthy and serves all traffic"):
        _rollout(runner).promote()
    assert runner.report.outcome.endswith("(rerun: mlcicd registry promote --version 7)")
    assert "no rollback" in runner.report.outcome
    # Every attempt was a promote: nothing rejected, nothing rolled back.
    assert registry.calls == ["promote 7"] * attempts
    assert [s.status for s in runner.report.steps] == ["failed"]
