"""After a run: `mlcicd status` and `mlcicd registry show` read the local state directly.

The state is written as `mlcicd run` writes it (the registry client on the
state's sqlite store, a run's run.json), then both commands run as real
processes with no tracking server and no MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.definition import load_definition
from pipeline.registry.client import ModelRegistry
from pipeline.registry.lineage import build_lineage
from pipeline.source import REPO_ROOT

pytestmark = pytest.mark.slow


def _mlcicd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", "mlcicd", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_status_shows_the_champion_who_promoted_and_the_failed_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the sqlite store's artifacts land here
    state = tmp_path / "state"
    db = state / "state" / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"w")
    registry = ModelRegistry(f"sqlite:///{db}", load_definition().pipeline.registered_model)

    def register(sha: str) -> str:
        lineage = build_lineage(
            model=str(model_dir), model_dir=model_dir, git_sha=sha * 40, git_branch="main",
            image="127.0.0.1:5000/mlcicd/inference-bundle:x", image_digest="sha256:" + sha * 64,
            pipeline_run_id=f"run-{sha}",
        )  # fmt: skip
        return registry.register(lineage).version

    first = register("1")
    registry.promote(first, "alice", "canary analysis successful (run run-1)")
    second = register("2")
    registry.reject(second, "bob", "canary failed (run run-2)")
    run = state / "runs" / "20260101T000000Z-22222222"
    run.mkdir(parents=True)
    report = {"run_id": run.name, "outcome": "rolled back: canary failed", "seconds": 171.0}
    (run / "run.json").write_text(json.dumps(report))

    done = _mlcicd("status", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"champion: v{first} (mlcicd-llm)" in out
    assert "image sha256:" + "1" * 64 in out
    assert f"promote v{first} by alice: canary analysis successful" in out
    assert f"reject v{second} by bob: canary failed (run run-2)" in out
    assert "run in progress: none" in out
    assert f"{run.name}: rolled back: canary failed in 171s" in out

    shown = _mlcicd("registry", "show", "--state-dir", str(state), "--json")
    assert shown.returncode == 0, shown.stderr
    assert "reading the local pipeline state" in shown.stderr
    data = json.loads(shown.stdout)
    assert data["aliases"]["champion"] == first
    rejected = next(v for v in data["versions"] if v["version"] == second)
    assert rejected["tags"]["mlcicd.rejected_by"] == "bob"
