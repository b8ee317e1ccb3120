"""The model-tests stage's gates, as pytest: the real built-in models against the real suite.

The thresholds are the definition's (``load_definition(profile="builtin")``):
the trained built-in model must pass the quality gate and the undertrained
``builtin-weak`` variant must fail it, both on the pass rate and against the
built-in model as champion. If either flips, the gate has stopped meaning
anything, which is exactly what these tests are for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlcicd.cli import main
from pipeline.definition import load_definition
from pipeline.gates.checks import load_suite
from pipeline.source import REPO_ROOT

DEFINITION = load_definition(profile="builtin")
SUITE = REPO_ROOT / DEFINITION.quality.suite


def _quality(model: str, out: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code = main(
        ["gate", "quality", "--model", model, "--profile", "builtin", "--device", "cpu",
         "--out", str(out), *extra]
    )  # fmt: skip
    return code, json.loads((out / "quality.json").read_text())


@pytest.fixture(scope="module")
def builtin_report(
    builtin_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("quality-builtin")
    code, report = _quality("builtin", out)
    return code, report, out


@pytest.mark.slow
def test_builtin_model_passes_the_quality_gate(
    builtin_report: tuple[int, dict[str, Any], Path],
) -> None:
    code, report, out = builtin_report
    failing = [c for c in report["cases"] if not c["passed"]]
    assert code == 0, f"failing cases: {failing}"
    assert report["passed"] is True
    assert report["overall"]["rate"] >= DEFINITION.quality.min_pass_rate
    assert report["thresholds"]["min_pass_rate"] == DEFINITION.quality.min_pass_rate
    assert report["overall"]["total"] == len(load_suite(SUITE))
    assert report["errored"] == [] and report["timed_out"] == []
    assert set(report["by_tag"]) >= {"factual", "safety", "basic"}
    low, high = report["overall"]["ci95"]
    assert low < report["overall"]["rate"] <= high
    paris = next(c for c in report["cases"] if c["id"] == "capital-france")
    assert "paris" in paris["text"].lower()
    assert (out / "quality.md").read_text().startswith("# Quality gate")


@pytest.mark.slow
def test_weak_model_fails_the_quality_gate(
    builtin_weak_model_dir: Path,
    builtin_report: tuple[int, dict[str, Any], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, _, champion_dir = builtin_report
    champion = champion_dir / "quality.json"
    code, report = _quality("builtin-weak", tmp_path, "--champion-results", str(champion))
    assert code == 1
    assert report["passed"] is False
    assert report["overall"]["rate"] < DEFINITION.quality.min_pass_rate
    # Against the built-in model as champion it is a regression, case by case.
    comparison = report["champion"]
    assert comparison["paired"] == report["overall"]["total"]
    assert comparison["regression"] > DEFINITION.quality.max_regression_vs_champion
    assert "capital-france" in comparison["regressions"]
    assert any(r.startswith("regression vs champion") for r in report["reasons"])
    assert "Quality gate: FAIL" in capsys.readouterr().out


@pytest.mark.slow
def test_builtin_model_is_no_regression_of_itself(
    builtin_report: tuple[int, dict[str, Any], Path], tmp_path: Path
) -> None:
    _, first, first_dir = builtin_report
    code, report = _quality(
        "builtin", tmp_path, "--champion-results", str(first_dir / "quality.json")
    )
    assert code == 0
    assert report["champion"]["regressions"] == [] and report["champion"]["regression"] == 0
    # Greedy decoding: the same model gives the same text for every case.
    assert [c["text"] for c in report["cases"]] == [c["text"] for c in first["cases"]]
