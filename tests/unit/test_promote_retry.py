"""A promote after a healthy rollout is retried and reported, not given up at once."""

from __future__ import annotations

import pytest

from mlcicd.cli import main
from pipeline.registry.client import ChampionChange, ModelRegistry, RegistryUnreachable


def _promote(*extra: str) -> list[str]:
    return ["registry", "promote", "--tracking-uri", "http://127.0.0.1:9", "--registered-model",
            "m", "--version", "3", "--retry-delay", "1ms", *extra]  # fmt: skip


def test_a_registry_hiccup_is_retried_and_each_failure_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers: list[Exception | ChampionChange] = [
        RegistryUnreachable("MLflow is unreachable"),
        ChampionChange("2", "3", changed=True),
    ]

    def promote(self: ModelRegistry, *args: object) -> ChampionChange:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(ModelRegistry, "promote", promote)
    assert main(_promote("--attempts", "3")) == 0
    captured = capsys.readouterr()
    assert "promote attempt 1/3: MLflow is unreachable" in captured.err
    assert "champion -> version 3 (was 2)" in captured.out


def test_a_registry_that_stays_down_fails_after_the_last_attempt(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def promote(self: ModelRegistry, *args: object) -> ChampionChange:
        raise RegistryUnreachable("MLflow is unreachable")

    monkeypatch.setattr(ModelRegistry, "promote", promote)
    assert main(_promote("--attempts", "2")) == 1
    err = capsys.readouterr().err
    assert "attempt 1/2" in err and "attempt 2/2" in err
