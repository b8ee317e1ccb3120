"""The GitHub side: repository, deployment environment, Actions secrets and variables,
the rendered workflow file, and branch protection.

Why one stack manages the repository: both stacks would otherwise fight over the same
repository settings. The stack with ``github.repositoryMode`` ``create`` or ``adopt``
(prod) owns the repository, the workflow file, branch protection and repository-level
secrets; every stack owns its own deployment environment (reviewers, branch policy and
environment-scoped values). Secrets and variables are data (:func:`secret_specs`,
:func:`variable_specs`), created in one loop.

Committing the workflow under protection: ``main`` requires a reviewed pull request
and the pull-request checks, and the workflow file is committed straight to ``main``
through the contents API. Classic branch protection would refuse that commit (with
``enforce_admins`` for everyone; without it still for a GitHub App, which cannot be
an admin). So ``main`` is protected by a repository *ruleset* whose only bypass actor
is the identity Pulumi uses (:func:`pulumi_identity`): the repository admin role with
token auth (managing rulesets needs admin anyway), the App itself with App auth.
Everyone else needs a PR, a review and green checks; force pushes and deletion are
blocked for all. We chose this over opening a PR per change (a PR resource cannot
follow its merge and deleted branch across ``pulumi up`` runs) and over protection
without admin enforcement (it lets every admin through and still stops an App).
tests/infra/test_contracts.py checks each committed file's branch against the rules.

Left out: CODEOWNERS and organisation-level secrets and rulesets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

import pulumi
import pulumi_github as github

from infra.config import GitHubSettings
from infra.workflow import WORKFLOW_PATH

Scope = Literal["repository", "environment"]
# GitHub's id for the built-in repository "admin" role in ruleset bypass lists.
ADMIN_ROLE_ID = 5
PROTECTED_BRANCH = "main"


def pulumi_identity(settings: GitHubSettings) -> dict[str, object]:
    """The ruleset bypass actor that is the identity the GitHub provider authenticates as."""
    if settings.auth == "app":
        return {"actor_type": "Integration", "actor_id": int(settings.app_id or 0)}
    return {"actor_type": "RepositoryRole", "actor_id": ADMIN_ROLE_ID}


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
    workflows: Mapping[str, str]  # path in the repository -> the rendered workflow
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
                f"{name}-repository",
                name=settings.repository,
                visibility="private",
                has_issues=True,
                delete_branch_on_merge=True,
                allow_merge_commit=False,
                vulnerability_alerts=True,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    aliases=[pulumi.Alias(name="repository")],
                    protect=True,
                    import_=settings.repository if settings.repository_mode == "adopt" else None,
                ),
            )
            repo_name = repo.name
            self._workflow_files(name, args, repo_name)
            self._protect_main(name, args, repo_name)
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

    def _renamed(self, old: str) -> pulumi.ResourceOptions:
        """Child options keeping the child's former fixed Pulumi name as an alias."""
        return pulumi.ResourceOptions(parent=self, aliases=[pulumi.Alias(name=old)])

    def _workflow_files(
        self, name: str, args: GitHubRepoArgs, repo_name: pulumi.Input[str]
    ) -> None:
        """One commit to ``main`` per workflow file; the pipeline's keeps its old names."""
        for path, content in args.workflows.items():
            main = path == WORKFLOW_PATH
            stem = PurePosixPath(path).stem
            github.RepositoryFile(
                f"{name}-workflow" if main else f"{name}-workflow-{stem}",
                repository=repo_name,
                branch=PROTECTED_BRANCH,
                file=path,
                content=content,
                commit_message=f"ci: update the rendered {stem} workflow",
                overwrite_on_create=True,
                opts=self._renamed("workflow") if main else pulumi.ResourceOptions(parent=self),
            )

    def _protect_main(self, name: str, args: GitHubRepoArgs, repo_name: pulumi.Input[str]) -> None:
        """``main``: PR + one review + the PR checks; Pulumi's identity may bypass."""
        github.RepositoryRuleset(
            f"{name}-{PROTECTED_BRANCH}",
            name=f"protect-{PROTECTED_BRANCH}",
            repository=repo_name,
            target="branch",
            enforcement="active",
            conditions={
                "ref_name": {"includes": [f"refs/heads/{PROTECTED_BRANCH}"], "excludes": []}
            },
            bypass_actors=[{**pulumi_identity(args.settings), "bypass_mode": "always"}],
            rules={
                "deletion": True,
                "non_fast_forward": True,
                "pull_request": {
                    "required_approving_review_count": 1,
                    "dismiss_stale_reviews_on_push": True,
                },
                "required_status_checks": {
                    "strict_required_status_checks_policy": True,
                    "required_checks": [{"context": c} for c in args.required_checks],
                },
            },
            opts=pulumi.ResourceOptions(parent=self),
        )

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
