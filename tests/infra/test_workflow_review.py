"""The workflow's review jobs: triggers, permissions, pins, and the change filter run for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infra import workflow_actions as actions
from infra.workflow import RunnerSpec, workflow
from infra.workflow_review import CHANGE_FILTERS, INTEGRATION_LABEL, pulumi_version
from pipeline.definition import load_definition

from .conftest import REPO, copy_code

RUNNERS = {"gpu": RunnerSpec("gpu", 60), "cpu": RunnerSpec("cpu", 30)}
DEFINITION = load_definition("gpu")
DATA = workflow(DEFINITION, RUNNERS)
JOBS: dict[str, Any] = DATA["jobs"]


def _uses(job: dict[str, Any]) -> list[str]:
    return [s["uses"] for s in job["steps"] if "uses" in s]


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo, capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("changed", "model", "infra"),
    [
        ("infra/rollouts.py", "false", "true"),
        ("Pulumi.prod.yaml", "false", "true"),
        ("runner_image/Dockerfile", "false", "true"),
        ("pipeline.toml", "true", "true"),
        ("inference/server.py", "true", "false"),
        ("README.md", "false", "false"),
        ("docs/infra/notes.md", "false", "false"),
    ],
)
def test_the_change_filter_script_on_a_real_repository(
    tmp_path: Path, changed: str, model: str, infra: str
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("base\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "base")
    _git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    path = repo / changed
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("changed\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "change")
    script = next(s for s in JOBS["changes"]["steps"] if s.get("id") == "filter")["run"]
    output = tmp_path / "output"
    env = {**os.environ, "GITHUB_EVENT_NAME": "pull_request", "BASE_REF": "main",
           "GITHUB_OUTPUT": str(output)}  # fmt: skip
    subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=repo, env=env, check=True)
    assert output.read_text().splitlines() == [f"model={model}", f"infra={infra}"]
    assert set(JOBS["changes"]["outputs"]) == set(CHANGE_FILTERS)


def test_infra_review_triggers_permissions_and_pins() -> None:
    job = JOBS["infra-review"]
    assert job["if"] == (
        "github.event_name == 'pull_request' && needs.changes.outputs.infra == 'true'"
    )
    assert job["needs"] == ["changes"]
    assert job["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert job["runs-on"] == "ubuntu-24.04"  # GitHub-hosted: a fork's code never on our fleet
    uses = _uses(job)
    assert actions.SETUP_PYTHON.uses in uses and actions.STICKY_COMMENT.uses in uses
    assert uses.count(actions.PULUMI.uses) == 2
    assert actions.PULUMI.sha == "8582a9e8cc630786854029b4e09281acd6794b58"
    assert actions.STICKY_COMMENT.sha == "773744901bac0e8cbb5a0dc842800d45e9b2b405"
    assert actions.SETUP_PYTHON.sha == "a26af69be951a213d495a4c3e4e4022e16d87065"
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert "for stack in staging prod; do" in runs
    assert 'mlcicd infra render --stack "$stack" --image-tag review' in runs
    assert "mlcicd infra diff --format markdown" in runs
    base = next(s for s in job["steps"] if s["name"] == "Check out the pull request's base")
    assert base["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"


def test_live_preview_only_with_the_secret_and_the_token_only_where_used() -> None:
    job = JOBS["infra-review"]
    assert job["env"] == {"LIVE_PREVIEW": "${{ secrets.PULUMI_ACCESS_TOKEN != '' }}"}
    previews = [s for s in job["steps"] if s.get("uses") == actions.PULUMI.uses]
    for preview in previews:
        assert preview["if"] == "env.LIVE_PREVIEW == 'true'"
        assert preview["with"]["command"] == "preview" and preview["with"]["diff"] is True
        assert preview["with"]["pulumi-version"] == pulumi_version()
        assert re.fullmatch(r"3\.\d+\.\d+", pulumi_version())
    holders = [s["name"] for s in job["steps"] if "PULUMI_ACCESS_TOKEN" in str(s.get("env", ""))]
    assert holders == [p["name"] for p in previews]
    comment = next(s for s in job["steps"] if s.get("uses") == actions.STICKY_COMMENT.uses)
    assert comment["with"] == {"header": "infra-review", "path": "infra-review.md"}
    assert "head.repo.full_name == github.repository" in comment["if"]  # forks: summary only


def test_tests_run_on_github_for_infra_changes_and_on_main_or_label() -> None:
    infra, integration = JOBS["infra-tests"], JOBS["integration-tests"]
    assert infra["if"] == "needs.changes.outputs.infra == 'true'"
    assert "pytest tests/infra" in infra["steps"][-1]["run"]
    assert "-n auto" in infra["steps"][-1]["run"]
    assert "refs/heads/main" in integration["if"]
    assert f"labels.*.name, '{INTEGRATION_LABEL}')" in integration["if"]
    assert "pytest tests/integration" in integration["steps"][-1]["run"]
    assert "labeled" in DATA["on"]["pull_request"]["types"]
    for job in (infra, integration):
        assert job["permissions"] == {"contents": "read"}
        assert any("bash scripts/setup.sh" in s.get("run", "") for s in job["steps"])


def test_release_report_runs_after_every_stage_on_every_run() -> None:
    job = JOBS["release-report"]
    assert job["if"] == "always()"
    assert job["needs"] == [stage.id for stage in DEFINITION.stages]
    download = next(s for s in job["steps"] if s.get("uses") == actions.DOWNLOAD_ARTIFACT.uses)
    assert "name" not in download["with"]  # every artifact of the run
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert '--summary "$GITHUB_STEP_SUMMARY"' in runs and "mlcicd report --reports" in runs
    comment = next(s for s in job["steps"] if s.get("uses") == actions.STICKY_COMMENT.uses)
    assert comment["with"] == {"header": "release-report", "path": "release-report/report.md"}
    upload = [s for s in job["steps"] if s.get("uses") == actions.UPLOAD_ARTIFACT.uses]
    assert upload[0]["with"]["name"] == "release-report"
    kept = {
        s["with"]["name"]
        for j in JOBS.values()
        for s in j["steps"]
        if s.get("uses") == actions.UPLOAD_ARTIFACT.uses
    }
    assert {"gate-reports", "release", "canary", "release-report"} <= kept


def test_build_uses_a_registry_layer_cache_and_passes_the_commit() -> None:
    build = next(s for s in JOBS["build"]["steps"] if s.get("id") == "build")["with"]
    assert build["cache-from"].startswith("type=registry,ref=")
    assert build["cache-to"].startswith("type=registry,ref=") and "mode=max" in build["cache-to"]
    assert build["build-args"] == "GIT_SHA=${{ github.sha }}"
    register = next(s for s in JOBS["build"]["steps"] if "registry register" in s.get("run", ""))
    assert register["run"].rstrip().endswith("--out gate-reports")


def test_every_cache_restores_an_older_one() -> None:
    caches = [
        s["with"] for j in JOBS.values() for s in j["steps"] if s.get("uses") == actions.CACHE.uses
    ]
    assert {c["path"] for c in caches} >= {"~/.cache/pip", "~/.cache/mlcicd\n~/.cache/huggingface"}
    for cache in caches:
        assert cache["key"].startswith(cache["restore-keys"]) and cache["restore-keys"].endswith(
            "-"
        )


@pytest.mark.slow
def test_the_infra_review_scripts_render_diff_and_summarise(tmp_path: Path) -> None:
    """The job's own `run:` scripts, in order, in a workspace whose base checkout has
    ``min_success_rate = 0.98`` (the head, this checkout, has 0.99); no secret set; a
    fork PR (#7), so the comment is staged for the relay."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    copy_code(workspace / "base-checkout", min_success_rate="0.98")
    summary, temp = tmp_path / "summary.md", tmp_path / "runner-temp"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "RUNNER_TEMP": str(temp),
        "GITHUB_STEP_SUMMARY": str(summary),
        "LIVE_PREVIEW": "false",
    }
    fork = {"STAGED": str(tmp_path / "staged"), "PR_NUMBER": "7"}
    job = JOBS["infra-review"]
    for step in job["steps"]:
        if "run" in step and "bash scripts/setup.sh" not in step["run"]:
            step_env = {k: fork.get(k, "") for k in step.get("env", {})}
            done = subprocess.run(
                ["bash", "-eo", "pipefail", "-c", step["run"]],
                cwd=workspace, env={**env, **step_env},
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            assert done.returncode == 0, (step["name"], done.stdout, done.stderr)
    comment = (workspace / "infra-review.md").read_text()
    assert comment.startswith("### Infra diff: base to head, both stacks")
    assert "~ prod: AnalysisTemplate/inference-analysis-template" in comment
    assert "+   spec.metrics[success-rate].successCondition: " in comment
    assert "result[0] >= 0.99" in comment and "```diff" in comment
    assert "image" not in comment.split("```diff")[1].lower()  # same tag for base and head
    assert "Not run: no PULUMI_ACCESS_TOKEN secret here" in comment
    assert summary.read_text() == comment
    assert (tmp_path / "staged" / "comment.md").read_text() == comment
    assert (tmp_path / "staged" / "pr-number").read_text() == "7\n"
