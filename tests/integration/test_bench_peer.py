"""The peer column's moving parts on the built-in tiny model: conversion, timing, failure.

What this proves, in seconds rather than the quick bench's minutes: CTranslate2
converts the very directory our server loads (once; the second call reuses it),
``run_peer`` times it in a fresh interpreter at the batch sizes asked for and
returns figures that add up (the fastest of several processes, when asked), and
a machine without the optional extra gets cells that say why instead of an
exception.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pipeline.bench.peer as peer

pytestmark = pytest.mark.slow


def test_conversion_is_cached_by_content_and_keeps_a_bos_token() -> None:
    pytest.importorskip("ctranslate2", reason="the optional peer extra is not installed")
    first = peer.converted_model("builtin", "int8")
    assert (first / "model.bin").is_file()
    assert json.loads((first / "config.json").read_text())["bos_token"]
    mtime = (first / "model.bin").stat().st_mtime_ns
    assert peer.converted_model("builtin", "int8") == first
    assert (first / "model.bin").stat().st_mtime_ns == mtime  # reused, not converted again


@pytest.mark.timeout(180)
def test_run_peer_times_each_batch_in_a_fresh_interpreter() -> None:
    pytest.importorskip("ctranslate2", reason="the optional peer extra is not installed")
    cells = peer.run_peer(
        "builtin", "float32", [2, 1], max_new_tokens=6, repeats=1, threads=1, budget_s=60
    )
    assert [c.batch for c in cells] == [1, 2]
    for cell in cells:
        assert cell.measured, cell.skipped
        assert cell.quantization == "float32" and cell.threads == 1 and cell.runs == 1
        assert cell.tokens_per_s > 0 and cell.step_ms > 0 and cell.first_token_ms > 0


@pytest.mark.timeout(240)
def test_run_peer_keeps_the_fastest_of_several_processes() -> None:
    pytest.importorskip("ctranslate2", reason="the optional peer extra is not installed")
    cells = peer.run_peer("builtin", "float32", [1], 6, 1, 1, 60, processes=2)
    (cell,) = cells
    assert cell.measured and len(cell.process_tokens_per_s) == 2
    assert cell.tokens_per_s == max(cell.process_tokens_per_s)


def test_without_the_extra_every_cell_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer, "peer_version", lambda: None)
    cells = peer.run_peer("builtin", "int8", [1, 4], 8, 1, 1, 60)
    assert [c.batch for c in cells] == [1, 4]
    assert all(not c.measured and "not installed" in (c.skipped or "") for c in cells)


def test_a_failing_peer_process_becomes_skipped_cells(tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2", reason="the optional peer extra is not installed")
    cells = peer.run_peer(str(tmp_path / "no-such-model"), "int8", [1], 8, 1, 1, 60)
    assert cells[0].skipped is not None and cells[0].skipped.startswith("failed (exit")
