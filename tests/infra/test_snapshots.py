"""Snapshots pin each rendering, so a change to the workflow or the canary analysis is a
reviewed diff. After an intended change (e.g. to pipeline.toml) regenerate with:

    MLCICD_UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/infra/test_snapshots.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from infra.analysis import analysis_template, rollout_steps
from infra.monitoring import PROMETHEUS_URL
from infra.workflow import RunnerSpec, render_workflow
from infra.workflow_comment import render_comment_workflow
from pipeline.definition import load_definition

SNAPSHOTS = Path(__file__).parent / "snapshots"
RUNNERS = {"gpu": RunnerSpec("gpu", 60), "cpu": RunnerSpec("cpu", 30)}


def _renderings() -> dict[str, str]:
    out = {
        "ml-cicd.yml": render_workflow(load_definition("gpu"), RUNNERS),
        "ml-cicd-comment.yml": render_comment_workflow(load_definition("gpu")),
    }
    for environment in ("staging", "prod"):
        definition = load_definition("gpu", environment)
        canary = {
            "analysisTemplate": analysis_template(definition, PROMETHEUS_URL, "mlcicd"),
            "steps": rollout_steps(definition, "inference-server", "mlcicd"),
        }
        out[f"canary-{environment}.yaml"] = yaml.safe_dump(canary, sort_keys=False)
    return out


@pytest.mark.parametrize("name", sorted(_renderings()))
def test_rendering_matches_snapshot(name: str) -> None:
    text = _renderings()[name]
    path = SNAPSHOTS / name
    if os.environ.get("MLCICD_UPDATE_SNAPSHOTS") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with MLCICD_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text(), (
        f"{name} changed; review the diff and regenerate with MLCICD_UPDATE_SNAPSHOTS=1"
    )
