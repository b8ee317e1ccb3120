"""How the CTranslate2 engine spends its threads: one wave on all of them, or lanes.

Why two arrangements: CTranslate2 fixes a generator's threads per call
(``intra_threads``) when it loads. All threads on one call gives the shortest
step for one row, which is what a lone client waits for. Under load, one
single-thread call per core ("lanes", CTranslate2's ``inter_threads`` replicas,
which share one copy of the weights) can give more tokens a second than every
thread on one bigger call: whether it does, and from how many waiting rows,
depends on the CPU, its ISA and the model, so the engine measures it when it
starts (:func:`choose_arrangement`) instead of taking a constant tuned elsewhere.
The choice is logged and shown in ``/v1/models`` (``arrangement``).

The price is a second copy of the weights (a generator per arrangement); the
engine loads without torch (inference/ct2_model.py) so that both fit the memory
target. When the lanes do not win at any probed row count, the engine drops them
and keeps one copy.

Left out: more than two arrangements (for example two lanes of two threads on
four cores); the probe compares all-threads against one-thread lanes only.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# The lanes must beat one call on all threads by this fraction to be used: a
# measured tie is not worth the second copy of the weights.
LANES_MARGIN = 0.05
PROBE_ROWS = (4, 8, 16, 32)  # rows per probe, capped at the max_batch_size
PROBE_NEW_TOKENS = 8
PROBE_REPEATS = 2
# The answer length the arrangements are compared for. The probe measures each
# call's prefill and its decode step, and projects a wave of this many tokens:
# the prefill's share of a wave decides between them (all threads on one call
# win the prefill, lanes win the steps), so probing with the probe's own few
# tokens would weigh the prefill as if answers were that short.
ANSWER_TOKENS = 32

# Runs one wave of ``rows`` prompts, each to ``PROBE_NEW_TOKENS`` tokens, on the
# lanes' generator (True) or the solo one (False); returns the seconds to its
# first token and its seconds per decode step after that.
RunWave = Callable[[int, bool], tuple[float, float]]


@dataclass(frozen=True)
class Arrangement:
    """The threads of the solo generator, and the lanes used from ``lanes_from`` rows."""

    threads: int
    lanes: int = 1  # 1: no lanes, every wave runs on the solo generator
    lanes_from: int = 0  # waiting rows from which waves go to the lanes (0 with no lanes)
    # tokens/s measured per probe, "solo@8" or "lanes@8", for the log and /v1/models
    rates: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads < 1 or self.lanes < 1:
            raise ValueError("threads and lanes must be >= 1")
        if self.lanes > 1 and self.lanes_from < 1:
            raise ValueError("lanes_from must be >= 1 when there are lanes")

    @property
    def uses_lanes(self) -> bool:
        return self.lanes > 1

    def describe(self) -> str:
        """One line for the log and ``/v1/models``."""
        solo = f"one call on {self.threads} threads"
        if not self.uses_lanes:
            return solo + (" (lanes measured slower)" if self.rates else "")
        return (
            f"{solo} below {self.lanes_from} waiting rows; from {self.lanes_from}, "
            f"{self.lanes} lanes of 1 thread"
        )

    def lane_share(self, demand: int, max_batch: int) -> int:
        """Rows one lane's wave takes when ``demand`` rows are waiting or running."""
        return max(1, min(max_batch, math.ceil(demand / self.lanes)))


def time_wave(run: RunWave, rows: int, on_lanes: bool, lanes: int) -> float:
    """Projected seconds for ``rows`` rows of :data:`ANSWER_TOKENS` tokens: one call,
    or split over ``lanes`` concurrent calls (the slowest lane's)."""
    if not on_lanes:
        return _projected(run(rows, False))
    shares = [rows // lanes + (1 if i < rows % lanes else 0) for i in range(lanes)]
    timings: list[tuple[float, float]] = []
    threads = [
        threading.Thread(target=lambda share=share: timings.append(run(share, True)))
        for share in shares
        if share
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(timings) != len(threads):
        raise RuntimeError("a lane's probe call failed")
    return max(_projected(timing) for timing in timings)


@dataclass(frozen=True)
class CallTiming:
    """One ``generate_batch`` call: its wall time, time to the first step, the step gaps."""

    seconds: float
    first_s: float
    gaps_s: tuple[float, ...]


def timed_greedy_call(generator: Any, rows: list[list[str]], new_tokens: int) -> CallTiming:
    """Time one greedy ``generate_batch`` producing exactly ``new_tokens`` per row.

    The per-step callback timestamps each decode step as it happens (the first
    row's token at each step), so the step time comes from the same call as the
    throughput, not from the difference of two noisy calls.
    """
    marks: list[float] = []

    def on_step(step: Any) -> bool:
        if step.batch_id == 0:
            marks.append(time.perf_counter())
        return False

    started = time.perf_counter()
    results = generator.generate_batch(
        rows,
        max_length=new_tokens,
        min_length=new_tokens,
        sampling_topk=1,
        include_prompt_in_result=False,
        callback=on_step,
    )
    elapsed = time.perf_counter() - started
    produced = {len(result.sequences_ids[0]) for result in results}
    if produced != {new_tokens}:
        raise RuntimeError(f"asked for {new_tokens} new tokens per row, got {sorted(produced)}")
    gaps = tuple(later - earlier for earlier, later in itertools.pairwise(marks))
    return CallTiming(elapsed, (marks[0] if marks else time.perf_counter()) - started, gaps)


def _projected(timing: tuple[float, float]) -> float:
    first_s, step_s = timing
    return first_s + (ANSWER_TOKENS - 1) * step_s


def measure_rates(
    run: RunWave, threads: int, max_batch: int, rows_to_probe: Sequence[int] = PROBE_ROWS
) -> dict[str, float]:
    """Projected tokens/s of each arrangement at each probed row count (best of the
    repeats)."""
    rates: dict[str, float] = {}
    for rows in sorted({min(r, max_batch) for r in rows_to_probe if min(r, max_batch) >= 2}):
        for on_lanes, label in ((False, "solo"), (True, "lanes")):
            time_wave(run, rows, on_lanes, threads)  # warm: the allocator's first use of it
            seconds = [time_wave(run, rows, on_lanes, threads) for _ in range(PROBE_REPEATS)]
            rates[f"{label}@{rows}"] = round(rows * ANSWER_TOKENS / min(seconds), 1)
    return rates


def choose_arrangement(threads: int, rates: dict[str, float]) -> Arrangement:
    """Lanes from the smallest probed row count from which they win by the margin at
    every larger one; no lanes when they do not win at the largest."""
    probed = sorted(int(key.split("@")[1]) for key in rates if key.startswith("solo@"))
    lanes_from = 0
    for rows in reversed(probed):
        if rates[f"lanes@{rows}"] < (1 + LANES_MARGIN) * rates[f"solo@{rows}"]:
            break
        lanes_from = rows
    if threads < 2 or not lanes_from:
        return Arrangement(threads=threads, rates=rates)
    return Arrangement(threads=threads, lanes=threads, lanes_from=lanes_from, rates=rates)


def summarise(rates: dict[str, float]) -> str:
    """The probe's rates as one log line, solo against lanes per row count."""
    probed = sorted({int(key.split("@")[1]) for key in rates})
    if not probed:
        return "not probed"
    pairs = (
        f"{rows} rows {rates.get(f'solo@{rows}', 0):.0f} vs {rates.get(f'lanes@{rows}', 0):.0f}"
        for rows in probed
    )
    return ", ".join(pairs) + " tokens/s (one call vs lanes)"
