"""`mlcicd run` end to end, against the real local services it starts.

Two releases the pipeline must stop, each at the gate that is there to stop it:

- the weak built-in variant fails the quality gate, so nothing is built, pushed
  or registered;
- a release whose canary serves 5% errors passes every gate, is built, pushed
  to the OCI registry, registered in MLflow and served in staging, and then
  canary analysis in Prometheus fails it: it is never promoted.

The stages' shell commands (ruff, mypy, the unit and inference tests) are this
very suite, so the runs here pass ``--skip-commands``; every gate and action runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def _run(state: Path, *args: str, timeout_s: float = 420) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-m", "mlcicd.cli", "run", "--skip", "code-quality",
         "--skip-commands", "--state-dir", str(state), *args],
        capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
    runs = sorted((state / "runs").iterdir())
    report = json.loads((runs[-1] / "run.json").read_text())
    return done.returncode, report, done.stderr


def _release_report(state: Path) -> str:
    run_dir = sorted((state / "runs").iterdir())[-1]
    assert (run_dir / "report.html").read_text().startswith("<!DOCTYPE html>")
    return (run_dir / "report.md").read_text()


def _steps(report: dict[str, Any]) -> dict[str, str]:
    return {step["name"]: step["status"] for step in report["steps"]}


def test_a_weak_model_is_stopped_by_the_quality_gate(tmp_path: Path) -> None:
    code, report, output = _run(tmp_path, "--model", "builtin-weak")
    assert code == 1, output
    steps = _steps(report)
    quality = [name for name in steps if name.startswith("Quality gate")]
    assert quality and steps[quality[0]] == "failed"
    assert not any(name.startswith("Build and push") for name in steps)
    assert not any(name.startswith("Register") for name in steps)
    assert "quality gate failed" in report["outcome"]
    release_report = _release_report(tmp_path)
    assert "## Quality gate — ❌ FAIL" in release_report
    assert "## Latency gate — ⏭️ not run" in release_report


def test_a_canary_serving_errors_is_never_promoted(tmp_path: Path) -> None:
    code, report, output = _run(tmp_path, "--canary-fault", "errors")
    assert code == 1, output
    steps = _steps(report)
    for prefix in (
        "Quality gate",
        "Latency gate",
        "Build and push image",
        "Register model version",
        "Deploy to staging",
        "Staging smoke tests",
        "Deploy stable and canary",
    ):
        matching = [status for name, status in steps.items() if name.startswith(prefix)]
        assert matching == ["passed"], (prefix, steps, output)
    analyses = [status for name, status in steps.items() if " analysis" in name]
    assert analyses and analyses[-1] == "failed"
    assert not any(name.startswith("Promote") for name in steps)
    assert "canary failed" in report["outcome"]
    assert report["facts"]["image"].split("@")[1].startswith("sha256:")
    # The release report (`mlcicd report`, as in CI) holds the gates, the release and
    # the canary's steps, as report.md and a self-contained report.html.
    release_report = _release_report(tmp_path)
    assert "## Quality gate — ✅ PASS" in release_report
    assert "## Canary — ❌ FAIL" in release_report
    assert report["facts"]["image"].split("@")[1] in release_report
    assert "| model version | `mlcicd-llm v" in release_report
    assert "| 1 | 100% | #1 at" in release_report  # first release: all traffic, as in Argo
    # Nothing the run started is left behind.
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout.strip() == ""
