"""Render ``.github/workflows/ml-cicd-comment.yml``: the relay that comments on fork PRs.

Why a second workflow: a pull request from a fork runs with a read-only token, so its
review and report jobs cannot comment. They upload the comment (Markdown plus the PR
number) as an artifact instead (:func:`infra.workflow_steps.sticky_comment`); this
workflow runs on ``workflow_run`` of the main one, in the base repository with its own
token, and posts it under the same sticky header, so a PR has one comment either way.

Security choices: it never checks out or runs the PR's code; the artifact is data. The
PR number must be digits, and the PR's head must be the commit the triggering run
tested, so a fork that rewrites the main workflow in its PR can comment only on its
own PR. The Markdown goes to the comment as a file, never through a shell or an
expression. Permissions: ``actions: read`` (the artifacts) and ``pull-requests: write``.

Left out: relaying anything but comments (job summaries stay on the triggering run).
"""

from __future__ import annotations

from typing import Any

from infra import workflow_actions as actions
from infra.workflow_review import HOSTED_RUNNER, INFRA_COMMENT, RELEASE_COMMENT
from infra.workflow_steps import (
    COMMENT_FILE,
    PR_NUMBER_FILE,
    comment_artifact,
    dump_workflow,
    step,
)
from pipeline.definition import PipelineDefinition

COMMENT_WORKFLOW_PATH = ".github/workflows/ml-cicd-comment.yml"
HEADERS = (INFRA_COMMENT, RELEASE_COMMENT)
PERMISSIONS = {"actions": "read", "pull-requests": "write"}
TRIGGERED_BY_PR = "github.event.workflow_run.event == 'pull_request'"
# Checks the artifact's PR number before anything uses it: digits only, and the PR's
# head is the commit the triggering run tested.
CHECK_PR = (
    'number="$(head -c 32 "$STAGED/' + PR_NUMBER_FILE + "\" | tr -d '\\n')\"\n"
    'if ! [[ "$number" =~ ^[0-9]+$ ]]; then\n'
    '  echo "::error::the artifact\'s PR number is not digits only"\n'
    "  exit 1\n"
    "fi\n"
    'head_sha="$(gh api "repos/$GITHUB_REPOSITORY/pulls/$number" --jq .head.sha)"\n'
    'if [ "$head_sha" != "$RUN_HEAD_SHA" ]; then\n'
    '  echo "::error::PR #$number is at $head_sha, not the run\'s commit $RUN_HEAD_SHA"\n'
    "  exit 1\n"
    "fi\n"
    'echo "number=$number" >> "$GITHUB_OUTPUT"\n'
)


def _relay_steps(header: str) -> list[dict[str, Any]]:
    """Download ``header``'s artifact if the run left one, check it, post it."""
    staged = f"${{{{ runner.temp }}}}/{comment_artifact(header)}"
    download, check = f"download-{header}", f"pr-{header}"
    return [
        {
            "name": f"Fetch the comment of the run ({header})",
            "id": download,
            # Absent when the job was skipped or the PR is not from a fork (it commented).
            "continue-on-error": True,
            "uses": actions.DOWNLOAD_ARTIFACT.uses,
            "with": {
                "name": comment_artifact(header),
                "path": staged,
                "run-id": "${{ github.event.workflow_run.id }}",
                "github-token": "${{ secrets.GITHUB_TOKEN }}",
            },
        },
        step(
            f"Check the PR number ({header})",
            CHECK_PR,
            id=check,
            **{"if": f"steps.{download}.outcome == 'success'"},
            env={
                "STAGED": staged,
                "RUN_HEAD_SHA": "${{ github.event.workflow_run.head_sha }}",
                "GH_TOKEN": "${{ secrets.GITHUB_TOKEN }}",
            },
        ),
        {
            "name": f"Update the pull request comment ({header})",
            "if": f"steps.{check}.outcome == 'success'",
            "uses": actions.STICKY_COMMENT.uses,
            "with": {
                "header": header,
                "number": f"${{{{ steps.{check}.outputs.number }}}}",
                "path": f"{staged}/{COMMENT_FILE}",
            },
        },
    ]


def comment_workflow(definition: PipelineDefinition) -> dict[str, Any]:
    """The relay as data; it follows the main workflow by its name."""
    return {
        "name": f"{definition.pipeline.name}: fork PR comments",
        "on": {"workflow_run": {"workflows": [definition.pipeline.name], "types": ["completed"]}},
        "permissions": {},
        "jobs": {
            "comment": {
                "name": "Post the fork PR's comments",
                "if": TRIGGERED_BY_PR,
                "runs-on": HOSTED_RUNNER,
                "timeout-minutes": 5,
                "permissions": dict(PERMISSIONS),
                "steps": [s for header in HEADERS for s in _relay_steps(header)],
            }
        },
    }


def render_comment_workflow(definition: PipelineDefinition) -> str:
    return dump_workflow(comment_workflow(definition), "infra/workflow_comment.py")
