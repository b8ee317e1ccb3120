"""Helpers the entry point needs that are not resources: definition, tag, providers.

Why separate from ``__main__.py``: the entry point stays wiring, and ``mlcicd infra
render`` / ``mlcicd infra workflow`` reuse :func:`workflow_files` to write the same
workflows the stack commits.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_github as github
import pulumi_kubernetes as k8s

from infra.config import (
    PROJECT,
    REPO_ROOT,
    ConfigError,
    StackConfig,
    load_config,
    stack_file_source,
)
from infra.workflow import WORKFLOW_PATH, RunnerSpec, render_workflow, runner_environment
from infra.workflow_comment import COMMENT_WORKFLOW_PATH, render_comment_workflow
from pipeline.definition import DefinitionError, PipelineDefinition, load_definition
from pipeline.source import git


def definitions(profile: str, environment: str) -> tuple[PipelineDefinition, PipelineDefinition]:
    """(CI definition without environment overrides, this environment's definition)."""
    return load_definition(profile), load_definition(profile, environment)


def runner_specs(config: StackConfig) -> dict[str, RunnerSpec]:
    return {r.name: RunnerSpec(r.name, r.job_timeout_minutes) for r in config.runners}


def workflow_text(config: StackConfig) -> str:
    return render_workflow(load_definition(config.profile), runner_specs(config))


def workflow_files(config: StackConfig) -> dict[str, str]:
    """Every workflow file the repository gets, by path: the pipeline and its comment relay."""
    return {
        WORKFLOW_PATH: workflow_text(config),
        COMMENT_WORKFLOW_PATH: render_comment_workflow(load_definition(config.profile)),
    }


# The stack whose GitHubRepo owns the repository, and so commits the workflow files.
WORKFLOW_STACK = "prod"


def stack_workflow_files(stack: str = WORKFLOW_STACK, root: Path = REPO_ROOT) -> dict[str, str]:
    """What ``pulumi up`` on ``stack`` commits as workflows, read without Pulumi."""
    source = stack_file_source(stack, root)
    return workflow_files(load_config(source, stage_runner_classes, repo_root=root))


def image_tag(config: StackConfig) -> str:
    """``images.tag``, else the checkout's git sha (what the workflow tags images with)."""
    if config.images.tag:
        return config.images.tag
    return git("rev-parse", "HEAD", cwd=config.repo_root) or "unknown"


def kubernetes_provider(config: StackConfig) -> k8s.Provider:
    return k8s.Provider("cluster", kubeconfig=config.secrets.kubeconfig)


def github_provider(config: StackConfig) -> github.Provider:
    settings = config.github
    if settings.auth == "app":
        return github.Provider(
            "github",
            owner=settings.owner,
            app_auth={
                "id": settings.app_id,
                "installation_id": settings.app_installation_id,
                "pem_file": config.secrets.github_app_private_key or "",
            },
        )
    return github.Provider("github", owner=settings.owner, token=config.secrets.github_token)


def stage_runner_classes(profile: str, environment: str) -> tuple[str, ...]:
    """Runner classes this stack's scale sets must serve (CI runs on staging's)."""
    try:
        stages = load_definition(profile).stages
    except DefinitionError as exc:
        raise ConfigError(f"{PROJECT}:pipelineProfile: {exc}") from exc
    mine = [s for s in stages if runner_environment(s) == environment]
    return tuple(sorted({s.runner for s in mine}))


def opts(provider: pulumi.ProviderResource) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(providers=[provider])
