"""The fork-comment relay: what triggers it, what it may do, and what it trusts.

A fork's run uploads its comment; the relay, with a write token, posts it. So the relay
must never run the PR's code, must take the PR number only as digits that name the PR
whose head the run tested, and must hold no permission beyond reading artifacts and
writing PR comments.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import workflow_actions as actions
from infra.workflow import RunnerSpec, workflow
from infra.workflow_comment import (
    CHECK_PR,
    COMMENT_WORKFLOW_PATH,
    comment_workflow,
    render_comment_workflow,
)
from infra.workflow_steps import COMMENT_FILE, PR_NUMBER_FILE
from pipeline.definition import load_definition

VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
DEFINITION = load_definition("gpu")
RUNNERS = {"gpu": RunnerSpec("gpu", 60), "cpu": RunnerSpec("cpu", 30)}
RELAY = comment_workflow(DEFINITION)
(JOB,) = RELAY["jobs"].values()
HEADERS = ("infra-review", "release-report")
FORK = "github.event.pull_request.head.repo.full_name != github.repository"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("relay")
    path = root / COMMENT_WORKFLOW_PATH
    path.parent.mkdir(parents=True)
    path.write_text(render_comment_workflow(DEFINITION))
    return path


def test_it_follows_the_main_workflow_by_name_on_pull_requests_only() -> None:
    main_name = workflow(DEFINITION, RUNNERS)["name"]
    assert RELAY["on"] == {"workflow_run": {"workflows": [main_name], "types": ["completed"]}}
    assert JOB["if"] == "github.event.workflow_run.event == 'pull_request'"
    assert JOB["runs-on"] == "ubuntu-24.04"


def test_it_may_read_artifacts_and_write_pr_comments_and_nothing_else() -> None:
    assert RELAY["permissions"] == {}
    assert JOB["permissions"] == {"actions": "read", "pull-requests": "write"}


def test_no_checkout_and_every_action_pinned() -> None:
    uses = [s["uses"] for s in JOB["steps"] if "uses" in s]
    assert actions.CHECKOUT.uses not in uses
    assert set(uses) == {actions.DOWNLOAD_ARTIFACT.uses, actions.STICKY_COMMENT.uses}
    assert "checkout" not in yaml.safe_dump(RELAY)


@pytest.mark.parametrize("header", HEADERS)
def test_each_comment_is_fetched_from_the_run_checked_and_posted_under_its_header(
    header: str,
) -> None:
    steps = {s["name"]: s for s in JOB["steps"]}
    fetch = steps[f"Fetch the comment of the run ({header})"]
    assert fetch["with"]["name"] == f"pr-comment-{header}"
    assert fetch["with"]["run-id"] == "${{ github.event.workflow_run.id }}"
    assert fetch["continue-on-error"] is True  # absent when the PR commented itself
    check = steps[f"Check the PR number ({header})"]
    assert check["if"] == f"steps.download-{header}.outcome == 'success'"
    assert "${{" not in check["run"]
    post = steps[f"Update the pull request comment ({header})"]
    assert post["if"] == f"steps.pr-{header}.outcome == 'success'"
    assert post["with"]["header"] == header
    assert post["with"]["number"] == f"${{{{ steps.pr-{header}.outputs.number }}}}"
    assert post["with"]["path"].endswith(f"/pr-comment-{header}/{COMMENT_FILE}")


def _check(tmp_path: Path, number: str, pr_head: str) -> subprocess.CompletedProcess[str]:
    """Run the check with a fake ``gh`` that answers ``pr_head`` for the PR."""
    (tmp_path / PR_NUMBER_FILE).write_text(number)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    gh = bin_dir / "gh"
    gh.write_text(f'#!/usr/bin/env bash\necho "$@" >> "{tmp_path}/gh.log"\necho {pr_head}\n')
    gh.chmod(0o755)
    output = tmp_path / "output"
    output.write_text("")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "STAGED": str(tmp_path),
        "RUN_HEAD_SHA": "abc123",
        "GITHUB_REPOSITORY": "o/r",
        "GITHUB_OUTPUT": str(output),
    }
    return subprocess.run(
        ["bash", "-eo", "pipefail", "-c", CHECK_PR],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_pr_number_must_be_digits_naming_the_pr_the_run_tested(tmp_path: Path) -> None:
    done = _check(tmp_path, "42\n", "abc123")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "output").read_text() == "number=42\n"
    assert "repos/o/r/pulls/42" in (tmp_path / "gh.log").read_text()
    for bad in ("42; rm -rf ~", "$(id)", "-1", "", "4 2", "0x2a"):
        (tmp_path / "gh.log").unlink(missing_ok=True)
        done = _check(tmp_path, bad, "abc123")
        assert done.returncode == 1 and "not digits only" in done.stdout, bad
        assert not (tmp_path / "gh.log").exists(), "gh was called with an unchecked number"
    done = _check(tmp_path, "43", "def456")  # a number of another PR than the run's
    assert done.returncode == 1 and "not the run's commit" in done.stdout


@pytest.mark.parametrize("header", HEADERS)
def test_a_fork_run_uploads_its_comment_and_does_not_try_to_comment(header: str) -> None:
    job = workflow(DEFINITION, RUNNERS)["jobs"][header]
    sticky = [s for s in job["steps"] if s.get("uses") == actions.STICKY_COMMENT.uses]
    assert len(sticky) == 1 and FORK.replace("!=", "==") in sticky[0]["if"]
    stage, upload = (s for s in job["steps"] if FORK in s.get("if", ""))
    assert stage["env"]["PR_NUMBER"] == "${{ github.event.pull_request.number }}"
    assert f"$STAGED/{PR_NUMBER_FILE}" in stage["run"] and "${{" not in stage["run"]
    assert f"$STAGED/{COMMENT_FILE}" in stage["run"]
    assert upload["uses"] == actions.UPLOAD_ARTIFACT.uses
    assert upload["with"]["name"] == f"pr-comment-{header}"
    assert upload["with"]["path"] == stage["env"]["STAGED"]


def test_the_fork_staging_script_writes_both_files(tmp_path: Path) -> None:
    job = workflow(DEFINITION, RUNNERS)["jobs"]["infra-review"]
    (stage,) = (s for s in job["steps"] if s.get("name", "").startswith("Stage the comment"))
    (tmp_path / "infra-review.md").write_text("## diff\n")
    env = {"PATH": "/usr/bin:/bin", "STAGED": str(tmp_path / "out"), "PR_NUMBER": "7"}
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", stage["run"]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / COMMENT_FILE).read_text() == "## diff\n"
    assert (tmp_path / "out" / PR_NUMBER_FILE).read_text() == "7\n"


def test_actionlint_passes(rendered: Path) -> None:
    assert shutil.which("shellcheck"), "actionlint runs shellcheck on run: steps"
    done = subprocess.run(
        [str(VENV_BIN / "actionlint"), COMMENT_WORKFLOW_PATH],
        cwd=rendered.parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_schema_passes(rendered: Path) -> None:
    done = subprocess.run(
        [
            str(VENV_BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            str(rendered),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_rendering_is_stable_and_generated() -> None:
    text = render_comment_workflow(DEFINITION)
    assert text == render_comment_workflow(DEFINITION)
    assert text.startswith("# Generated by `mlcicd infra workflow` (infra/workflow_comment.py")
    data: dict[str, Any] = yaml.safe_load(text)
    assert data["jobs"] == RELAY["jobs"]
