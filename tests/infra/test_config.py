"""Stack config: typed, validated once, every error naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.config import (
    PROJECT,
    REPO_ROOT,
    SECRET_KEYS,
    ConfigError,
    DictSource,
    load_config,
    project_defaults,
)


def _source(overrides: dict[str, object] | None = None, stack: str = "staging") -> DictSource:
    stack_file = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    values: dict[str, object] = dict(project_defaults())
    values.update({k.split(":", 1)[1]: v for k, v in stack_file.items()})
    values.update(overrides or {})
    return DictSource(values, {key: f"s-{key}" for key in SECRET_KEYS})


def _error(overrides: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_source(overrides))
    return str(info.value)


def test_both_stack_files_load() -> None:
    for stack in ("staging", "prod"):
        cfg = load_config(_source(stack=stack))
        assert cfg.environment == stack
        assert {r.name for r in cfg.runners} == {"gpu", "cpu"}


def test_wrong_type_names_the_key() -> None:
    message = _error({"gpuRunner.maxRunners": "x"})
    assert f'{PROJECT}:gpuRunner.maxRunners: expected integer, got "x"' in message


@pytest.mark.parametrize(
    ("value", "why"), [("4Gi", "expected a CPU quantity"), ("500m", "must be at least one core")]
)
def test_bad_cpu_quantity_names_the_key(value: str, why: str) -> None:
    assert f"{PROJECT}:inference.cpu: {why}" in _error({"inference.cpu": value})


def test_missing_key_names_the_key() -> None:
    source = _source()
    values = {k: v for k, v in source._values.items() if k != "github.owner"}
    with pytest.raises(ConfigError, match=f"{PROJECT}:github.owner: missing"):
        load_config(DictSource(values, source._secrets))


def test_unknown_runner_class_names_the_key() -> None:
    message = _error({"runnerClasses": ["gpu", "cpu", "tpu"]})
    assert f'{PROJECT}:runnerClasses: unknown runner class "tpu"' in message


def test_a_stage_runner_without_scale_set_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r'runnerClasses: the pipeline\'s stages run on "gpu"'):
        load_config(_source({"runnerClasses": ["cpu"]}), stage_runners=("cpu", "gpu"))


def test_every_problem_is_reported_at_once() -> None:
    message = _error({"environment": "qa", "cpuRunner.tolerations": ["bad"], "images.build": "yes"})
    assert f'{PROJECT}:environment: expected one of staging, prod, got "qa"' in message
    assert f"{PROJECT}:cpuRunner.tolerations: expected key=value:Effect" in message
    assert f"{PROJECT}:images.build: expected boolean" in message


def test_min_above_max_is_an_error() -> None:
    message = _error({"gpuRunner.minRunners": 3, "gpuRunner.maxRunners": 2})
    assert f"{PROJECT}:gpuRunner.minRunners: must be <= gpuRunner.maxRunners" in message


def test_missing_secret_names_the_key() -> None:
    source = _source(stack="prod")
    secrets = {k: v for k, v in source._secrets.items() if k != "dbPassword"}
    with pytest.raises(ConfigError, match="dbPassword: missing secret"):
        load_config(DictSource(source._values, secrets))


def test_a_stack_on_the_shared_registry_needs_no_mlflow_secrets_of_its_own() -> None:
    source = _source()  # staging: mlflow.trackingUri names prod's MLflow
    secrets = {
        k: v for k, v in source._secrets.items() if k not in ("dbPassword", "mlflowHtpasswd")
    }
    config = load_config(DictSource(source._values, secrets))
    assert config.mlflow.external and config.secrets.db_password is None
    assert "mlflow.trackingUri: must be an http(s)://" in _error({"mlflow.trackingUri": "mlflow"})


def test_every_key_read_is_declared_in_pulumi_yaml() -> None:
    read: list[str] = []

    class Spy(DictSource):
        def get(self, key: str) -> str | None:
            read.append(key)
            return super().get(key)

    source = _source()
    load_config(Spy(source._values, source._secrets))
    declared = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())["config"]
    assert sorted(set(read) - set(declared)) == []
    assert sorted(set(declared) - set(read)) == []


def test_stack_files_hold_no_plaintext_secrets() -> None:
    for stack in ("staging", "prod"):
        config = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
        for key in SECRET_KEYS:
            value = config.get(f"{PROJECT}:{key}")
            assert value is None or (isinstance(value, dict) and "secure" in value), key


@pytest.mark.slow
def test_render_cli_rejects_bad_stack_file(tmp_path: Path) -> None:
    bad = tmp_path / "Pulumi.bad.yaml"
    good = yaml.safe_load((REPO_ROOT / "Pulumi.staging.yaml").read_text())
    good["config"]["mlcicd:gpuRunner.maxRunners"] = "lots"
    bad.write_text(yaml.safe_dump(good))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlcicd.cli",
            "infra",
            "render",
            "--stack",
            "staging",
            "--stack-file",
            str(bad),
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert 'mlcicd:gpuRunner.maxRunners: expected integer, got "lots"' in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_pipeline_profile_names_the_key() -> None:
    from infra.program import stage_runner_classes

    with pytest.raises(ConfigError, match=f"{PROJECT}:pipelineProfile: .*profiles.tpu"):
        load_config(_source({"pipelineProfile": "tpu"}), stage_runner_classes)


def test_a_node_selector_on_a_label_nothing_sets_is_an_error() -> None:
    """nvidia.com/gpu.present: GFD never sets it (only the GPU Operator or an admin)."""
    message = _error({"inference.nodeSelector": ["nvidia.com/gpu.present=true"]})
    assert f"{PROJECT}:inference.nodeSelector: no node gets label nvidia.com/gpu.present" in message
    declared = {
        "inference.nodeSelector": ["nvidia.com/gpu.present=true"],
        "cluster.nodeLabels": ["nvidia.com/gpu.present"],
    }
    cfg = load_config(_source(declared))
    assert cfg.inference.node_selector == (("nvidia.com/gpu.present", "true"),)


def test_upstream_mlflow_image_without_driver_is_an_error() -> None:
    message = _error({"mlflow.image": "ghcr.io/mlflow/mlflow:v3.17.2"})
    assert (
        f"{PROJECT}:mlflow.image: ghcr.io/mlflow/mlflow:v3.17.2 has no Postgres driver" in message
    )
    # An image of your own (built with psycopg2 and boto3) is your call.
    load_config(_source({"mlflow.image": "registry.example/mlflow:3.17.2-pg"}))


def test_external_secrets_needs_vault_and_reads_no_cluster_secret() -> None:
    message = _error({"secrets.provider": "external-secrets"})
    assert f"{PROJECT}:externalSecrets.vaultServer: secrets.provider = external-secrets" in message
    cfg = load_config(
        _source(
            {
                "secrets.provider": "external-secrets",
                "externalSecrets.vaultServer": "https://vault.example:8200",
            }
        )
    )
    secrets = cfg.secrets
    assert cfg.secrets_settings.external
    assert secrets.db_password is None and secrets.mlflow_htpasswd is None
    assert secrets.mlflow_password is None and secrets.grafana_admin_password is None
    assert secrets.hf_token is not None  # still a GitHub Actions secret
