"""The Actions secrets and variables the rendered workflow reads, as data.

Why a table: the workflow references ``secrets.X`` and ``vars.X`` by name; keeping the
names here, next to where their values come from, makes a missing or stale one a
one-line review. In-cluster endpoints and credentials are NOT here: the runner pods
carry them (see ``infra/gpu_runners.py``), so they never leave the cluster.
"""

from __future__ import annotations

import pulumi

from infra.config import StackConfig
from infra.github_repo import SecretSpec, VariableSpec


def image_name(config: StackConfig) -> str:
    """``owner/repo/inference-server``, lower case (registries reject upper case)."""
    return f"{config.github.owner}/{config.github.repository}/inference-server".lower()


def secret_specs(config: StackConfig) -> tuple[SecretSpec, ...]:
    s = config.secrets
    return (
        SecretSpec("HF_TOKEN", s.hf_token, "repository"),
        SecretSpec("REGISTRY_PASSWORD", s.registry_password, "repository"),
    )


def variable_specs(config: StackConfig, endpoint: pulumi.Input[str]) -> tuple[VariableSpec, ...]:
    return (
        VariableSpec("REGISTRY", config.registry.host, "repository"),
        VariableSpec("REGISTRY_USERNAME", config.registry.username, "repository"),
        VariableSpec("IMAGE_NAME", image_name(config), "repository"),
        VariableSpec("MODEL_REF", config.inference.model, "repository"),
        VariableSpec("MLCICD_ENDPOINT", endpoint, "environment"),
        VariableSpec("MLCICD_NAMESPACE", config.namespace, "environment"),
    )
