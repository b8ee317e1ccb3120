"""The CTranslate2 engine's own behaviour: waves, per-row limits, a failed wave, warm-up.

What both engines share (seed checks, stop strings, limits, cancel, drain, a
failing request) is in test_engine.py, run against both. These tests are about
what only this engine does: it batches in waves of requests with the same
sampling settings, stops rows of one ``generate_batch`` call at their own
limits, and fails a wave, not the worker, when CTranslate2 raises.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference.ct2_engine import CTranslate2Engine
from inference.ct2_lanes import Arrangement
from inference.ct2_model import load_converted
from inference.ct2_wave import Lane, prompts_fit, wave_key
from inference.engine import GenerationParams
from tests.inference.engine_client import generate, params, run_all

pytestmark = pytest.mark.slow
SOLO = Arrangement(threads=2)  # every wave on one call, so that waves are deterministic
LANES = Arrangement(threads=2, lanes=2, lanes_from=4)


def _engine(converted: Path, **kwargs: Any) -> CTranslate2Engine:
    settings: dict[str, Any] = {
        "max_batch_size": 8,
        "batch_window_s": 0.005,
        "queue_cap": 32,
        "threads": 2,
        "arrangement": SOLO,
    }
    return CTranslate2Engine(load_converted(str(converted)), **{**settings, **kwargs})


@pytest.fixture()
def engine(builtin_converted_dir: Path) -> Iterator[CTranslate2Engine]:
    engine = _engine(builtin_converted_dir)
    engine.start()
    yield engine
    engine.stop()


def test_wave_keys_group_by_sampling_settings() -> None:
    def key(**kwargs: Any) -> tuple[float, float, int]:
        return wave_key(GenerationParams(prompt="x", prompt_ids=(1,), max_new_tokens=4, **kwargs))

    assert key() == key(temperature=1e-9, top_p=0.5)  # greedy either way
    assert key() == key(seed=3)  # a greedy request's seed changes nothing
    assert key(temperature=0.7) != key(temperature=0.8)
    assert key(temperature=0.7) != key(temperature=0.7, top_p=0.9)
    assert key() != key(min_new_tokens=4)


def test_a_wave_takes_the_oldest_request_and_those_that_share_its_key(
    builtin_converted_dir: Path,
) -> None:
    engine = _engine(builtin_converted_dir, max_batch_size=2)  # not started: a queue only
    loop = asyncio.new_event_loop()
    try:
        sampled, greedy = {"temperature": 0.7}, {"temperature": 0.0}
        kinds = [greedy, sampled, greedy, greedy, sampled]
        for index, kind in enumerate(kinds):
            engine.submit(params(engine, f"Hello {index}", 4, **kind), loop)
        first = [seq.params.prompt for seq in engine._take_wave(2)]
        second = [seq.params.prompt for seq in engine._take_wave(2)]
        assert first == ["Hello 0", "Hello 2"]  # greedy, capped at max_batch_size
        assert second == ["Hello 1", "Hello 4"]  # then the oldest left: sampled
        assert [seq.params.prompt for seq in engine._pending] == ["Hello 3"]
    finally:
        loop.close()


def test_prompts_of_one_wave_differ_little_and_a_one_token_prompt_waits_alone() -> None:
    assert prompts_fit([9, 11, 15, 17]) and prompts_fit([1, 1, 1])
    assert not prompts_fit([9, 18])  # 9 tokens fed one step each: too many
    assert not prompts_fit([1, 4])  # CTranslate2 would report the 4's prompt as generated


def test_a_one_token_prompt_beside_a_longer_one_leaves_its_text_intact(
    builtin_converted_dir: Path,
) -> None:
    """An empty prompt is fed as one EOS token. Without the prompt rule, the France
    request in its wave streamed its own prompt back as generated text."""
    engine = _engine(builtin_converted_dir, batch_window_s=0.05)
    engine.start()
    try:
        france = "Q: What is the capital of France?\nA:"
        alone = generate(engine, france, 12).finish.text
        together = run_all(engine, [params(engine, "", 6), params(engine, france, 12)], True)
        assert together[1].finish.text == alone == " Paris is the capital of France."
        assert together[1].streamed == alone
    finally:
        engine.stop()


def test_after_a_wave_the_next_waits_one_step_for_its_clients(
    builtin_converted_dir: Path,
) -> None:
    """Without the wait, 16 closed-loop clients split into two waves that then alternate."""
    engine = _engine(builtin_converted_dir, batch_window_s=0.005)  # not started: a queue only
    loop = asyncio.new_event_loop()
    try:
        lane = engine._lanes[0]
        lane.last_end, lane.last_rows, lane.step_s = time.monotonic(), 3, 0.5
        engine.submit(params(engine, "Hello", 4), loop)
        back = engine._returning_lanes()
        assert engine._start_by(back) >= lane.last_end + 0.5  # 1 of the last wave's 3 is back
        for _ in range(2):
            engine.submit(params(engine, "Hello", 4), loop)
        newest = engine._pending[-1].submitted_at
        back = engine._returning_lanes()
        assert engine._start_by(back) == pytest.approx(newest + 0.005)  # all 3 back: the window
    finally:
        loop.close()


def test_rows_of_one_wave_stop_at_their_own_limits(engine: CTranslate2Engine) -> None:
    sizes: list[int] = []
    engine.observe_batches(sizes.append)
    limits = [3, 9, 6]  # the built-in model says more than 9 tokens after this prompt
    requests = [params(engine, "Hello, my name is", n) for n in limits]
    results = run_all(engine, requests, concurrent=True)
    assert [r.finish.generated_tokens for r in results] == limits
    assert [r.finish.reason for r in results] == ["length"] * 3
    assert all(r.streamed == r.finish.text for r in results)
    assert max(sizes) == 3 and sizes[-1] == 1  # one wave; rows left as they finished


class _FailingOnce:
    """A generator whose first ``generate_batch`` call raises; the rest are the real one's."""

    def __init__(self, real: Any, message: str) -> None:
        self._real, self._message, self._calls = real, message, 0

    def generate_batch(self, *args: Any, **kwargs: Any) -> Any:
        self._calls += 1
        if self._calls == 1:
            raise RuntimeError(self._message)
        return self._real.generate_batch(*args, **kwargs)


