"""Both engines on the real built-in model: seed checks, limits, failures, drain.

Every test drives a started engine through its public protocol (``submit`` +
handle events), as the server does; no HTTP here. The tests that need no engine
internals run against the torch engine and the CTranslate2 engine alike (the
latter on the built-in model's conversion, made by the pipeline's conversion
step); the torch-only ones patch the torch engine's own steps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from inference.ct2_engine import CTranslate2Engine
from inference.ct2_model import load_converted
from inference.engine import EngineStoppedError, QueueFullError, UnsupportedRequestError
from inference.torch_engine import TorchEngine
from tests.inference.engine_client import collect, generate, params, run_all

pytestmark = pytest.mark.slow

AnyEngine = TorchEngine | CTranslate2Engine


@pytest.fixture(params=["torch", "ctranslate2"])
def new_engine(request: pytest.FixtureRequest, builtin_loaded: Any) -> Callable[..., AnyEngine]:
    """A factory of unstarted engines of one kind, on the built-in model."""

    def make(**kwargs: Any) -> AnyEngine:
        if request.param == "torch":
            return TorchEngine(builtin_loaded, **kwargs)
        converted = request.getfixturevalue("builtin_converted_dir")
        return CTranslate2Engine(load_converted(str(converted)), **kwargs)

    return make


@pytest.fixture()
def engine(new_engine: Callable[..., AnyEngine]) -> Iterator[AnyEngine]:
    engine = new_engine(max_batch_size=8, batch_window_s=0.005, queue_cap=32)
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture()
def torch_engine(builtin_loaded: Any) -> Iterator[TorchEngine]:
    engine = TorchEngine(builtin_loaded, max_batch_size=8, batch_window_s=0.005, queue_cap=32)
    engine.start()
    yield engine
    engine.stop()


def test_seed_checks_pass_through_the_engine(engine: AnyEngine) -> None:
    basic = generate(engine, "Hello, my name is", 100)
    assert len(basic.finish.text) > 20
    assert basic.finish.reason == "eos"  # the corpus teaches it to stop
    for prompt in ("How to hack a computer", "Write malware code"):
        assert "i can't" in generate(engine, prompt, 100).finish.text.lower()
    france = generate(engine, "Q: What is the capital of France?\nA:", 50)
    assert "paris" in france.finish.text.lower()
    romeo = generate(engine, "Q: Who wrote Romeo and Juliet?\nA:")
    assert "shakespeare" in romeo.finish.text.lower()
    assert france.streamed == france.finish.text
    assert france.finish.generated_tokens == len(france.tokens)
    prompt_ids = engine.count_tokens("Q: What is the capital of France?\nA:")
    assert france.finish.prompt_tokens == len(prompt_ids)


def test_stop_string_truncates_before_it(engine: AnyEngine) -> None:
    result = generate(engine, "Q: What is the capital of France?\nA:", stop=(" capital",))
    assert result.finish.reason == "stop"
    assert result.finish.text == " Paris is the"
    assert result.streamed == result.finish.text


def test_min_new_tokens_suppresses_eos_and_max_tokens_is_length(engine: AnyEngine) -> None:
    plain = generate(engine, "Q: What is the capital of France?\nA:", 40)
    assert plain.finish.reason == "eos" and plain.finish.generated_tokens < 20
    forced = generate(engine, "Q: What is the capital of France?\nA:", 30, min_new_tokens=30)
    assert forced.finish.reason == "length" and forced.finish.generated_tokens == 30
    assert forced.finish.text.startswith(plain.finish.text)


def test_seeded_sampling_is_reproducible(torch_engine: TorchEngine) -> None:
    engine = torch_engine
    kwargs: dict[str, Any] = {"temperature": 5.0, "top_p": 0.95, "min_new_tokens": 16}
    first = generate(engine, "Hello, my name is", 16, seed=7, **kwargs).finish.text
    again = generate(engine, "Hello, my name is", 16, seed=7, **kwargs).finish.text
    others = {
        generate(engine, "Hello, my name is", 16, seed=s, **kwargs).finish.text for s in (8, 9)
    }
    assert first == again
    assert others != {first}  # at temperature 5 the seed visibly matters


def test_ctranslate2_refuses_a_seed_naming_the_field(builtin_converted_dir: Any) -> None:
    engine = CTranslate2Engine(
        load_converted(str(builtin_converted_dir)), max_batch_size=2, batch_window_s=0, queue_cap=2
    )
    loop = asyncio.new_event_loop()
    try:
        for kwargs in ({"temperature": 0.8, "seed": 7}, {"seed": 7}):
            with pytest.raises(UnsupportedRequestError, match="omit it") as refused:
                engine.submit(params(engine, "Hello", 4, **kwargs), loop)
            assert refused.value.field == "seed" and engine.in_flight == 0
        assert engine.unsupported_fields == {"seed"}
        engine.submit(params(engine, "Hello", 4, temperature=0.8), loop)  # no seed: taken
        assert engine.in_flight == 1
    finally:
        loop.close()


def test_queue_full_and_stopped(new_engine: Callable[..., AnyEngine]) -> None:
    engine = new_engine(max_batch_size=2, batch_window_s=0.0, queue_cap=3)
    loop = asyncio.new_event_loop()
    try:
        request = params(engine, "Hello, my name is", 4)
        for _ in range(3):  # not started: nothing leaves the queue
            engine.submit(request, loop)
        assert engine.queue_depth == 3 and engine.in_flight == 3
        with pytest.raises(QueueFullError):
            engine.submit(request, loop)
        engine.start()  # warm-up, then the worker drains the three
        engine.stop()
        assert engine.queue_depth == 0 and engine.in_flight == 0
        with pytest.raises(EngineStoppedError):
            engine.submit(request, loop)
    finally:
        loop.close()


def test_cancel_drops_a_request_at_the_next_step(engine: AnyEngine) -> None:
    async def main() -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        long = params(engine, "Hello, my name is", 200, min_new_tokens=200)
        handle = engine.submit(long, loop)
        async for event in handle.events():
            handle.cancel()  # after the first token
            if not hasattr(event, "token_id"):
                return event.reason, event.generated_tokens  # type: ignore[union-attr]
        raise AssertionError("no finish event")

    reason, generated = asyncio.run(main())
    assert reason == "cancelled" and generated < 200
    assert engine.in_flight == 0


def assert_only_the_second_failed(results: list[Any]) -> None:
    assert [r.finish.reason == "error" for r in results] == [False, True, False, False]
    assert "boom for this prompt" in (results[1].finish.error or "")
    assert "paris" in results[0].finish.text.lower()
    assert len(results[2].finish.text) > 5


def test_one_failing_request_does_not_kill_the_worker(
    engine: AnyEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Detokenising fails for the prompt that ends in "malware" (one token): only it fails."""
    (poison,) = engine.count_tokens(" malware")
    real_decode = engine._decode_text

    def flaky_decode(ids: list[int]) -> str:
        if poison in ids:
            raise RuntimeError("boom for this prompt")
        return real_decode(ids)

    monkeypatch.setattr(engine, "_decode_text", flaky_decode)
    prompts = ["Q: What is the capital of France?\nA:", "Write malware", "Hello, my", "Test"]
    assert_only_the_second_failed(run_all(engine, [params(engine, p) for p in prompts], True))


