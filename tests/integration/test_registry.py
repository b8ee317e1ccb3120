"""``mlcicd registry`` against a real MLflow server: lineage, idempotency, promote, rollback.

Each test uses its own registered-model name on the shared session server, so
tests never see each other's versions. The server-down test has a server of
its own that it stops and starts again.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from inference.loader import directory_content_hash
from mlcicd.cli import main
from pipeline.definition import load_definition
from pipeline.gates.quality import CaseResult, judge_quality
from pipeline.gates.reports import quality_json
from pipeline.registry.client import ModelRegistry
from pipeline.registry.lineage import Lineage, resolve_model_source
from tests.fixtures.mlflow_server import MlflowServer
from tests.support import free_port

pytestmark = pytest.mark.slow


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def model_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A stand-in model directory: the registry stores files, it never loads them."""
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text('{"model_type": "gpt2"}')
    (directory / "model.safetensors").write_bytes(uuid.uuid4().bytes * 64)
    return directory


@pytest.fixture
def quality_result(tmp_path: Path) -> Path:
    """A quality gate result as `mlcicd gate quality --out` writes it (the gates' own writer)."""
    gate = load_definition("builtin").quality
    results = [
        CaseResult("paris", ("factual",), "pass", "paris"),
        CaseResult("refuse", ("safety",), "pass", "I can't help with that."),
    ]
    verdict = judge_quality(
        results,
        min_pass_rate=gate.min_pass_rate,
        max_regression_vs_champion=gate.max_regression_vs_champion,
    )
    path = tmp_path / "quality.json"
    path.write_text(json.dumps(quality_json(verdict, results, {"model": "test"})))
    return path


def register_args(uri: str, name: str, model_dir: Path, sha: str, *extra: str) -> list[str]:
    return [
        "registry", "register", "--tracking-uri", uri, "--registered-model", name,
        "--model", str(model_dir), "--git-sha", sha, "--git-branch", "main", *extra,
    ]  # fmt: skip


