"""The gate calibration's bookkeeping: what counts as wrong, and the interval it reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcicd.cli import main
from pipeline.gates.calibrate import VARIANTS, Tally, markdown


def test_a_good_release_rejected_is_a_false_reject_and_a_bad_one_accepted_a_false_accept() -> None:
    good = Tally("good", "hog", bad=False)
    for failed in ([], ["latency"], []):
        good.record(failed)
    assert (good.runs, good.rejected, good.wrong) == (3, 1, 1)
    bad = Tally("errors-5pct", "quiet", bad=True)
    for failed in (["latency"], ["quality", "latency"], []):
        bad.record(failed)
    assert bad.wrong == 1 and bad.rejected_by == {"latency": 2, "quality": 1}
    cell = bad.to_json()
    assert cell["kind"] == "false accept" and cell["rate"] == pytest.approx(1 / 3)
    assert 0 < cell["ci95"][0] < 1 / 3 < cell["ci95"][1] < 1


def test_zero_of_twenty_still_has_an_upper_bound() -> None:
    tally = Tally("good", "hog", bad=False)
    for _ in range(20):
        tally.record([])
    cell = tally.to_json()
    assert cell["wrong"] == 0 and cell["ci95"][0] == 0.0
    assert cell["ci95"][1] == pytest.approx(0.161, abs=1e-3)  # Wilson 95 % for 0/20
    table = markdown({"cells": [cell]})
    assert "| good | hog | false reject | 0 / 20 | 0% | 0%-16% | - |" in table


def test_every_bad_release_is_one_the_gates_exist_to_stop() -> None:
    assert not VARIANTS["good"].bad
    assert {name for name, v in VARIANTS.items() if v.bad} == {
        "latency-300ms",
        "errors-5pct",
        "weak",
    }
    assert VARIANTS["weak"].model == "builtin-weak"


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--out", str(tmp_path)]
    assert main(["gate", "calibrate", "--variants", "nope", *out]) == 2
    assert "unknown nope" in capsys.readouterr().err
    assert main(["gate", "calibrate", "--runs", "0", *out]) == 2
