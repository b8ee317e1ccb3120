"""The paired one-client phase on the built-in tiny model: real server, real peer processes.

What this proves: ``measure_paired`` runs the peer's paired-mode interpreters
(``python -m pipeline.bench.paired``) beside a running ``mlcicd serve``, takes
each round's figures from both, combines them as the target reads them (median
of the rounds' ratios), and leaves no peer process behind. A failure on either
side becomes a skipped cell that says which side and why, not an exception.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import psutil
import pytest

from pipeline.bench.paired import PairingError, _PeerProcess, measure_paired
from pipeline.bench.runner import running_server
from pipeline.definition import Bench, load_definition

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _bench(**update: int) -> Bench:
    bench = load_definition("cpu").bench
    assert bench is not None
    shape = {"paired_rounds": 3, "paired_requests": 2, "peer_processes": 2, "max_new_tokens": 6}
    return bench.model_copy(update={**shape, **update})


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_rounds_time_our_server_and_the_fastest_peer_in_turns(tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2", reason="the optional peer extra is not installed")
    bench = _bench()
    said: list[str] = []
    with running_server("ours", "builtin", tmp_path, ready_timeout_s=120) as (url, _):
        before = _children()
        cell = measure_paired("builtin", url, bench, threads=1, progress=said.append)
        assert _children() <= before  # every peer process was stopped
    assert cell.measured, cell.skipped
    assert len(cell.rounds) == 3 and cell.requests_per_round == 2 and cell.peer_processes == 2
    for one in cell.rounds:
        assert one.ours_itl_ms > 0 and one.peer_step_ms > 0
    ratios = [r.ours_itl_ms / r.peer_step_ms for r in cell.rounds]
    assert cell.ratio == pytest.approx(statistics.median(ratios), rel=1e-3)
    assert cell.ours_itl_ms == pytest.approx(statistics.median(r.ours_itl_ms for r in cell.rounds))
    assert [m.split(":")[0] for m in said] == [f"[builtin/paired] round {i}/3" for i in (1, 2, 3)]


def test_a_peer_that_cannot_start_is_a_skipped_cell_naming_why() -> None:
    pytest.importorskip("ctranslate2", reason="the optional peer extra is not installed")
    before = _children()
    cell = measure_paired("no-such-model", "http://127.0.0.1:1", _bench(), 1, lambda _: None)
    assert not cell.measured
    assert cell.skipped is not None and cell.skipped.startswith("failed: a peer process failed")
    assert "no-such-model" in cell.skipped  # the child's own last error line
    assert _children() <= before


def test_a_server_that_does_not_answer_is_a_skipped_cell_naming_it() -> None:
    pytest.importorskip("ctranslate2", reason="the optional peer extra is not installed")
    cell = measure_paired("builtin", "http://127.0.0.1:1", _bench(), 1, lambda _: None)
    assert cell.skipped is not None
    assert cell.skipped.startswith("failed: our server answered 0 of 2 requests")


def test_a_peer_answer_that_is_not_gaps_is_a_pairing_error(tmp_path: Path) -> None:
    """No traceback from a garbled answer: the phase turns it into a skipped cell."""
    child = "print('ready', flush=True)\nimport sys\nfor _ in sys.stdin: print('oops', flush=True)"
    peer = _PeerProcess([sys.executable, "-c", child], tmp_path / "peer.err")
    try:
        peer.wait_ready()
        with pytest.raises(PairingError, match="answered 'oops'"):
            peer.step_ms()
    finally:
        peer.close()