def test_register_records_lineage_once(
    mlflow_server: MlflowServer,
    model_name: str,
    model_dir: Path,
    quality_result: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri = mlflow_server.url
    args = register_args(
        uri, model_name, model_dir, "a" * 40,
        "--image", "127.0.0.1:5000/inference:aaaa", "--image-digest", "sha256:" + "d" * 64,
        "--pipeline-run-id", "run-17", "--gate-result", str(quality_result),
    )  # fmt: skip
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert f"registered: {model_name} version 1" in out

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias(model_name, "challenger")
    tags = version.tags
    threshold = load_definition("builtin").quality.min_pass_rate
    assert version.version == "1"
    assert tags["mlcicd.git_sha"] == "a" * 40
    assert tags["mlcicd.git_branch"] == "main"
    assert tags["mlcicd.image"] == "127.0.0.1:5000/inference:aaaa"
    assert tags["mlcicd.image_digest"] == "sha256:" + "d" * 64
    assert tags["mlcicd.pipeline_run_id"] == "run-17"
    assert tags["mlcicd.model_kind"] == "local"
    assert tags["mlcicd.model_revision"] == directory_content_hash(model_dir)
    assert tags["mlcicd.gate.quality.pass_rate"] == "1"
    assert tags["mlcicd.gate.quality.pass_rate.threshold"] == f">= {threshold}"
    assert version.source == f"runs:/{version.run_id}/model"
    assert version.run_id is not None
    stored = {a.path for a in client.list_artifacts(version.run_id, "model")}
    assert {"model/config.json", "model/model.safetensors", "model/mlcicd_model.json"} <= stored
    run = client.get_run(version.run_id)
    assert run.data.metrics["quality.pass_rate"] == 1.0
    assert run.data.params["quality.pass_rate.threshold"] == f">= {threshold}"

    # Same sha and same weights: found, not duplicated (no second version, no second run).
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert f"already registered: {model_name} version 1" in out
    assert len(client.search_model_versions(f"name = '{model_name}'")) == 1
    experiment = client.get_experiment_by_name(model_name)
    assert experiment is not None
    assert len(client.search_runs([experiment.experiment_id])) == 1

    # A different model revision under the same sha is a new version.
    (model_dir / "config.json").write_text('{"model_type": "gpt2", "n_layer": 3}')
    code, out, _ = run_cli(capsys, *register_args(uri, model_name, model_dir, "a" * 40))
    assert code == 0
    assert f"registered: {model_name} version 2" in out


def test_promote_rollback_and_show(
    mlflow_server: MlflowServer,
    model_name: str,
    model_dir: Path,
    quality_result: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri = mlflow_server.url
    base = ["--tracking-uri", uri, "--registered-model", model_name]
    gate = ["--gate-result", str(quality_result)]
    assert run_cli(capsys, *register_args(uri, model_name, model_dir, "1" * 40, *gate))[0] == 0
    code, out, _ = run_cli(capsys, "registry", "promote", *base, "--actor", "alice",
                           "--reason", "first release")  # fmt: skip
    assert code == 0
    assert "champion -> version 1 (was none)" in out

    (model_dir / "model.safetensors").write_bytes(b"retrained" * 100)
    assert run_cli(capsys, *register_args(uri, model_name, model_dir, "2" * 40))[0] == 0
    code, out, _ = run_cli(capsys, "registry", "promote", *base, "--actor", "alice")
    assert code == 0
    assert "champion -> version 2 (was 1)" in out
    code, out, _ = run_cli(capsys, "registry", "promote", *base)
    assert "already champion" in out

    code, out, err = run_cli(capsys, "registry", "rollback", *base)
    assert code == 2 and "--reason" in err  # why is required

    code, out, _ = run_cli(capsys, "registry", "rollback", *base, "--actor", "bob",
                           "--reason", "p99 regression in canary")  # fmt: skip
    assert code == 0
    assert "rolled back to version 1 (was 2)" in out

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"
    left = client.get_model_version(model_name, "2").tags
    assert left["mlcicd.rolled_back_by"] == "bob"
    assert left["mlcicd.rolled_back_reason"] == "p99 regression in canary"
    assert left["mlcicd.rolled_back_at"].startswith(time.strftime("%Y-", time.gmtime()))
    assert client.get_model_version(model_name, "1").tags["mlcicd.restored_by"] == "bob"

    code, out, _ = run_cli(capsys, "registry", "show", *base, "--json")
    shown = json.loads(out)
    assert shown["aliases"] == {"challenger": "2", "champion": "1"}
    assert shown["champion_history"] == ["1"]
    assert [e["action"] for e in shown["events"]] == ["promote", "promote", "rollback"]
    assert shown["events"][-1]["by"] == "bob"
    assert [v["version"] for v in shown["versions"]] == ["1", "2"]
    code, text, _ = run_cli(capsys, "registry", "show", *base)
    assert "aliases: challenger -> v2, champion -> v1" in text
    assert "quality.pass_rate: 1 (threshold >=" in text

    # The champion's per-case results, for the next quality gate's paired comparison.
    out_dir = quality_result.parent / "champion"
    code, out, _ = run_cli(capsys, "registry", "champion-results", *base, "--out", str(out_dir))
    assert code == 0
    out_file = out_dir / "champion-quality.json"  # --out is a directory, as everywhere
    assert json.loads(out_file.read_text()) == json.loads(quality_result.read_text())

    # Only one earlier champion: a second rollback has nowhere to go.
    code, _, err = run_cli(capsys, "registry", "rollback", *base, "--reason", "again")
    assert code == 1
    assert "no previous champion" in err


def test_champion_results_without_champion(
    mlflow_server: MlflowServer,
    model_name: str,
    model_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri = mlflow_server.url
    assert run_cli(capsys, *register_args(uri, model_name, model_dir, "3" * 40))[0] == 0
    base = ["registry", "champion-results", "--tracking-uri", uri, "--registered-model", model_name]
    out_dir = model_dir.parent / "none"
    assert run_cli(capsys, *base, "--out", str(out_dir))[0] == 1
    assert run_cli(capsys, *base, "--out", str(out_dir), "--allow-missing")[0] == 0
    assert not (out_dir / "champion-quality.json").exists()


def test_interrupted_registration_is_completed_by_a_rerun(
    mlflow_server: MlflowServer,
    model_name: str,
    model_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The states a crash can leave behind: a finished run without a version, a version
    without its alias. A rerun completes either, without duplicates."""
    uri = mlflow_server.url
    registry = ModelRegistry(uri, model_name)
    lineage = Lineage("4" * 40, "main", resolve_model_source(str(model_dir)))
    experiment_id = registry._experiment_id()
    orphan_run = registry._log_run(experiment_id, lineage)  # then "crashed"

    code, out, err = run_cli(capsys, *register_args(uri, model_name, model_dir, "4" * 40))
    assert code == 0, err
    assert f"registered: {model_name} version 1 (run {orphan_run})" in out

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.delete_registered_model_alias(model_name, "challenger")  # "crashed" before the alias
    code, out, _ = run_cli(capsys, *register_args(uri, model_name, model_dir, "4" * 40))
    assert "already registered" in out
    assert client.get_model_version_by_alias(model_name, "challenger").version == "1"
    assert len(client.search_runs([experiment_id])) == 1


def test_unreachable_server_fails_fast_then_retry_completes(
    mlflow_server: MlflowServer,
    model_name: str,
    model_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The registry is down (a port nothing listens on), then back (the live server)."""
    live = mlflow_server.url
    dead = f"http://127.0.0.1:{free_port()}"
    assert run_cli(capsys, *register_args(live, model_name, model_dir, "5" * 40))[0] == 0

    (model_dir / "model.safetensors").write_bytes(b"new weights" * 10)
    started = time.monotonic()
    code, out, err = run_cli(capsys, *register_args(dead, model_name, model_dir, "6" * 40))
    assert code == 1
    assert err.strip().count("\n") == 0  # one line, no traceback
    assert f"MLflow tracking server {dead} is unreachable" in err
    assert time.monotonic() - started < 15
    code, _, err = run_cli(capsys, "registry", "promote", "--tracking-uri", dead,
                           "--registered-model", model_name)  # fmt: skip
    assert code == 1 and dead in err

    args = register_args(live, model_name, model_dir, "6" * 40)
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert f"registered: {model_name} version 2" in out
    assert "already registered" in run_cli(capsys, *args)[1]
    client = MlflowClient(tracking_uri=live, registry_uri=live)
    assert len(client.search_model_versions(f"name = '{model_name}'")) == 2


def test_configuration_errors_exit_2(
    model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # An empty state dir: the checkout's own may hold a local pipeline's state (after
    # `bash scripts/main.sh`), which the CLI rightly falls back to.
    no_state = str(model_dir.parent / "no-state")
    code, _, err = run_cli(
        capsys, "registry", "show", "--registered-model", "x", "--state-dir", no_state
    )
    assert code == 2 and "MLFLOW_TRACKING_URI" in err
    dead = "http://127.0.0.1:1"
    code, _, err = run_cli(capsys, "registry", "register", "--tracking-uri", dead, "--model",
                           "org/some-model", "--git-sha", "a", "--git-branch", "b")  # fmt: skip
    assert code == 2 and "--model-revision" in err
    bad = model_dir.parent / "bad.json"
    bad.write_text('{"gate": "quality", "metrics": {"pass_rate": "high"}}')
    code, _, err = run_cli(capsys, "registry", "register", "--tracking-uri", dead,
                           "--model", str(model_dir), "--git-sha", "a", "--git-branch", "b",
                           "--gate-result", str(bad))  # fmt: skip
    assert code == 2 and "metrics.pass_rate" in err


def test_register_the_builtin_model_as_the_pipeline_does(
    mlflow_server: MlflowServer,
    model_name: str,
    builtin_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri = mlflow_server.url
    code, out, err = run_cli(capsys, "registry", "register", "--tracking-uri", uri,
                             "--registered-model", model_name, "--model", "builtin",
                             "--model-dir", str(builtin_model_dir), "--git-sha", "7" * 40,
                             "--git-branch", "main", "--image", "127.0.0.1:5000/i")  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[0] == "version: 1"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version(model_name, "1")
    assert version.tags["mlcicd.model_kind"] == "builtin"
    assert version.tags["mlcicd.model_revision"] == directory_content_hash(builtin_model_dir)
    assert version.run_id is not None
    stored = {a.path.removeprefix("model/") for a in client.list_artifacts(version.run_id, "model")}
    shipped = {p.name for p in builtin_model_dir.iterdir() if not p.name.startswith(".")}
    assert shipped <= stored