def test_a_failed_generate_batch_fails_only_that_wave(
    engine: CTranslate2Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "_solo", _FailingOnce(engine._solo, "out of memory, say"))
    failed = generate(engine, "Hello, my name is")
    assert failed.finish.reason == "error" and "out of memory, say" in (failed.finish.error or "")
    answer = generate(engine, "Q: What is the capital of France?\nA:").finish.text
    assert "paris" in answer.lower()
    assert engine.in_flight == 0


def test_warm_up_failing_with_a_base_exception_is_reported_to_everyone_waiting(
    builtin_converted_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ctranslate2

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise SystemExit(3)

    monkeypatch.setattr(ctranslate2, "Generator", interrupted)
    engine = _engine(builtin_converted_dir, max_batch_size=2, queue_cap=4)
    loop = asyncio.new_event_loop()
    try:
        waiting = engine.submit(params(engine, "Hello, my name is", 4), loop)
        with pytest.raises(RuntimeError, match="engine warm-up failed"):
            engine.start()
        done = loop.run_until_complete(asyncio.wait_for(_finish(waiting), 30))
        assert done.reason == "error" and "engine warm-up failed" in (done.error or "")
        assert engine.in_flight == 0
    finally:
        loop.close()


async def _finish(handle: Any) -> Any:
    async for event in handle.events():
        if not hasattr(event, "token_id"):
            return event
    raise AssertionError("no finish event")


def test_greedy_text_equals_the_torch_engines(
    engine: CTranslate2Engine, builtin_loaded: Any
) -> None:
    """The conversion serves the same model: greedy text as the torch engine's."""
    from inference.torch_engine import TorchEngine

    torch_engine = TorchEngine(builtin_loaded, max_batch_size=4, batch_window_s=0, queue_cap=8)
    torch_engine.start()
    try:
        for prompt in ("Q: Who wrote Romeo and Juliet?\nA:", "Hello, my name is", "Test"):
            ours = generate(engine, prompt, 24).finish
            theirs = generate(torch_engine, prompt, 24).finish
            assert (ours.text, ours.reason) == (theirs.text, theirs.reason), prompt
    finally:
        torch_engine.stop()


class _Recorder:
    """Wraps a generator: each call's rows and its start and end (fakes nothing)."""

    def __init__(self, real: Any, name: str, calls: list[tuple[str, int, float, float]]) -> None:
        self._real, self._name, self._calls = real, name, calls

    def generate_batch(self, rows: list[Any], **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return self._real.generate_batch(rows, **kwargs)
        finally:
            self._calls.append((self._name, len(rows), started, time.monotonic()))


def _returned(calls: list[Any], count: int) -> list[Any]:
    """The calls once ``count`` have returned: rows finish (the callback) before their
    ``generate_batch`` call returns."""
    deadline = time.monotonic() + 10
    while len(calls) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return calls


def _record(engine: CTranslate2Engine) -> list[tuple[str, int, float, float]]:
    calls: list[tuple[str, int, float, float]] = []
    engine._solo = _Recorder(engine._solo, "solo", calls)
    engine._lanes_generator = _Recorder(engine._lanes_generator, "lanes", calls)
    return calls


FOUR = [
    "Hello, my name is",
    "Q: Who wrote Romeo and Juliet?\nA:",
    "The weather today",
    "Once upon a time",
]


@pytest.fixture()
def lanes_engine(builtin_converted_dir: Path) -> Iterator[CTranslate2Engine]:
    engine = _engine(builtin_converted_dir, arrangement=LANES, batch_window_s=0.05)
    engine.start()
    yield engine
    engine.stop()


def test_from_lanes_from_rows_a_burst_runs_as_one_wave_per_lane_at_once(
    lanes_engine: CTranslate2Engine, engine: CTranslate2Engine
) -> None:
    calls = _record(lanes_engine)
    both_in_flight = threading.Barrier(2, timeout=10)
    real = lanes_engine._lanes_generator

    class MeetingTheOtherLane:
        def generate_batch(self, *args: Any, **kwargs: Any) -> Any:
            both_in_flight.wait()  # breaks (and fails the wave) unless both lanes run at once
            return real.generate_batch(*args, **kwargs)

    lanes_engine._lanes_generator = MeetingTheOtherLane()
    prompts = FOUR * 2
    alone = [generate(engine, prompt, 12).finish.text for prompt in prompts]
    results = run_all(lanes_engine, [params(lanes_engine, p, 12) for p in prompts], True)
    assert [r.finish.text for r in results] == alone  # the lanes serve the same model
    assert sorted((name, rows) for name, rows, *_ in _returned(calls, 2)) == [("lanes", 4)] * 2


def test_below_lanes_from_rows_a_wave_runs_on_every_thread(
    lanes_engine: CTranslate2Engine,
) -> None:
    calls = _record(lanes_engine)
    run_all(lanes_engine, [params(lanes_engine, p, 8) for p in FOUR[:3]], True)
    assert [(name, rows) for name, rows, *_ in _returned(calls, 1)] == [("solo", 3)]


def test_a_solo_wave_and_lane_waves_never_compute_at_once(
    lanes_engine: CTranslate2Engine,
) -> None:
    calls = _record(lanes_engine)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first = [lanes_engine.submit(params(lanes_engine, p, 40), loop) for p in FOUR[:2]]
        await asyncio.sleep(0.1)  # the solo wave of two is running
        later = [lanes_engine.submit(params(lanes_engine, p, 12), loop) for p in FOUR * 2]
        await asyncio.gather(*(_finish(handle) for handle in first + later))

    asyncio.run(main())
    _returned(calls, 3)
    solo = [(start, end) for name, _, start, end in calls if name == "solo"]
    lanes = [(start, end) for name, _, start, end in calls if name == "lanes"]
    assert solo and lanes
    apart = [s_end <= start or end <= s_start for s_start, s_end in solo for start, end in lanes]
    assert all(apart)


def test_a_failed_lane_fails_only_its_wave(lanes_engine: CTranslate2Engine) -> None:
    lanes_engine._lanes_generator = _FailingOnce(
        lanes_engine._lanes_generator, "lane out of memory, say"
    )
    results = run_all(lanes_engine, [params(lanes_engine, p, 8) for p in FOUR * 2], True)
    failed = [r for r in results if r.finish.reason == "error"]
    assert len(failed) == 4 and all("lane out of memory" in (r.finish.error or "") for r in failed)
    assert "Paris" in generate(lanes_engine, "Q: What is the capital of France?\nA:").finish.text
    assert lanes_engine.in_flight == 0


def test_the_arrangement_is_measured_at_start(builtin_converted_dir: Path) -> None:
    engine = _engine(builtin_converted_dir, arrangement=None)
    engine.start()
    try:
        rates = engine.arrangement_rates
        assert set(rates) == {f"{kind}@{rows}" for kind in ("solo", "lanes") for rows in (4, 8)}
        assert all(rate > 0 for rate in rates.values())
        uses_lanes = "lanes of 1 thread" in engine.arrangement
        assert (engine._lanes_generator is not None) == uses_lanes  # else one copy of the weights
        assert len(engine._lane_threads) == (1 if uses_lanes else 0)
        assert generate(engine, "Hello, my name is", 4).finish.reason == "length"
    finally:
        engine.stop()


def test_one_thread_has_no_lanes_to_measure(builtin_converted_dir: Path) -> None:
    engine = _engine(builtin_converted_dir, threads=1, arrangement=None)
    engine.start()
    try:
        assert engine.arrangement_rates == {} and engine._lanes_generator is None
        assert engine.arrangement == "one call on 1 threads"
    finally:
        engine.stop()


def test_the_engine_loads_and_serves_without_importing_torch(builtin_converted_dir: Path) -> None:
    """Torch's resident memory is what makes room for the lanes' copy of the weights."""
    code = (
        "import sys\n"
        "from inference.engine_factory import build_engine\n"
        "from inference.settings import EngineChoice, ServerSettings\n"
        f"engine = build_engine(ServerSettings(model={str(builtin_converted_dir)!r},"
        " engine=EngineChoice.ctranslate2))\n"
        "engine.start()\n"
        "engine.stop()\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_clients_on_their_way_back_count_in_a_lanes_share(builtin_converted_dir: Path) -> None:
    """Both lanes just ended waves of 8; 8 clients are back, 8 on their way: the first
    lane takes 8 on the lanes, not half of what waits (4) or one call for all."""
    engine = _engine(builtin_converted_dir, arrangement=LANES, max_batch_size=8)  # forms at once
    engine._lanes += [Lane()]  # not started: the two lanes' bookkeeping only
    loop = asyncio.new_event_loop()
    try:
        for lane in engine._lanes:
            lane.last_end, lane.last_rows, lane.step_s = time.monotonic(), 8, 0.5
        for prompt in FOUR * 2:
            engine.submit(params(engine, prompt, 4), loop)
        taken = engine._next_wave(engine._lanes[0])
        assert taken is not None
        wave, on_lanes = taken
        assert (len(wave), on_lanes) == (8, True)
    finally:
        loop.close()


def test_an_idle_lane_waits_for_the_clients_of_the_wave_another_lane_ran(
    builtin_converted_dir: Path,
) -> None:
    """Lane 0 just ran one call for 16 clients; lane 1 forms the next wave. Without
    the shared wait it started with the first 4 back, and the other 12 waited a
    whole wave (fairness 1.88 at 16 clients under the AVX2 cap)."""
    arrangement = Arrangement(threads=2, lanes=2, lanes_from=32)
    engine = _engine(builtin_converted_dir, arrangement=arrangement, max_batch_size=64)
    engine._lanes += [Lane()]  # not started: the two lanes' bookkeeping only
    loop = asyncio.new_event_loop()
    try:
        ran = engine._lanes[0]
        ran.last_end, ran.last_rows, ran.step_s = time.monotonic(), 16, 0.5
        for prompt in FOUR:
            engine.submit(params(engine, prompt, 4), loop)
        taken: list[Any] = []
        forming = threading.Thread(target=lambda: taken.append(engine._next_wave(engine._lanes[1])))
        forming.start()
        time.sleep(0.1)
        for prompt in FOUR * 3:
            engine.submit(params(engine, prompt, 4), loop)
        forming.join(5)
        wave, on_lanes = taken[0]
        assert (len(wave), on_lanes) == (16, False)
    finally:
        loop.close()
