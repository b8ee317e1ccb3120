"""The typed stack configuration: what :func:`infra.config.load_config` returns.

Why separate: components import these small frozen types without pulling in config
parsing; every field is already validated when one of these exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pulumi

from pipeline.source import REPO_ROOT


@dataclass(frozen=True)
class Toleration:
    key: str
    value: str | None
    effect: str

    def to_k8s(self) -> dict[str, str]:
        if self.value is None:
            return {"key": self.key, "operator": "Exists", "effect": self.effect}
        return {"key": self.key, "operator": "Equal", "value": self.value, "effect": self.effect}


def scale_set_name(environment: str, runner_class: str) -> str:
    """An ARC scale set's name, which is also the label jobs use in ``runs-on``.

    Qualified by environment: each stack's scale sets register with the same repository,
    and names must be unique there. CI jobs run on staging's, prod deploys on prod's.
    """
    return f"mlcicd-{environment}-{runner_class}"


@dataclass(frozen=True)
class RunnerClass:
    name: Literal["gpu", "cpu"]
    environment: str
    min_runners: int
    max_runners: int
    gpus: int
    cpu: str
    memory: str
    job_timeout_minutes: int
    node_selector: tuple[tuple[str, str], ...]
    tolerations: tuple[Toleration, ...]

    @property
    def scale_set_name(self) -> str:
        return scale_set_name(self.environment, self.name)

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels GitHub knows this scale set by: its name only (ARC 0.9.3)."""
        return (self.scale_set_name,)


@dataclass(frozen=True)
class GitHubSettings:
    owner: str
    repository: str
    repository_mode: Literal["create", "adopt", "reference"]
    reviewers: tuple[str, ...]
    auth: Literal["token", "app"]
    app_id: str
    app_installation_id: str

    @property
    def manages_repository(self) -> bool:
        return self.repository_mode != "reference"

    @property
    def url(self) -> str:
        return f"https://github.com/{self.owner}/{self.repository}"


@dataclass(frozen=True)
class RegistrySettings:
    kind: Literal["ghcr", "in-cluster"]
    host: str
    username: str
    storage_size: str


@dataclass(frozen=True)
class ImageSettings:
    build: bool
    push: bool
    tag: str


@dataclass(frozen=True)
class InferenceSettings:
    replicas: int
    gpus: int
    cpu: str
    memory: str
    model: str
    node_selector: tuple[tuple[str, str], ...]
    tolerations: tuple[Toleration, ...]


@dataclass(frozen=True)
class MlflowSettings:
    image: str
    artifact_store: Literal["pvc", "s3"]
    artifact_bucket: str
    storage_size: str
    username: str
    db_storage_size: str


@dataclass(frozen=True)
class MonitoringSettings:
    grafana_dashboard: bool
    retention: str


@dataclass(frozen=True)
class SecretsSettings:
    """``secrets.provider`` and, for ``external-secrets``, where the values live."""

    provider: Literal["pulumi", "external-secrets"]
    vault_server: str
    vault_path: str
    vault_role: str
    key_prefix: str

    @property
    def external(self) -> bool:
        return self.provider == "external-secrets"


@dataclass(frozen=True)
class Secrets:
    """Secret config values; ``None`` where the stack's choices do not need one.

    With ``secrets.provider = external-secrets`` the in-cluster-only ones (database,
    htpasswd files, MLflow password, Grafana, AWS keys) are never read.
    """

    github_token: pulumi.Output[str] | None
    github_app_private_key: pulumi.Output[str] | None
    hf_token: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    mlflow_password: pulumi.Output[str] | None
    mlflow_htpasswd: pulumi.Output[str] | None
    registry_password: pulumi.Output[str]
    registry_htpasswd: pulumi.Output[str] | None
    db_password: pulumi.Output[str] | None
    grafana_admin_password: pulumi.Output[str] | None
    aws_access_key_id: pulumi.Output[str] | None
    aws_secret_access_key: pulumi.Output[str] | None


@dataclass(frozen=True)
class StackConfig:
    environment: Literal["staging", "prod"]
    namespace: str
    profile: str
    github: GitHubSettings
    runners: tuple[RunnerClass, ...]
    registry: RegistrySettings
    images: ImageSettings
    inference: InferenceSettings
    mlflow: MlflowSettings
    monitoring: MonitoringSettings
    secrets: Secrets
    secrets_settings: SecretsSettings
    node_labels: tuple[str, ...] = ()
    repo_root: Path = REPO_ROOT

    @property
    def github_environment(self) -> str:
        """The GitHub deployment environment: the workflow's prod job uses ``production``."""
        return "production" if self.environment == "prod" else "staging"
