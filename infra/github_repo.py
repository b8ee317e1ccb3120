"""The GitHub side: repository, deployment environment, Actions secrets and variables,
the rendered workflow file, and branch protection.

Why one stack manages the repository: both stacks would otherwise fight over the same
repository settings. The stack with ``github.repositoryMode`` ``create`` or ``adopt``
(prod) owns the repository, the workflow file, branch protection and repository-level
secrets; every stack owns its own deployment environment (reviewers, branch policy and
environment-scoped values). Secrets and variables are data (:func:`secret_specs`,
:func:`variable_specs`), created in one loop.

Left out: CODEOWNERS, rulesets (branch protection covers the two required checks),
and organisation-level secrets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pulumi
import pulumi_github as github

from infra.config import GitHubSettings
from infra.workflow import WORKFLOW_PATH

Scope = Literal["repository", "environment"]


@dataclass(frozen=True)
class SecretSpec:
    name: str
    value: pulumi.Output[str]
    scope: Scope


@dataclass(frozen=True)
class VariableSpec:
    name: str
    value: pulumi.Input[str]
    scope: Scope


@dataclass(frozen=True)
class GitHubRepoArgs:
    settings: GitHubSettings
    environment: str  # the GitHub environment: staging or production
    main_only: bool  # deployments to this environment only from main
    workflow: str
    required_checks: tuple[str, ...]
    secrets: tuple[SecretSpec, ...]
    variables: tuple[VariableSpec, ...]


class GitHubRepo(pulumi.ComponentResource):
    repository: pulumi.Output[str]
    environment: pulumi.Output[str]

    def __init__(
        self, name: str, args: GitHubRepoArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlcicd:infra:GitHubRepo", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        settings = args.settings
        repo_name: pulumi.Input[str] = settings.repository
        managed = settings.manages_repository
        if managed:
            repo = github.Repository(
                "repository",
                name=settings.repository,
                visibility="private",
                has_issues=True,
                delete_branch_on_merge=True,
                allow_merge_commit=False,
                vulnerability_alerts=True,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    protect=True,
                    import_=settings.repository if settings.repository_mode == "adopt" else None,
                ),
            )
            repo_name = repo.name
            github.RepositoryFile(
                "workflow",
                repository=repo_name,
                branch="main",
                file=WORKFLOW_PATH,
                content=args.workflow,
                commit_message="ci: update the rendered ml-cicd workflow",
                overwrite_on_create=True,
                opts=child,
            )
            github.BranchProtection(
                "main",
                repository_id=repo.node_id,
                pattern="main",
                enforce_admins=True,
                allows_force_pushes=False,
                allows_deletions=False,
                required_status_checks=[{"strict": True, "contexts": list(args.required_checks)}],
                required_pull_request_reviews=[
                    {"required_approving_review_count": 1, "dismiss_stale_reviews": True}
                ],
                opts=child,
            )
        env = github.RepositoryEnvironment(
            args.environment,
            repository=repo_name,
            environment=args.environment,
            prevent_self_review=True,
            reviewers=self._reviewers(settings.reviewers),
            deployment_branch_policy=(
                {"protected_branches": False, "custom_branch_policies": True}
                if args.main_only
                else None
            ),
            opts=child,
        )
        if args.main_only:
            github.RepositoryEnvironmentDeploymentPolicy(
                f"{args.environment}-main-only",
                repository=repo_name,
                environment=env.environment,
                branch_pattern="main",
                opts=child,
            )
        self._values(args, repo_name, env.environment, managed)
        self.repository = pulumi.Output.from_input(repo_name)
        self.environment = env.environment
        self.register_outputs({"repository": self.repository, "environment": self.environment})

    def _reviewers(self, usernames: Sequence[str]) -> list[dict[str, object]] | None:
        """Environment reviewers by GitHub user id, looked up from the configured logins."""
        if not usernames:
            return None
        invoke = pulumi.InvokeOutputOptions(parent=self)
        ids = [github.get_user_output(username=u, opts=invoke).id.apply(int) for u in usernames]
        return [{"users": ids}]

    def _values(
        self,
        args: GitHubRepoArgs,
        repo_name: pulumi.Input[str],
        environment: pulumi.Output[str],
        managed: bool,
    ) -> None:
        """Secrets and variables: repository-scoped ones only where this stack owns it."""
        child = pulumi.ResourceOptions(parent=self)
        for secret in args.secrets:
            if secret.scope == "environment":
                github.ActionsEnvironmentSecret(
                    f"{args.environment}-{secret.name}",
                    repository=repo_name,
                    environment=environment,
                    secret_name=secret.name,
                    plaintext_value=secret.value,
                    opts=child,
                )
            elif managed:
                github.ActionsSecret(
                    secret.name,
                    repository=repo_name,
                    secret_name=secret.name,
                    plaintext_value=secret.value,
                    opts=child,
                )
        for variable in args.variables:
            if variable.scope == "environment":
                github.ActionsEnvironmentVariable(
                    f"{args.environment}-{variable.name}",
                    repository=repo_name,
                    environment=environment,
                    variable_name=variable.name,
                    value=variable.value,
                    opts=child,
                )
            elif managed:
                github.ActionsVariable(
                    variable.name,
                    repository=repo_name,
                    variable_name=variable.name,
                    value=variable.value,
                    opts=child,
                )
