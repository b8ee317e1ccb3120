"""The stack's configuration, read once into one typed, validated object.

Why here and only here: components receive :class:`StackConfig` pieces and never call
``pulumi.Config`` themselves, so a bad value fails before any resource is declared and
every error names the key (``mlcicd:gpuRunner.maxRunners: expected integer, got "x"``).
All problems are collected and reported together, not one per run.

Defaults live in ``Pulumi.yaml`` only (the Pulumi CLI merges them into the stack's
config; ``mlcicd infra render`` does the same); this module repeats none of them.
Secrets are read with ``get_secret`` so they stay ``Output`` secrets end to end.

Left out on purpose: per-class keys for runner classes other than gpu and cpu (a new
class needs a new block in ``Pulumi.yaml`` and here), and free-form JSON objects in
config (node selectors and tolerations are ``key=value`` strings, as in kubectl).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, cast

import pulumi
import yaml

from infra.config_model import (
    GitHubSettings,
    ImageSettings,
    InferenceSettings,
    MlflowSettings,
    ModelCacheSettings,
    MonitoringSettings,
    RegistrySettings,
    RunnerClass,
    Secrets,
    SecretsSettings,
    StackConfig,
    Toleration,
    scale_set_name,
)
from infra.config_reader import (
    INSTALLED_NODE_LABELS,
    PROJECT,
    ConfigError,
    ConfigSource,
    Reader,
)
from pipeline.source import REPO_ROOT

RUNNER_CLASSES = ("gpu", "cpu")

__all__ = [
    "INSTALLED_NODE_LABELS",
    "PROJECT",
    "REPO_ROOT",
    "ConfigError",
    "ConfigSource",
    "GitHubSettings",
    "ImageSettings",
    "InferenceSettings",
    "MlflowSettings",
    "ModelCacheSettings",
    "MonitoringSettings",
    "RegistrySettings",
    "RunnerClass",
    "Secrets",
    "SecretsSettings",
    "StackConfig",
    "Toleration",
    "scale_set_name",
]

# Every secret the program may read; `mlcicd infra render` plants a placeholder for each.
SECRET_KEYS: tuple[str, ...] = (
    "githubToken",
    "githubAppPrivateKey",
    "hfToken",
    "kubeconfig",
    "mlflowPassword",
    "mlflowHtpasswd",
    "registryPassword",
    "registryHtpasswd",
    "dbPassword",
    "grafanaAdminPassword",
    "awsAccessKeyId",
    "awsSecretAccessKey",
)

# Upstream's plain MLflow image is `pip install mlflow` only, no DB driver
# (mlflow/mlflow@0daeb821:docker/Dockerfile); the `-full` variant, from v3.9.0 on, installs
# mlflow[extras,db,...] and so psycopg2-binary and boto3 (mlflow/mlflow@092ba8b1:
# docker/Dockerfile.full, mlflow/mlflow@5033d12e:docker/README.md).
UPSTREAM_MLFLOW_IMAGE = "ghcr.io/mlflow/mlflow:"


class PulumiSource:
    """The real source: ``pulumi.Config("mlcicd")`` (values are strings; arrays are JSON)."""

    def __init__(self) -> None:
        self._config = pulumi.Config(PROJECT)

    def get(self, key: str) -> str | None:
        return self._config.get(key)

    def get_secret(self, key: str) -> pulumi.Output[str] | None:
        return self._config.get_secret(key)


class DictSource:
    """Raw values from a mapping (tests, and anything that builds config without Pulumi)."""

    def __init__(self, values: Mapping[str, object], secrets: Mapping[str, str] = {}) -> None:
        self._values = {k: _raw(v) for k, v in values.items()}
        self._secrets = dict(secrets)

    def get(self, key: str) -> str | None:
        return self._values.get(key)

    def get_secret(self, key: str) -> pulumi.Output[str] | None:
        value = self._secrets.get(key)
        if value is None:
            return None
        _ensure_event_loop()
        return pulumi.Output.secret(value)


def _ensure_event_loop() -> None:
    """``pulumi.Output`` needs a current asyncio loop. Outside the engine (tests, ``mlcicd
    infra workflow``) an earlier ``asyncio.run()`` may have left the thread without one."""
    try:
        asyncio.get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


def _raw(value: object) -> str:
    """A YAML value as the Pulumi CLI hands it to a program."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def project_defaults(root: Path = REPO_ROOT) -> dict[str, object]:
    """``default:`` of every key declared in Pulumi.yaml (what the CLI merges in)."""
    declared = yaml.safe_load((root / "Pulumi.yaml").read_text())["config"]
    return {key: spec["default"] for key, spec in declared.items() if "default" in spec}


