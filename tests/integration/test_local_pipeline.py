"""`mlcicd run` end to end, against the real local services it starts.

Two releases the pipeline must stop, each at the gate that is there to stop it:

- the weak built-in variant fails the quality gate, so nothing is built, pushed
  or registered;
- a release whose canary serves 5% errors passes every gate, is built, pushed
  to the OCI registry, registered in MLflow and served in staging, and then
  canary analysis in Prometheus fails it: it is never promoted.

A third, a healthy canary whose promote fails, is reported as not promoted and
keeps serving. Releases beside a champion are in test_local_releases.py.

The stages' shell commands (ruff, mypy, the unit and inference tests) are this
very suite, so the runs here pass ``--skip-commands``; every gate and action runs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fixtures.local_run import release_report, run_pipeline, step_statuses

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_a_weak_model_is_stopped_by_the_quality_gate(tmp_path: Path) -> None:
    code, report, output = run_pipeline(tmp_path, "--model", "builtin-weak")
    assert code == 1, output
    steps = step_statuses(report)
    quality = [name for name in steps if name.startswith("Quality gate")]
    assert quality and steps[quality[0]] == "failed"
    assert not any(name.startswith("Build and push") for name in steps)
    assert not any(name.startswith("Register") for name in steps)
    assert "quality gate failed" in report["outcome"]
    text = release_report(tmp_path)
    assert "## Quality gate — ❌ FAIL" in text
    assert "## Latency gate — ⏭️ not run" in text


def test_a_canary_serving_errors_is_never_promoted(tmp_path: Path) -> None:
    code, report, output = run_pipeline(tmp_path, "--canary-fault", "errors")
    assert code == 1, output
    steps = step_statuses(report)
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
    text = release_report(tmp_path)
    assert "## Quality gate — ✅ PASS" in text
    assert "## Canary — ❌ FAIL" in text
    assert report["facts"]["image"].split("@")[1] in text
    assert "| model version | `mlcicd-llm v" in text
    assert "| 1 | 100% | #1 at" in text  # first release: all traffic, as in Argo
    # Nothing the run started is left behind.
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout.strip() == ""


def test_a_failed_promote_after_a_healthy_canary_keeps_it_serving_and_says_so(
    tmp_path: Path,
) -> None:
    """The registry is unreachable at promote: the release is reported as not promoted,
    traffic stays on the healthy canary, and nothing is rolled back. (The gates are
    skipped: they are the two tests above; this one is about the release flow.)"""
    code, report, output = run_pipeline(tmp_path, "--skip", "model-tests", "--promote-fault")
    assert code == 1, output
    steps = step_statuses(report)
    analyses = [status for name, status in steps.items() if " analysis" in name]
    assert analyses and set(analyses) == {"passed"}, (steps, output)
    promote = [status for name, status in steps.items() if name.startswith("Promote")]
    assert promote == ["failed"]
    assert report["outcome"].startswith("failed: not promoted: v1 is healthy and serves all")
    assert "rolled back" not in report["outcome"] and "no rollback" in report["outcome"]
    served = report["facts"]["model served by canary"]
    assert served == report["facts"]["model served by staging"]  # the registered revision
