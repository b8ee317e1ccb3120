"""Steps the rendered workflows share: check out, install, caches, PR comments, YAML.

Why their own module: the release jobs (:mod:`infra.workflow`), the review jobs
(:mod:`infra.workflow_review`) and the comment relay (:mod:`infra.workflow_comment`)
are built from the same steps, so an install, a cache key or a comment's artifact is
written once. Values reach ``run:`` scripts through ``env:`` only.
"""

from __future__ import annotations

from typing import Any

import yaml

from infra import workflow_actions as actions
from pipeline.definition import PipelineDefinition

REPORTS_DIR = "gate-reports"
MODEL_CACHE_PATHS = ("~/.cache/mlcicd", "~/.cache/huggingface")
PIP_CACHE_PREFIX = "pip-${{ runner.os }}-"
MODEL_CACHE_PREFIX = "model-${{ vars.MODEL_REF }}-"
# A pull request from a fork gets a read-only token: it cannot comment, so its jobs
# upload the comment as an artifact and the relay workflow (infra/workflow_comment.py)
# posts it with a token of the base repository.
SAME_REPO_PR = (
    "github.event_name == 'pull_request' && "
    "github.event.pull_request.head.repo.full_name == github.repository"
)
FORK_PR = (
    "github.event_name == 'pull_request' && "
    "github.event.pull_request.head.repo.full_name != github.repository"
)
# The relayed comment: an artifact per header holding the Markdown and the PR number.
COMMENT_ARTIFACT_PREFIX, COMMENT_FILE, PR_NUMBER_FILE = "pr-comment-", "comment.md", "pr-number"


def step(name: str, run: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, **extra, "run": run}


def checkout(fetch_depth: int = 1) -> dict[str, Any]:
    return {
        "name": "Check out",
        "uses": actions.CHECKOUT.uses,
        "with": {"persist-credentials": False, "fetch-depth": fetch_depth},
    }


def pip_cache() -> dict[str, Any]:
    """Keyed by the lock file; an older cache is restored when the lock changed."""
    return {
        "name": "Cache pip downloads",
        "uses": actions.CACHE.uses,
        "with": {
            "path": "~/.cache/pip",
            "key": PIP_CACHE_PREFIX + "${{ hashFiles('requirements.lock') }}",
            "restore-keys": PIP_CACHE_PREFIX,
        },
    }


def install(definition: PipelineDefinition) -> list[dict[str, Any]]:
    python = f"python{definition.pipeline.python_version}"
    return [
        pip_cache(),
        step(
            "Install the project",
            f"{python} -m venv .venv\n"
            ".venv/bin/pip install -r requirements.lock\n"
            ".venv/bin/pip install --no-deps -e .\n"
            'echo "$PWD/.venv/bin" >> "$GITHUB_PATH"\n',
        ),
    ]


def hosted_setup(definition: PipelineDefinition) -> list[dict[str, Any]]:
    """On a GitHub-hosted runner: pinned Python, then ``scripts/setup.sh`` (the one
    install path of the repository: Debian services the tests start, and the venv)."""
    return [
        {
            "name": "Set up Python",
            "uses": actions.SETUP_PYTHON.uses,
            "with": {"python-version": definition.pipeline.python_version},
        },
        pip_cache(),
        step(
            "Install the project and the services the tests start",
            'bash scripts/setup.sh\necho "$PWD/.venv/bin" >> "$GITHUB_PATH"\n',
        ),
    ]


def model_cache() -> dict[str, Any]:
    return {
        "name": "Cache models",
        "uses": actions.CACHE.uses,
        "with": {
            "path": "\n".join(MODEL_CACHE_PATHS),
            "key": MODEL_CACHE_PREFIX
            + "${{ hashFiles('inference/builtin/**', 'inference/builtin_model.py') }}",
            "restore-keys": MODEL_CACHE_PREFIX,
        },
    }


def comment_artifact(header: str) -> str:
    return COMMENT_ARTIFACT_PREFIX + header


def sticky_comment(header: str, path: str) -> list[dict[str, Any]]:
    """One comment per ``header`` on the pull request, edited in place on every push.

    A fork's run cannot comment: it uploads ``path`` and the PR number instead, and the
    relay posts them under the same header, so a PR has one such comment either way.
    """
    staged = f"${{{{ runner.temp }}}}/{comment_artifact(header)}"
    stage = (
        f'if [ ! -f "{path}" ]; then echo "{path} was not written: no comment"; exit 0; fi\n'
        'mkdir -p "$STAGED"\n'
        f'cp "{path}" "$STAGED/{COMMENT_FILE}"\n'
        f'printf "%s\\n" "$PR_NUMBER" > "$STAGED/{PR_NUMBER_FILE}"\n'
    )
    return [
        {
            "name": f"Update the pull request comment ({header})",
            "if": f"always() && {SAME_REPO_PR}",
            "uses": actions.STICKY_COMMENT.uses,
            "with": {"header": header, "path": path},
        },
        step(
            f"Stage the comment for the relay (fork PR, {header})",
            stage,
            **{"if": f"always() && {FORK_PR}"},
            env={"STAGED": staged, "PR_NUMBER": "${{ github.event.pull_request.number }}"},
        ),
        {
            "name": f"Keep the comment for the relay (fork PR, {header})",
            "if": f"always() && {FORK_PR}",
            "uses": actions.UPLOAD_ARTIFACT.uses,
            "with": {
                "name": comment_artifact(header),
                "path": staged,
                "retention-days": 1,
                "if-no-files-found": "ignore",
            },
        },
    ]


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line scripts, and no YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def dump_workflow(data: dict[str, Any], source: str) -> str:
    """The YAML, with a header naming ``source`` and each pinned action's version."""
    header = (
        f"# Generated by `mlcicd infra workflow` ({source}, from pipeline.toml).\n"
        "# Do not edit by hand: change pipeline.toml or infra/, then rerun the command.\n"
        "# `pulumi up` on the prod stack commits this same file to the repository.\n"
    )
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100)
    return header + actions.annotate_versions(body)