def stack_file_source(stack: str, root: Path = REPO_ROOT) -> DictSource:
    """``Pulumi.yaml`` defaults overlaid with ``Pulumi.<stack>.yaml``, as the CLI merges them.

    For reading the stack's plain settings without Pulumi (``mlcicd infra workflow``).
    Secrets are not decrypted: every secret key gets a placeholder, so nothing that
    needs a secret's value may be rendered from this source.
    """
    path = root / f"Pulumi.{stack}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such stack file (stacks: Pulumi.<name>.yaml)") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    values = project_defaults(root)
    for key, value in (data.get("config") or {}).items():
        project, _, name = key.rpartition(":")
        if project in ("", PROJECT) and not (isinstance(value, dict) and "secure" in value):
            values[name] = value
    return DictSource(values, {key: f"placeholder-{key}" for key in SECRET_KEYS})


def _runner(
    read: Reader, name: Literal["gpu", "cpu"], environment: str, node_labels: tuple[str, ...]
) -> RunnerClass:
    prefix = f"{name}Runner"
    runner = RunnerClass(
        name=name,
        environment=environment,
        min_runners=read.integer(f"{prefix}.minRunners"),
        max_runners=read.integer(f"{prefix}.maxRunners", minimum=1),
        gpus=read.integer(f"{prefix}.gpus", minimum=1) if name == "gpu" else 0,
        cpu=read.text(f"{prefix}.cpu"),
        memory=read.text(f"{prefix}.memory"),
        job_timeout_minutes=read.integer(f"{prefix}.jobTimeoutMinutes", minimum=1),
        node_selector=read.node_selector(f"{prefix}.nodeSelector", node_labels),
        tolerations=read.tolerations(f"{prefix}.tolerations"),
    )
    if runner.min_runners > runner.max_runners:
        read.fail(
            f"{prefix}.minRunners",
            f"must be <= {prefix}.maxRunners ({runner.max_runners}), got {runner.min_runners}",
        )
    return runner


def _runners(
    read: Reader, stage_runners: tuple[str, ...], environment: str, node_labels: tuple[str, ...]
) -> tuple[RunnerClass, ...]:
    names = read.strings("runnerClasses")
    runners = []
    for name in names:
        if name in RUNNER_CLASSES:
            runner_class = cast(Literal["gpu", "cpu"], name)
            runners.append(_runner(read, runner_class, environment, node_labels))
        else:
            known = ", ".join(RUNNER_CLASSES)
            read.fail("runnerClasses", f"unknown runner class {json.dumps(name)} (known: {known})")
    for needed in sorted(set(stage_runners) - set(names)):
        read.fail(
            "runnerClasses",
            f"the pipeline's stages run on {json.dumps(needed)}, which is not listed",
        )
    return tuple(runners)


StageRunners = tuple[str, ...] | Callable[[str, str], tuple[str, ...]]


def _github(read: Reader) -> GitHubSettings:
    github = GitHubSettings(
        owner=read.text("github.owner"),
        repository=read.text("github.repository"),
        repository_mode=read.choice(  # type: ignore[arg-type]
            "github.repositoryMode", ("reference", "create", "adopt")
        ),
        reviewers=read.strings("github.reviewers"),
        auth=read.choice("github.auth", ("token", "app")),  # type: ignore[arg-type]
        app_id=read.text("github.appId"),
        app_installation_id=read.text("github.appInstallationId"),
    )
    if github.auth == "app" and not (github.app_id and github.app_installation_id):
        read.fail("github.appId", "github.auth = app needs github.appId and appInstallationId")
    if github.app_id and not github.app_id.isdigit():
        read.fail("github.appId", f"expected the App's numeric id, got {github.app_id!r}")
    return github


def _mlflow(read: Reader) -> MlflowSettings:
    mlflow = MlflowSettings(
        image=read.text("mlflow.image"),
        artifact_store=read.choice("mlflow.artifactStore", ("pvc", "s3")),  # type: ignore[arg-type]
        artifact_bucket=read.text("mlflow.artifactBucket"),
        storage_size=read.text("mlflow.storageSize"),
        username=read.text("mlflow.username"),
        db_storage_size=read.text("mlflow.dbStorageSize"),
        tracking_uri=read.text("mlflow.trackingUri"),
    )
    if mlflow.external and not mlflow.tracking_uri.startswith(("http://", "https://")):
        read.fail("mlflow.trackingUri", "must be an http(s):// URL of the shared MLflow")
    if mlflow.artifact_store == "s3" and not mlflow.artifact_bucket.startswith("s3://"):
        read.fail("mlflow.artifactBucket", "mlflow.artifactStore = s3 needs an s3:// URI")
    if mlflow.image.startswith(UPSTREAM_MLFLOW_IMAGE) and not mlflow.image.endswith("-full"):
        read.fail(
            "mlflow.image",
            f"{mlflow.image} has no Postgres driver (psycopg2) nor boto3: upstream's plain "
            "image is `pip install mlflow` only; use its -full variant (MLflow >= 3.9.0)",
        )
    return mlflow


