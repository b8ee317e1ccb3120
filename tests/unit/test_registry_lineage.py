"""Lineage without a server: gate result files -> metric rows -> version tags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.loader import directory_content_hash
from pipeline.definition import load_definition
from pipeline.registry.lineage import (
    GateMetric,
    Lineage,
    LineageError,
    ModelSource,
    read_metrics_file,
    resolve_model_source,
)


def write(tmp_path: Path, data: object, name: str = "m.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_quality_gate_result_gives_pass_rate_and_regression(tmp_path: Path) -> None:
    quality = load_definition("builtin").quality
    thresholds = {
        "min_pass_rate": quality.min_pass_rate,
        "max_regression_vs_champion": quality.max_regression_vs_champion,
    }
    data = {
        "format": "mlcicd.quality/v1",
        "passed": True,
        "thresholds": thresholds,
        "overall": {"passed": 29, "total": 30, "rate": 29 / 30},
        "champion": {"regression": 0.0},
        "cases": [],
    }
    gate, rows = read_metrics_file(write(tmp_path, data))
    assert gate == "quality"
    assert rows == [
        GateMetric("quality", "pass_rate", 29 / 30, quality.min_pass_rate, ">=",
                   quality.min_pass_rate <= 29 / 30),
        GateMetric("quality", "regression_vs_champion", 0.0,
                   quality.max_regression_vs_champion, "<=", True),
    ]  # fmt: skip


def test_latency_gate_result_skips_unmeasured_rows(tmp_path: Path) -> None:
    latency = load_definition("builtin").latency
    data = {
        "format": "mlcicd.latency/v1",
        "thresholds": [
            {"name": "ttft_p99_ms", "measured": 12.5, "threshold": latency.max_ttft_p99_ms,
             "unit": "ms", "passed": True},
            {"name": "e2e_mean_ms", "measured": None, "threshold": latency.max_e2e_mean_ms,
             "unit": "ms", "passed": False},
        ],
    }  # fmt: skip
    gate, rows = read_metrics_file(write(tmp_path, data))
    assert gate == "latency"
    assert rows == [GateMetric("latency", "ttft_p99_ms", 12.5, latency.max_ttft_p99_ms, "<=", True)]


def test_flat_metrics_and_errors_name_the_key(tmp_path: Path) -> None:
    gate, rows = read_metrics_file(write(tmp_path, {"accuracy": 0.9, "loss": {"value": 1}}))
    assert gate == "metrics" and [r.key for r in rows] == ["metrics.accuracy", "metrics.loss"]
    with pytest.raises(LineageError, match=r"metrics\.accuracy"):
        read_metrics_file(write(tmp_path, {"accuracy": "high"}))
    with pytest.raises(LineageError, match="not readable JSON"):
        (tmp_path / "bad.json").write_text("{")
        read_metrics_file(tmp_path / "bad.json")
    with pytest.raises(LineageError, match="not found"):
        read_metrics_file(tmp_path / "missing.json")
    with pytest.raises(LineageError, match=r"overall\.rate"):
        read_metrics_file(write(tmp_path, {"format": "mlcicd.quality/v1", "overall": {}}))


def test_tags_carry_every_fact_and_threshold() -> None:
    lineage = Lineage(
        git_sha="abc",
        git_branch="main",
        model=ModelSource("huggingface", "org/model", "0123abcd"),
        image="ghcr.io/o/i:abc",
        image_digest="sha256:ff",
        pipeline_run_id="42",
        metrics=(GateMetric("quality", "pass_rate", 0.5, 0.95, ">=", False),),
    )
    tags = lineage.tags()
    assert tags["mlcicd.model_ref"] == "org/model"
    assert tags["mlcicd.model_revision"] == "0123abcd"
    assert tags["mlcicd.image_digest"] == "sha256:ff"
    assert tags["mlcicd.gate.quality.pass_rate"] == "0.5"
    assert tags["mlcicd.gate.quality.pass_rate.threshold"] == ">= 0.95"
    assert tags["mlcicd.gate.quality.pass_rate.passed"] == "false"
    assert "mlcicd.git_dirty" not in tags


def test_model_sources(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    local = resolve_model_source(str(tmp_path))
    assert local.kind == "local" and local.revision == directory_content_hash(tmp_path)
    named = resolve_model_source("builtin", model_dir=tmp_path)
    assert named.kind == "builtin" and named.directory == tmp_path
    assert resolve_model_source("org/m", "c0ffee").revision == "c0ffee"
    with pytest.raises(LineageError, match="--model-revision"):
        resolve_model_source("org/m")
    with pytest.raises(LineageError, match="not a model directory"):
        resolve_model_source(str(tmp_path / "nope"))
