"""The workflow's review jobs: what changed, the infra preview, the tests, the release report.

Why they exist: a reviewer should see, on the pull request, what an infra change does
and what a release measured, without opening logs.

- ``changes``: which path groups a pull request touches (plain ``git diff``).
- ``infra-review``: ``mlcicd infra render`` of both stacks on the PR's head and base, then
  ``mlcicd infra diff``; no credentials, so it works for forks. With the
  ``PULUMI_ACCESS_TOKEN`` secret it adds ``pulumi preview --diff`` per stack (the official
  action, pinned). Both go to the job summary and one sticky comment.
- ``infra-tests``: ``tests/infra`` on pull requests that touch infra (and on main).
- ``integration-tests``: ``tests/integration`` on main, or on a PR labelled ``integration``.
- ``release-report``: ``mlcicd report`` over every artifact of the run, on every run.

Runners: the review and test jobs run on GitHub-hosted runners. They need no cluster,
and a fork's code must not run on the self-hosted fleet. The report job uses the CPU
scale set like the release jobs it summarises.

Forks: their token is read-only, so these jobs upload their comment as an artifact and
the relay workflow (:mod:`infra.workflow_comment`) posts it under the same header.

Left out: a live preview for forks (secrets are not given to them).
"""

from __future__ import annotations

import re
from typing import Any

from infra import workflow_actions as actions
from infra.workflow_steps import checkout, hosted_setup, install, step, sticky_comment
from pipeline.definition import PipelineDefinition
from pipeline.source import REPO_ROOT

HOSTED_RUNNER = "ubuntu-24.04"
# Secrets the user adds by hand to the repository, if at all: the program does not
# provision them, and every job that reads one runs without it (the live preview is
# skipped and the comment says so). The contract tests hold the workflow to this.
OPTIONAL_SECRETS = ("PULUMI_ACCESS_TOKEN",)
STACKS = ("staging", "prod")
INTEGRATION_LABEL = "integration"
# Output name -> the paths whose change makes it true on a pull request.
CHANGE_FILTERS: dict[str, tuple[str, ...]] = {
    "model": ("inference/", "pipeline/", "pipeline.toml", "requirements.lock", "Dockerfile"),
    "infra": ("infra/", "Pulumi", "pipeline.toml", "runner_image/"),
}
INFRA_COMMENT, RELEASE_COMMENT = "infra-review", "release-report"
# The end of each stack's preview output that goes in the comment (with the diff's own
# COMMENT_LIMIT, it stays under GitHub's 65,536 characters per comment).
PREVIEW_LIMIT = 15_000
PULL_REQUEST = "github.event_name == 'pull_request'"
# The base is rendered from a second checkout, with the head's venv, and both renders
# tag images alike so that the commit does not show as a change of every image.
RENDER_TAG, BASE_CHECKOUT = "review", "base-checkout"


def _pattern(paths: tuple[str, ...]) -> str:
    alternatives = "|".join(
        "Pulumi[^/]*\\.yaml" if p == "Pulumi" else p.replace(".", "\\.") for p in paths
    )
    return f"^({alternatives})"


def changes_job(runs_on: str, timeout_minutes: int) -> dict[str, Any]:
    lines = ['if [ "$GITHUB_EVENT_NAME" != "pull_request" ]; then']
    lines += [f'  echo "{name}=true" >> "$GITHUB_OUTPUT"' for name in CHANGE_FILTERS]
    lines += [
        "  exit 0",
        "fi",
        # fetch-depth 0 brought every branch: no fetch (and no credentials) needed.
        'changed="$(git diff --name-only "origin/$BASE_REF" HEAD)"',
    ]
    for name, paths in CHANGE_FILTERS.items():
        lines += [
            f"if grep -qE '{_pattern(paths)}' <<< \"$changed\"; then",
            f'  echo "{name}=true" >> "$GITHUB_OUTPUT"',
            "else",
            f'  echo "{name}=false" >> "$GITHUB_OUTPUT"',
            "fi",
        ]
    return {
        "runs-on": runs_on,
        "timeout-minutes": timeout_minutes,
        "permissions": {"contents": "read"},
        "outputs": {name: f"${{{{ steps.filter.outputs.{name} }}}}" for name in CHANGE_FILTERS},
        "steps": [
            checkout(fetch_depth=0),
            step(
                "Which parts did the change touch?",
                "\n".join(lines) + "\n",
                id="filter",
                env={"BASE_REF": "${{ github.base_ref }}"},
            ),
        ],
    }