def _secrets_settings(read: Reader) -> SecretsSettings:
    settings = SecretsSettings(
        provider=read.choice(  # type: ignore[arg-type]
            "secrets.provider", ("pulumi", "external-secrets")
        ),
        vault_server=read.text("externalSecrets.vaultServer"),
        vault_path=read.text("externalSecrets.vaultPath"),
        vault_role=read.text("externalSecrets.vaultRole"),
        key_prefix=read.text("externalSecrets.keyPrefix"),
    )
    if settings.external and not settings.vault_server:
        read.fail(
            "externalSecrets.vaultServer", "secrets.provider = external-secrets needs a Vault URL"
        )
    return settings


def _secrets(
    read: Reader, cfg: tuple[GitHubSettings, RegistrySettings, MlflowSettings, bool, bool]
) -> Secrets:
    """The secret config the stack needs; in-cluster-only ones not with external-secrets."""
    github, registry, mlflow, grafana, external = cfg
    cluster_only = not external
    # A stack on another stack's MLflow (mlflow.trackingUri) runs none: no DB, no htpasswd.
    runs_mlflow = cluster_only and not mlflow.external
    s3 = mlflow.artifact_store == "s3"
    return Secrets(
        github_token=read.optional_secret("githubToken", github.auth == "token"),
        github_app_private_key=read.optional_secret("githubAppPrivateKey", github.auth == "app"),
        hf_token=read.secret("hfToken"),
        kubeconfig=read.secret("kubeconfig"),
        mlflow_password=read.optional_secret("mlflowPassword", cluster_only),
        mlflow_htpasswd=read.optional_secret("mlflowHtpasswd", runs_mlflow),
        registry_password=read.secret("registryPassword"),
        registry_htpasswd=read.optional_secret(
            "registryHtpasswd", cluster_only and registry.kind == "in-cluster"
        ),
        db_password=read.optional_secret("dbPassword", runs_mlflow),
        grafana_admin_password=read.optional_secret(
            "grafanaAdminPassword", cluster_only and grafana
        ),
        aws_access_key_id=read.optional_secret("awsAccessKeyId", runs_mlflow and s3),
        aws_secret_access_key=read.optional_secret("awsSecretAccessKey", runs_mlflow and s3),
    )


def load_config(
    source: ConfigSource | None = None,
    stage_runners: StageRunners = RUNNER_CLASSES,
    repo_root: Path = REPO_ROOT,
) -> StackConfig:
    """Read and validate everything; raise :class:`ConfigError` listing every bad key.

    ``stage_runners`` are the runner classes this stack's stages run on (or a function of
    profile and environment giving them), so a stage on a class without a scale set is a
    config error, not a workflow that waits forever.
    """
    read = Reader(source if source is not None else PulumiSource())
    environment = read.choice("environment", ("staging", "prod"))
    profile = read.text("pipelineProfile")
    if callable(stage_runners):
        stage_runners = stage_runners(profile, environment)
    node_labels = read.strings("cluster.nodeLabels")
    github = _github(read)
    registry = RegistrySettings(
        kind=read.choice("registry.kind", ("ghcr", "in-cluster")),  # type: ignore[arg-type]
        host=read.text("registry.host"),
        username=read.text("registry.username"),
        storage_size=read.text("registry.storageSize"),
    )
    mlflow = _mlflow(read)
    grafana = read.boolean("monitoring.grafanaDashboard")
    secrets_settings = _secrets_settings(read)
    config = StackConfig(
        environment=environment,  # type: ignore[arg-type]
        namespace=read.text("namespace"),
        profile=profile,
        github=github,
        runners=_runners(read, stage_runners, environment, node_labels),
        registry=registry,
        images=ImageSettings(
            build=read.boolean("images.build"),
            push=read.boolean("images.push"),
            tag=read.text("images.tag"),
        ),
        inference=InferenceSettings(
            replicas=read.integer("inference.replicas", minimum=1),
            gpus=read.integer("inference.gpus"),
            cpu=read.cpu_quantity("inference.cpu"),
            memory=read.text("inference.memory"),
            model=read.text("inference.model"),
            model_revision=read.text("inference.modelRevision"),
            model_cache=ModelCacheSettings(
                size=read.text("inference.modelCacheSize"),
                storage_class=read.text("inference.modelCacheStorageClass"),
                offline=read.boolean("inference.hfHubOffline"),
            ),
            node_selector=read.node_selector("inference.nodeSelector", node_labels),
            tolerations=read.tolerations("inference.tolerations"),
        ),
        mlflow=mlflow,
        monitoring=MonitoringSettings(
            grafana_dashboard=grafana,
            retention=read.text("monitoring.retention"),
        ),
        secrets=_secrets(read, (github, registry, mlflow, grafana, secrets_settings.external)),
        secrets_settings=secrets_settings,
        node_labels=node_labels,
        repo_root=repo_root,
    )
    if read.errors:
        raise ConfigError("invalid stack configuration:\n  " + "\n  ".join(read.errors))
    return config
