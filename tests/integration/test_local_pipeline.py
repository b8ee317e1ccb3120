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
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


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


def test_a_failed_promote_after_a_healthy_canary_keeps_it_serving_and_says_so(
    tmp_path: Path,
) -> None:
    """The registry is unreachable at promote: the release is reported as not promoted,
    traffic stays on the healthy canary, and nothing is rolled back. (The gates are
    skipped: they are the two tests above; this one is about the release flow.)"""
    code, report, output = _run(tmp_path, "--skip", "model-tests", "--promote-fault")
    assert code == 1, output
    steps = _steps(report)
    analyses = [status for name, status in steps.items() if " analysis" in name]
    assert analyses and set(analyses) == {"passed"}, (steps, output)
    promote = [status for name, status in steps.items() if name.startswith("Promote")]
    assert promote == ["failed"]
    assert report["outcome"].startswith("failed: not promoted: v1 is healthy and serves all")
    assert "rolled back" not in report["outcome"] and "no rollback" in report["outcome"]
    served = report["facts"]["model served by canary"]
    assert served == report["facts"]["model served by staging"]  # the registered revision


def _model_copy(source: Path, dest: Path, note: str) -> Path:
    """The built-in model's weights under another content hash: a new release, same model."""
    shutil.copytree(source, dest)
    (dest / "RELEASE_NOTE.txt").write_text(note + "\n")
    return dest


def _served(run_dir: Path) -> dict[int, dict[str, int]]:
    """Step weight -> requests nginx served each server during that step's pause."""
    served = {}
    for path in sorted((run_dir / "reports").glob("canary-step-*-w*/traffic.json")):
        served[int(path.parent.name.rsplit("-w", 1)[1])] = json.loads(path.read_text())
    return served


@pytest.mark.timeout(1500)
def test_beside_a_champion_a_good_canary_is_promoted_and_an_erroring_one_refused(
    tmp_path: Path, builtin_model_dir: Path
) -> None:
    """Three releases through one state dir, as a team's would flow:

    v1 (no champion) is promoted alone; v2, the same weights under a new hash, is
    canaried beside v1 and promoted, with each step's traffic split by its weight (and
    the baseline, a second champion process, at the canary's share); v3 serves 5 %
    errors beside v2 and is refused for its errors (compared with the baseline, or by the
    error ceiling), not for its latency.
    Each run prints the model revision the stable and the canary serve.
    """
    state = tmp_path / "state"
    common = ("--skip", "model-tests", "--profile", "builtin")
    code, report, output = _run(state, *common, timeout_s=600)
    assert code == 0 and report["outcome"] == "promoted v1 to champion", output

    v2 = _model_copy(builtin_model_dir, tmp_path / "v2", "v2")
    code, report, output = _run(state, *common, "--model", str(v2), timeout_s=600)
    assert code == 0 and report["outcome"] == "promoted v2 to champion", (report, output)
    facts = report["facts"]
    assert f"stable serves model {facts['model served by stable']}" in output
    assert f"canary serves model {facts['model served by canary']}" in output
    assert facts["model served by stable"] != facts["model served by canary"]
    served = _served(sorted((state / "runs").iterdir())[-1])
    assert sorted(served) == [10, 30, 50], served
    for weight, counts in served.items():
        total = sum(counts.values())
        # nginx's weighted round robin: exact shares, give or take the requests in
        # flight at a reload. The baseline (the champion, for comparison) gets the
        # canary's share; the stable the rest.
        assert abs(counts["canary"] / total - weight / 100) < 0.02, (weight, counts)
        assert abs(counts["baseline"] / total - weight / 100) < 0.02, (weight, counts)
        assert counts.get("stable", 0) / total == pytest.approx(1 - 2 * weight / 100, abs=0.02)

    v3 = _model_copy(builtin_model_dir, tmp_path / "v3", "v3")
    code, report, output = _run(
        state, *common, "--model", str(v3), "--canary-fault", "errors", timeout_s=600
    )
    assert code == 1 and "canary failed" in report["outcome"], (report, output)
    assert report["facts"]["model served by stable"] == facts["model served by canary"]
    failed = [s for s in report["steps"] if " analysis" in s["name"] and s["status"] == "failed"]
    # Rejected for its errors (the comparison or the ceiling), never for its latency.
    assert failed and re.search(r"error-rate(-vs-stable)? \S+ Failed", failed[-1]["detail"])
    assert not re.search(r"latency\S* \S+ Failed", failed[-1]["detail"]), failed
    assert "stable serves model" in output and "canary serves model" in output
