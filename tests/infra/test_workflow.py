"""The rendered GitHub workflow: structure from the definition, security, real linters."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import workflow_actions
from infra.config import scale_set_name
from infra.workflow import (
    RunnerSpec,
    pull_request_checks,
    render_actionlint_config,
    render_workflow,
    workflow,
)
from pipeline.definition import load_definition

VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
RUNNERS = {"gpu": RunnerSpec("gpu", 60), "cpu": RunnerSpec("cpu", 30)}
DEFINITION = load_definition("gpu")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wf")
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "ml-cicd.yml").write_text(
        render_workflow(DEFINITION, RUNNERS)
    )
    (root / ".github" / "actionlint.yaml").write_text(render_actionlint_config(DEFINITION, RUNNERS))
    return root


def _jobs() -> dict[str, Any]:
    jobs: dict[str, Any] = workflow(DEFINITION, RUNNERS)["jobs"]
    return jobs


def _runs() -> list[str]:
    return [step["run"] for job in _jobs().values() for step in job["steps"] if "run" in step]


def test_one_job_per_stage_with_its_needs_and_runner() -> None:
    jobs = _jobs()
    for stage in DEFINITION.stages:
        job = jobs[stage.id]
        assert set(stage.needs) <= set(job.get("needs", []))
        environment = stage.environment or "staging"
        assert job["runs-on"] == scale_set_name(environment, stage.runner)
        assert job["timeout-minutes"] == RUNNERS[stage.runner].timeout_minutes
        names = [s["name"] for s in job["steps"]]
        for command in stage.commands:
            assert command.name in names


def test_gate_steps_show_the_definitions_thresholds() -> None:
    names = [s["name"] for job in _jobs().values() for s in job["steps"]]
    q, lat, can = DEFINITION.quality, DEFINITION.latency, DEFINITION.canary
    assert any(n.startswith(f"Quality gate (pass rate >= {q.min_pass_rate}") for n in names)
    assert any(f"TTFT p99 <= {lat.max_ttft_p99_ms} ms" in n for n in names)
    assert any(f"success >= {can.min_success_rate}" in n for n in names)
    runs = "\n".join(_runs())
    for command in (
        "mlcicd gate quality",
        "mlcicd gate latency",
        "mlcicd registry register",
        "mlcicd canary analyze",
        "mlcicd deploy",
    ):
        assert command in runs
    # Thresholds are never passed on a command line: the gates read the definition.
    assert str(q.min_pass_rate) not in runs and str(lat.max_ttft_p99_ms) not in runs


def test_security_posture() -> None:
    data = workflow(DEFINITION, RUNNERS)
    assert data["permissions"] == {}
    assert "group" in data["concurrency"]
    for job_id, job in data["jobs"].items():
        assert "permissions" in job, job_id
        assert set(job["permissions"].values()) <= {"read", "write"}
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), (job_id, step["name"])
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
    writers = {
        j: sorted(k for k, v in job["permissions"].items() if v == "write")
        for j, job in data["jobs"].items()
        if "write" in job["permissions"].values()
    }
    assert writers == {
        "build": ["packages"],
        "infra-review": ["pull-requests"],
        "release-report": ["pull-requests"],
    }


def test_versions_are_annotated() -> None:
    text = render_workflow(DEFINITION, RUNNERS)
    for line in text.splitlines():
        if "uses:" in line:
            assert re.search(r"@[0-9a-f]{40} # v\d", line), line
    used = {a.repo for a in workflow_actions.ALL if a.uses in text}
    assert {"actions/checkout", "actions/cache"} <= used


def test_production_only_from_main_in_the_production_environment() -> None:
    jobs = _jobs()
    prod = jobs["deploy-production"]
    assert prod["environment"] == "production"
    assert "refs/heads/main" in prod["if"] and "pull_request" in prod["if"]
    assert jobs["deploy-staging"]["environment"] == "staging"


def test_gpu_job_runs_on_model_changes_or_main_with_caches() -> None:
    job = _jobs()["model-tests"]
    assert "changes" in job["needs"]
    assert "needs.changes.outputs.model == 'true'" in job["if"]
    assert "refs/heads/main" in job["if"]
    cached = [
        s["with"]["path"] for s in job["steps"] if s.get("uses") == workflow_actions.CACHE.uses
    ]
    assert any("~/.cache/huggingface" in p and "~/.cache/mlcicd" in p for p in cached)
    assert any(p == "~/.cache/pip" for p in cached)


def test_build_outputs_image_and_digest() -> None:
    job = _jobs()["build"]
    assert set(job["outputs"]) == {"image", "digest"}
    build = next(s for s in job["steps"] if s.get("id") == "build")
    assert "${{ github.sha }}" in build["with"]["tags"]


def test_required_checks_are_the_pull_request_jobs() -> None:
    assert pull_request_checks(DEFINITION) == ("code-quality", "model-tests")


def test_actionlint_passes(rendered: Path) -> None:
    assert shutil.which("shellcheck"), "actionlint runs shellcheck on run: steps"
    done = subprocess.run(
        [
            str(VENV_BIN / "actionlint"),
            "-config-file",
            ".github/actionlint.yaml",
            ".github/workflows/ml-cicd.yml",
        ],
        cwd=rendered,
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
            str(rendered / ".github" / "workflows" / "ml-cicd.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_run_scripts_pass_shellcheck(tmp_path: Path) -> None:
    scripts = []
    for index, run in enumerate(_runs()):
        path = tmp_path / f"step{index}.sh"
        path.write_text("#!/usr/bin/env bash\nset -eo pipefail\n" + run)
        scripts.append(str(path))
    done = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_rendering_is_stable_yaml() -> None:
    text = render_workflow(DEFINITION, RUNNERS)
    assert text == render_workflow(DEFINITION, RUNNERS)
    assert yaml.safe_load(text)["name"] == DEFINITION.pipeline.name


def _mlcicd_lines() -> list[str]:
    lines = []
    for run in _runs():
        lines += [line.strip() for line in run.splitlines() if line.strip().startswith("mlcicd ")]
    # Shell around the command (redirections, `|| code=$?`) is not the CLI's.
    return [re.split(r"\s+(?:>|\|\|)\s", line)[0] for line in lines]


def test_mlcicd_commands_in_the_workflow_parse_with_the_real_cli() -> None:
    """Guards drift between the workflow and the CLI's flags: every command, deploy
    included, must parse exactly as the workflow calls it."""
    import shlex

    from mlcicd.cli import build_parser

    parser = build_parser()
    checked = []
    for line in _mlcicd_lines():
        line = line.replace('"${champion[@]}"', "--champion-results c.json")
        argv = shlex.split(re.sub(r'"[^"]*\$[^"]*"', "X", line))[1:]
        args = parser.parse_args(argv)
        assert callable(args.handler), line
        checked.append(" ".join(argv[:2]))
    assert {
        "deploy set-image",
        "deploy wait",
        "canary analyze",
        "rollback --rollout",
        "infra render",
        "infra diff",
        "report --reports",
    } <= set(checked)