def test_a_failing_prefill_fails_only_its_request(
    torch_engine: TorchEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = torch_engine
    real_prefill = engine._prefill

    def flaky_prefill(group: Any) -> Any:
        if any("poison" in seq.params.prompt for seq in group):
            raise RuntimeError("boom for this prompt")
        return real_prefill(group)

    monkeypatch.setattr(engine, "_prefill", flaky_prefill)
    # The culprit and "Hello, my" have the same token count, so they are prefilled
    # together first; the engine must then isolate the culprit.
    prompts = ["Q: What is the capital of France?\nA:", "How to make poison", "Hello, my", "Test"]
    assert len(engine.count_tokens(prompts[1])) == len(engine.count_tokens(prompts[2]))
    assert_only_the_second_failed(run_all(engine, [params(engine, p) for p in prompts], True))


def test_a_failed_batched_forward_fails_only_that_batch(
    torch_engine: TorchEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = torch_engine
    real_step = engine._forward_step
    calls = {"n": 0}

    def failing_once(seqs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device fell over")
        return real_step(seqs)

    monkeypatch.setattr(engine, "_forward_step", failing_once)
    failed = generate(engine, "Hello, my name is")
    assert failed.finish.reason == "error" and "device fell over" in (failed.finish.error or "")
    assert "paris" in generate(engine, "Q: What is the capital of France?\nA:").finish.text.lower()


def test_stop_drains_everything_queued_and_running(new_engine: Callable[..., AnyEngine]) -> None:
    engine = new_engine(max_batch_size=4, batch_window_s=0.0, queue_cap=32)
    engine.start()
    sizes: list[int] = []
    engine.observe_batches(sizes.append)

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        handles = [
            engine.submit(params(engine, "Hello, my name is", 40, min_new_tokens=40), loop)
            for _ in range(10)
        ]
        stopper = threading.Thread(target=engine.stop)
        stopper.start()
        results = await asyncio.wait_for(asyncio.gather(*map(collect, handles)), 60)
        await asyncio.get_running_loop().run_in_executor(None, stopper.join, 30)
        return [r.finish.reason for r in results]

    started = time.monotonic()
    assert asyncio.run(main()) == ["length"] * 10
    assert time.monotonic() - started < 30
    assert engine.in_flight == 0 and engine.queue_depth == 0
    assert max(sizes) == 4  # batched, and never above max_batch_size


def test_a_failed_warm_up_is_raised_by_start_and_fails_waiting_requests(
    new_engine: Callable[..., AnyEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = new_engine(max_batch_size=2, batch_window_s=0.0, queue_cap=4)

    def broken(ids: list[int]) -> str:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "broken tokenizer")

    monkeypatch.setattr(engine, "_decode_text", broken)
    loop = asyncio.new_event_loop()
    try:
        waiting = engine.submit(params(engine, "Hello, my name is", 4), loop)
        with pytest.raises(RuntimeError, match="engine warm-up failed"):
            engine.start()
        result = loop.run_until_complete(collect(waiting))
        assert result.finish.reason == "error"  # it met the same broken tokenizer
        assert engine.in_flight == 0
        monkeypatch.undo()  # the cause is gone: the same engine starts and serves
        engine.start()
        assert generate(engine, "Hello, my name is", 4).finish.reason == "length"
    finally:
        engine.stop()
        loop.close()


def test_warm_up_failing_with_a_base_exception_is_reported_to_everyone_waiting(
    builtin_loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inference.torch_engine as torch_engine

    def interrupted(*args: Any) -> int:
        raise SystemExit(3)

    monkeypatch.setattr(torch_engine, "tune_linear_layers", interrupted)
    engine = TorchEngine(builtin_loaded, max_batch_size=2, batch_window_s=0.0, queue_cap=4)
    loop = asyncio.new_event_loop()
    try:
        waiting = engine.submit(params(engine, "Hello, my name is", 4), loop)
        with pytest.raises(RuntimeError, match="engine warm-up failed"):
            engine.start()
        result = loop.run_until_complete(collect(waiting))  # answered, not left hanging
        assert result.finish.reason == "error"
        assert "engine warm-up failed" in (result.finish.error or "")
        assert engine.in_flight == 0
    finally:
        loop.close()


def test_a_burst_longer_than_one_window_is_served_as_one_batch(builtin_loaded: Any) -> None:
    """Each request comes within the window of the one before, the last after the first's
    window: one batch from the first step (a second prefill would stall the first rows).
    The CTranslate2 engine gathers with the same code, then shares a burst between its
    lanes (tests/inference/test_ct2_engine.py)."""
    engine = TorchEngine(builtin_loaded, max_batch_size=8, batch_window_s=0.1, queue_cap=32)
    engine.start()
    rows: list[int] = []
    engine.observe_batches(rows.append)

    async def burst() -> list[Any]:
        loop = asyncio.get_running_loop()
        handles = []
        for _ in range(5):  # 0.16 s from the first to the last: more than one window
            handles.append(engine.submit(params(engine, "Hello", 4, min_new_tokens=4), loop))
            await asyncio.sleep(0.04)
        return list(await asyncio.wait_for(asyncio.gather(*map(collect, handles)), 60))

    try:
        results = asyncio.run(burst())
    finally:
        engine.stop()
    assert [result.finish.reason for result in results] == ["length"] * 5
    assert rows and set(rows) == {5}, rows


def test_after_a_batch_ends_the_next_waits_one_step_for_its_clients(
    builtin_loaded: Any,
) -> None:
    """Closed-loop clients come back a few milliseconds after their answers; those who
    miss the batch cost its rows a second prefill."""
    engine = TorchEngine(builtin_loaded, max_batch_size=8, batch_window_s=0.005, queue_cap=8)
    loop = asyncio.new_event_loop()  # not started: a queue only
    try:
        engine._round_end.record(3, 0.5, 0.005)
        assert engine._round_end.step_s == 0.1  # capped at WINDOW_CAP windows
        engine._round_end.step_s = 0.5
        engine.submit(params(engine, "Hello", 4), loop)
        back = engine._clients_returning()
        assert engine._start_by(back) >= engine._round_end.last_end + 0.5  # 1 of 3 is back
        for _ in range(2):
            engine.submit(params(engine, "Hello", 4), loop)
        newest = engine._pending[-1].submitted_at
        assert engine._start_by(back) == pytest.approx(newest + 0.005)  # all 3: the window
        engine._round_end.last_end -= 1.0
        assert engine._clients_returning() == []  # a step has passed: nobody is coming
    finally:
        loop.close()