def _offline_diff_steps() -> list[dict[str, Any]]:
    render = f'mlcicd infra render --stack "$stack" --image-tag {RENDER_TAG} --out'
    script = (
        "# A base from before --image-tag existed renders with its commit in image tags.\n"
        "base_tag=(--image-tag " + RENDER_TAG + ")\n"
        f'usage="$(cd {BASE_CHECKOUT} && PYTHONPATH="$PWD" python -m mlcicd infra render --help)"\n'
        'grep -q -- --image-tag <<< "$usage" || base_tag=()\n'
        f"for stack in {' '.join(STACKS)}; do\n"
        f'  {render} "$RUNNER_TEMP/render/head/$stack"\n'
        "  # The base's own code renders the base (its pipeline.toml, its infra/).\n"
        f'  (cd {BASE_CHECKOUT} && PYTHONPATH="$PWD" python -m mlcicd infra render '
        '--stack "$stack" "${base_tag[@]}" --out "$RUNNER_TEMP/render/base/$stack")\n'
        "done\n"
    )
    diff = (
        "code=0\n"
        "mlcicd infra diff --format markdown "
        '--title "Infra diff: base to head, both stacks (mlcicd infra render, offline)" '
        '"$RUNNER_TEMP/render/base" "$RUNNER_TEMP/render/head" > infra-review.md || code=$?\n'
        '[ "$code" -le 1 ]  # 0 identical, 1 different; 2 is an error\n'
    )
    return [
        {
            "name": "Check out the pull request's base",
            "uses": actions.CHECKOUT.uses,
            "with": {
                "ref": "${{ github.event.pull_request.base.sha }}",
                "path": BASE_CHECKOUT,
                "persist-credentials": False,
            },
        },
        step("Render both stacks on the PR's head and base (no credentials)", script),
        step("Diff the renders per resource", diff),
    ]


def pulumi_version() -> str:
    """The CLI version for the live preview: the SDK's pin in requirements.lock (Pulumi
    releases the CLI and the Python SDK with one version number)."""
    lock = (REPO_ROOT / "requirements.lock").read_text()
    found = re.search(r"^pulumi==([\w.]+)$", lock, re.MULTILINE)
    if found is None:
        raise ValueError("requirements.lock: no pulumi==VERSION pin for the live preview")
    return found.group(1)


def _live_preview_steps() -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for stack in STACKS:
        steps.append(
            {
                "name": f"Live preview: pulumi preview --diff ({stack})",
                "id": f"preview-{stack}",
                "if": "env.LIVE_PREVIEW == 'true'",
                "continue-on-error": True,
                "uses": actions.PULUMI.uses,
                "with": {
                    "command": "preview",
                    "stack-name": stack,
                    "diff": True,
                    "pulumi-version": pulumi_version(),
                },
                "env": {"PULUMI_ACCESS_TOKEN": "${{ secrets.PULUMI_ACCESS_TOKEN }}"},
            }
        )
    env = {f"PREVIEW_{s.upper()}": f"${{{{ steps.preview-{s}.outputs.output }}}}" for s in STACKS}
    env |= {f"OUTCOME_{s.upper()}": f"${{{{ steps.preview-{s}.outcome }}}}" for s in STACKS}
    body = [
        "{",
        '  echo "### Live preview (pulumi preview --diff against each stack\'s backend)"',
        '  if [ "$LIVE_PREVIEW" != "true" ]; then',
        '    echo "Not run: no PULUMI_ACCESS_TOKEN secret here (forks and PRs without secrets'
        ' get the offline diff above)."',
        "  fi",
    ]
    for stack in STACKS:
        up = stack.upper()
        body += [
            '  if [ "$LIVE_PREVIEW" = "true" ]; then',
            f'    echo "<details><summary>{stack}: $OUTCOME_{up}</summary>"',
            "    echo",
            "    echo '```diff'",
            f'    printf "%s\\n" "$PREVIEW_{up}" | tail -c {PREVIEW_LIMIT}',
            "    echo '```'",
            '    echo "</details>"',
            "  fi",
        ]
    body += ["} >> infra-review.md", 'cat infra-review.md >> "$GITHUB_STEP_SUMMARY"']
    steps.append(step("Add the live preview to the review", "\n".join(body) + "\n", env=env))
    return steps


