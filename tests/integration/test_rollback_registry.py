"""``mlcicd rollback`` end to end: a fake Kubernetes API (no cluster here), a real MLflow."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.registry.client import ModelRegistry
from pipeline.registry.lineage import Lineage, resolve_model_source
from pipeline.rollout.rollback_cli import add_arguments, run_rollback
from tests.fixtures.mlflow_server import MlflowServer
from tests.unit.fake_kubernetes import FakeAppsV1Api, FakeCustomObjectsApi, replica_set, rollout

pytestmark = pytest.mark.slow


def two_champions(uri: str, name: str, tmp_path: Path) -> ModelRegistry:
    """v1 promoted, then v2 promoted: v1 is the previous champion."""
    registry = ModelRegistry(uri, name)
    for number in (1, 2):
        directory = tmp_path / f"model-{number}"
        directory.mkdir()
        (directory / "weights.bin").write_bytes(f"weights {number}".encode())
        lineage = Lineage(str(number) * 40, "main", resolve_model_source(str(directory)))
        version = registry.register(lineage).version
        registry.promote(version, "ci", f"canary {number} passed")
    return registry


def args(uri: str, name: str, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(
        ["--namespace", "prod", "--tracking-uri", uri, "--registered-model", name,
         "--actor", "oncall", "--reason", "p99 over budget after promotion", *argv]
    )  # fmt: skip


def test_undo_moves_the_champion_back_with_who_when_why(
    mlflow_server: MlflowServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"rollback-{uuid.uuid4().hex[:8]}"
    two_champions(mlflow_server.url, name, tmp_path)
    api = FakeCustomObjectsApi(
        rollout("reg/inference:v2", {"currentPodHash": "hash2", "stableRS": "hash2"})
    )
    apps = FakeAppsV1Api([replica_set(1, "reg/inference:v1"), replica_set(2, "reg/inference:v2")])

    assert run_rollback(args(mlflow_server.url, name), api, apps) == 0
    out = capsys.readouterr().out
    assert "undo: restored revision 1" in out
    assert "champion rolled back to version 1 (was 2) by oncall" in out
    assert [c.method for c in api.calls][-1] == "patch"

    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    tags = client.get_model_version(name, "2").tags
    assert tags["mlcicd.rolled_back_by"] == "oncall"
    assert tags["mlcicd.rolled_back_reason"] == "p99 over budget after promotion"
    assert tags["mlcicd.rolled_back_at"]


def test_abort_keeps_the_champion_and_registry_failure_says_what_was_done(
    mlflow_server: MlflowServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"rollback-{uuid.uuid4().hex[:8]}"
    two_champions(mlflow_server.url, name, tmp_path)
    canary = rollout("reg/inference:v3", {"currentPodHash": "hash3", "stableRS": "hash2"})
    assert run_rollback(args(mlflow_server.url, name), FakeCustomObjectsApi(canary),
                        FakeAppsV1Api([])) == 0  # fmt: skip
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    assert client.get_model_version_by_alias(name, "champion").version == "2"

    # Forcing the registry step against a dead server: the rollout part is reported done.
    dead = "http://127.0.0.1:9"
    code = run_rollback(
        args(dead, name, "--registry", "yes"), FakeCustomObjectsApi(canary), FakeAppsV1Api([])
    )
    assert code == 1
    err = capsys.readouterr().err
    assert f"MLflow tracking server {dead} is unreachable" in err
    assert "rerun with --no-kubernetes" in err
    assert run_rollback(args(mlflow_server.url, name, "--no-kubernetes", "--registry", "yes"),
                        None, None) == 0  # fmt: skip
    assert client.get_model_version_by_alias(name, "champion").version == "1"
