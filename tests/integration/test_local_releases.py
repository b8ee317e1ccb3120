"""A team's releases through one state directory, beside a champion: `mlcicd run` end to end.

In a file of its own so that ``scripts/test.sh`` (``--dist loadfile``, two workers)
runs it beside test_local_pipeline.py: it is the longest test, and the runs spend
most of their time in canary pauses.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.fixtures.local_run import newest_run, run_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


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
    code, report, output = run_pipeline(state, *common, timeout_s=600)
    assert code == 0 and report["outcome"] == "promoted v1 to champion", output

    v2 = _model_copy(builtin_model_dir, tmp_path / "v2", "v2")
    code, report, output = run_pipeline(state, *common, "--model", str(v2), timeout_s=600)
    assert code == 0 and report["outcome"] == "promoted v2 to champion", (report, output)
    facts = report["facts"]
    assert f"stable serves model {facts['model served by stable']}" in output
    assert f"canary serves model {facts['model served by canary']}" in output
    assert facts["model served by stable"] != facts["model served by canary"]
    served = _served(newest_run(state))
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
    code, report, output = run_pipeline(
        state, *common, "--model", str(v3), "--canary-fault", "errors", timeout_s=600
    )
    assert code == 1 and "canary failed" in report["outcome"], (report, output)
    assert report["facts"]["model served by stable"] == facts["model served by canary"]
    failed = [s for s in report["steps"] if " analysis" in s["name"] and s["status"] == "failed"]
    # Rejected for its errors (the comparison or the ceiling), never for its latency.
    assert failed and re.search(r"error-rate(-vs-stable)? \S+ Failed", failed[-1]["detail"])
    assert not re.search(r"latency\S* \S+ Failed", failed[-1]["detail"]), failed
    assert "stable serves model" in output and "canary serves model" in output
