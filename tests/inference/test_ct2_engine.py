"""The CTranslate2 engine's own behaviour: waves, per-row limits, a failed wave, warm-up.

What both engines share (seed checks, stop strings, limits, cancel, drain, a
failing request) is in test_engine.py, run against both. These tests are about
what only this engine does: it batches in waves of requests with the same
sampling settings, stops rows of one ``generate_batch`` call at their own
limits, and fails a wave, not the worker, when CTranslate2 raises.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference.ct2_engine import CTranslate2Engine, prompts_fit, wave_key
from inference.ct2_model import load_converted
from inference.engine import GenerationParams
from tests.inference.engine_client import generate, params, run_all

pytestmark = pytest.mark.slow


def _engine(converted: Path, **kwargs: Any) -> CTranslate2Engine:
    settings: dict[str, Any] = {"max_batch_size": 8, "batch_window_s": 0.005, "queue_cap": 32}
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
        first = [seq.params.prompt for seq in engine._take_wave()]
        second = [seq.params.prompt for seq in engine._take_wave()]
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
        engine._last_end, engine._last_rows, engine._step_s = time.monotonic(), 3, 0.5
        engine.submit(params(engine, "Hello", 4), loop)
        assert engine._start_by() >= engine._last_end + 0.5  # 1 of the last wave's 3 is back
        for _ in range(2):
            engine.submit(params(engine, "Hello", 4), loop)
        newest = engine._pending[-1].submitted_at
        assert engine._start_by() == pytest.approx(newest + 0.005)  # all 3 back: the window
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


def test_a_failed_generate_batch_fails_only_that_wave(
    engine: CTranslate2Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine._generator

    class FailingOnce:
        calls = 0

        def generate_batch(self, *args: Any, **kwargs: Any) -> Any:
            FailingOnce.calls += 1
            if FailingOnce.calls == 1:
                raise RuntimeError("out of memory, say")
            return real.generate_batch(*args, **kwargs)

    monkeypatch.setattr(engine, "_generator", FailingOnce())
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