def infra_review_job(definition: PipelineDefinition) -> dict[str, Any]:
    return {
        "name": "Infra review",
        "if": f"{PULL_REQUEST} && needs.changes.outputs.infra == 'true'",
        "needs": ["changes"],
        "runs-on": HOSTED_RUNNER,
        "timeout-minutes": 30,
        "permissions": {"contents": "read", "pull-requests": "write"},
        "env": {"LIVE_PREVIEW": "${{ secrets.PULUMI_ACCESS_TOKEN != '' }}"},
        "steps": [
            checkout(),
            *hosted_setup(definition),
            *_offline_diff_steps(),
            *_live_preview_steps(),
            *sticky_comment(INFRA_COMMENT, "infra-review.md"),
        ],
    }


def _tests_job(
    name: str, condition: str, run: str, definition: PipelineDefinition
) -> dict[str, Any]:
    return {
        "name": name,
        "if": condition,
        "needs": ["changes"],
        "runs-on": HOSTED_RUNNER,
        "timeout-minutes": 30,
        "permissions": {"contents": "read"},
        "steps": [checkout(), *hosted_setup(definition), step(name, run)],
    }


def test_jobs(definition: PipelineDefinition, on_main: str) -> dict[str, Any]:
    """``tests/infra`` when infra changed; ``tests/integration`` on main or on a label."""
    labelled = f"contains(github.event.pull_request.labels.*.name, '{INTEGRATION_LABEL}')"
    return {
        "infra-tests": _tests_job(
            "Infra tests",
            "needs.changes.outputs.infra == 'true'",
            "pytest tests/infra -q -n auto --dist loadgroup\n",
            definition,
        ),
        "integration-tests": _tests_job(
            "Integration tests",
            f"({on_main}) || ({PULL_REQUEST} && {labelled})",
            "pytest tests/integration -q\n",
            definition,
        ),
    }


def report_job(definition: PipelineDefinition, runs_on: str, needs: list[str]) -> dict[str, Any]:
    """Runs whatever happened before it (``always()``): a stopped run gets a report too."""
    script = (
        'mlcicd report --reports "$RUNNER_TEMP/reports" --out release-report '
        '--artifacts-url "$GITHUB_SERVER_URL/$GITHUB_REPOSITORY/actions/runs/$GITHUB_RUN_ID" '
        '--summary "$GITHUB_STEP_SUMMARY"\n'
    )
    return {
        "name": "Release report",
        "if": "always()",
        "needs": needs,
        "runs-on": runs_on,
        "timeout-minutes": 15,
        "permissions": {"contents": "read", "pull-requests": "write"},
        "steps": [
            checkout(),
            *install(definition),
            {
                "name": "Fetch every report of this run",
                # v4.1.8 fails when a run has no artifact at all (actions/download-artifact
                # #352); the report then says which parts did not run.
                "continue-on-error": True,
                "uses": actions.DOWNLOAD_ARTIFACT.uses,
                "with": {"path": "${{ runner.temp }}/reports"},
            },
            step("Write the release report", f'mkdir -p "$RUNNER_TEMP/reports"\n{script}'),
            {
                "name": "Keep the release report (HTML, plots)",
                "if": "always()",
                "uses": actions.UPLOAD_ARTIFACT.uses,
                "with": {"name": "release-report", "path": "release-report", "retention-days": 30},
            },
            *sticky_comment(RELEASE_COMMENT, "release-report/report.md"),
        ],
    }
