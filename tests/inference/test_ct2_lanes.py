"""The CTranslate2 engine's choice of arrangement (inference/ct2_lanes.py).

The choice is a function of measured rates, so it is tested over rates given
here; that the engine measures them on the real generators at start, and serves
through the lanes it chose, is in test_ct2_engine.py.
"""

from __future__ import annotations

import threading

import pytest

from inference.ct2_lanes import (
    ANSWER_TOKENS,
    PROBE_NEW_TOKENS,
    PROBE_REPEATS,
    Arrangement,
    choose_arrangement,
    measure_rates,
    summarise,
    time_wave,
)


def rates(solo: dict[int, float], lanes: dict[int, float]) -> dict[str, float]:
    return {
        **{f"solo@{rows}": rate for rows, rate in solo.items()},
        **{f"lanes@{rows}": rate for rows, rate in lanes.items()},
    }


def test_lanes_from_the_smallest_row_count_from_which_they_keep_winning() -> None:
    measured = rates({2: 100, 4: 100, 8: 150, 16: 150}, {2: 60, 4: 140, 8: 120, 16: 200})
    chosen = choose_arrangement(2, measured)
    assert (chosen.lanes, chosen.lanes_from) == (2, 16)  # they lose at 8: not from 4
    measured = rates({2: 100, 4: 100, 8: 150}, {2: 60, 4: 140, 8: 170})
    assert choose_arrangement(2, measured).lanes_from == 4


def test_no_lanes_where_they_lose_at_the_largest_or_win_within_the_margin() -> None:
    assert not choose_arrangement(2, rates({2: 100, 16: 150}, {2: 140, 16: 140})).uses_lanes
    assert not choose_arrangement(2, rates({16: 150}, {16: 155})).uses_lanes  # +3 %: a tie
    assert not choose_arrangement(1, rates({16: 150}, {16: 300})).uses_lanes  # one thread
    assert not choose_arrangement(2, {}).uses_lanes


def test_a_lane_takes_its_share_of_what_waits_and_runs_within_the_batch_cap() -> None:
    lanes = Arrangement(threads=2, lanes=2, lanes_from=4)
    assert lanes.lane_share(16, 64) == 8
    assert lanes.lane_share(17, 64) == 9
    assert lanes.lane_share(100, 32) == 32
    assert lanes.lane_share(0, 64) == 1


def test_the_arrangement_says_what_it_does() -> None:
    assert Arrangement(threads=2).describe() == "one call on 2 threads"
    lanes = Arrangement(threads=2, lanes=2, lanes_from=4)
    assert lanes.describe() == (
        "one call on 2 threads below 4 waiting rows; from 4, 2 lanes of 1 thread"
    )
    assert "measured slower" in choose_arrangement(2, rates({8: 2}, {8: 1})).describe()
    with pytest.raises(ValueError, match="lanes_from"):
        Arrangement(threads=2, lanes=2)
    with pytest.raises(ValueError, match="threads and lanes"):
        Arrangement(threads=0)
    assert summarise({}) == "not probed"
    assert (
        summarise(rates({8: 100.4}, {8: 120})) == "8 rows 100 vs 120 tokens/s (one call vs lanes)"
    )


def test_a_lanes_probe_splits_the_rows_over_concurrent_calls() -> None:
    calls: list[tuple[int, bool, str]] = []
    met = threading.Barrier(2, timeout=5)

    def run(rows: int, on_lanes: bool) -> tuple[float, float]:
        if on_lanes:
            met.wait()  # both shares are in flight at once
        calls.append((rows, on_lanes, threading.current_thread().name))
        return 0.1 * rows, 0.01 * rows  # prefill and step grow with the rows

    # the slowest lane (3 rows) projected to ANSWER_TOKENS: 0.3 + 31 * 0.03
    assert time_wave(run, 5, True, 2) == pytest.approx(0.3 + (ANSWER_TOKENS - 1) * 0.03)
    assert sorted(rows for rows, *_ in calls) == [2, 3]
    assert len({name for *_, name in calls}) == 2
    calls.clear()
    assert time_wave(run, 5, False, 2) == pytest.approx(0.5 + (ANSWER_TOKENS - 1) * 0.05)
    assert [(rows, on_lanes) for rows, on_lanes, _ in calls] == [(5, False)]


def test_the_probe_measures_each_arrangement_at_row_counts_within_the_batch_cap() -> None:
    calls: list[tuple[int, bool]] = []

    def run(rows: int, on_lanes: bool) -> tuple[float, float]:
        calls.append((rows, on_lanes))
        return 0.05, 0.01

    measured = measure_rates(run, threads=2, max_batch=6, rows_to_probe=(1, 2, 4, 8))
    assert set(measured) == {"solo@2", "lanes@2", "solo@4", "lanes@4", "solo@6", "lanes@6"}
    assert measured["solo@4"] == pytest.approx(4 * ANSWER_TOKENS / (0.05 + 31 * 0.01), abs=0.1)
    solo_calls = [rows for rows, on_lanes in calls if not on_lanes]
    assert solo_calls == [2] * (1 + PROBE_REPEATS) + [4] * (1 + PROBE_REPEATS) + [6] * (
        1 + PROBE_REPEATS
    )
    assert PROBE_NEW_TOKENS > 1
