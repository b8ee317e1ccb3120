"""Steps the rendered workflow's jobs share: check out, install, caches, PR comments.

Why their own module: the release jobs (:mod:`infra.workflow`) and the review jobs
(:mod:`infra.workflow_review`) are built from the same steps, so an install or a cache
key is written once. Values reach ``run:`` scripts through ``env:`` only.
"""

from __future__ import annotations

from typing import Any

from infra import workflow_actions as actions
from pipeline.definition import PipelineDefinition

REPORTS_DIR = "gate-reports"
MODEL_CACHE_PATHS = ("~/.cache/mlcicd", "~/.cache/huggingface")
PIP_CACHE_PREFIX = "pip-${{ runner.os }}-"
MODEL_CACHE_PREFIX = "model-${{ vars.MODEL_REF }}-"
# A pull request from a fork gets a read-only token: it cannot comment, so its jobs
# leave the report in the job summary only.
SAME_REPO_PR = (
    "github.event_name == 'pull_request' && "
    "github.event.pull_request.head.repo.full_name == github.repository"
)


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


def sticky_comment(header: str, path: str) -> dict[str, Any]:
    """One comment per ``header`` on the pull request, edited in place on every push."""
    return {
        "name": f"Update the pull request comment ({header})",
        "if": f"always() && {SAME_REPO_PR}",
        "uses": actions.STICKY_COMMENT.uses,
        "with": {"header": header, "path": path},
    }
