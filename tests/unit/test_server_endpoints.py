"""The generation steps called directly, without HTTP: admission, validation, tokenising.

Why: :class:`inference.endpoints.GenerationEndpoints` holds each step as a
method, so the limits and the lifecycle checks are judged here on their own;
the HTTP tests judge only that the routes take this single path.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from inference.api_models import CompletionRequest, GenerateRequest
from inference.endpoints import GenerationEndpoints
from inference.errors import ApiError
from inference.faults import FaultInjector
from inference.metrics import ServerMetrics
from inference.runtime import ServerRuntime
from tests.unit.fake_engine import FakeEngine, fake_settings, serving


def _endpoints(**settings: object) -> tuple[GenerationEndpoints, ServerRuntime]:
    runtime = ServerRuntime()
    engine = FakeEngine(context_length=64)
    faults = FaultInjector(0.0, 0.0, None, "dev")
    merged = {"max_new_tokens_cap": 32, **settings}
    endpoints = GenerationEndpoints(
        engine, fake_settings(**merged), ServerMetrics(), runtime, faults
    )
    return endpoints, runtime


def test_admission_follows_the_lifecycle_and_503s_carry_retry_after() -> None:
    endpoints, runtime = _endpoints()
    with pytest.raises(ApiError, match="still loading") as loading:
        endpoints.admit()
    runtime.ready = True
    endpoints.admit()
    runtime.begin_drain()
    with pytest.raises(ApiError, match="shutting down") as draining:
        endpoints.admit()
    for error in (loading.value, draining.value):
        assert error.status == 503 and error.headers["Retry-After"] == "1"


def test_validation_applies_the_cap_and_the_context_and_names_the_field() -> None:
    endpoints, _ = _endpoints()
    params = asyncio.run(endpoints.validate(GenerateRequest(prompt="abc", max_new_tokens=5)))
    assert (params.prompt_ids, params.max_new_tokens) == ((97, 98, 99), 5)
    small_cap, _ = _endpoints(max_new_tokens_cap=8)
    default = asyncio.run(small_cap.validate(GenerateRequest(prompt="a")))
    assert default.max_new_tokens == 8  # a default above the cap is lowered, never an error
    with pytest.raises(ApiError) as over_cap:
        asyncio.run(endpoints.validate(CompletionRequest(prompt="a", max_tokens=33)))
    assert (over_cap.value.status, over_cap.value.param) == (422, "max_tokens")
    assert "`max_tokens` must be <= 32, got 33" in over_cap.value.message
    with pytest.raises(ApiError) as over_context:
        endpoints.params(GenerateRequest(prompt="x", max_new_tokens=30), tuple(range(40)))
    assert "must be <= 64, got 40 + 30 = 70" in over_context.value.message
    with pytest.raises(ApiError) as unknown_model:
        endpoints.check_model(CompletionRequest(prompt="a", model="gpt-9"))
    assert (unknown_model.value.status, unknown_model.value.param) == (404, "model")


def test_completion_min_tokens_is_capped_at_max_tokens() -> None:
    endpoints, _ = _endpoints()
    req = CompletionRequest(prompt="a", max_tokens=4, min_tokens=10)
    assert asyncio.run(endpoints.validate(req)).min_new_tokens == 4


class SlowTokenizer(FakeEngine):
    """Tokenising takes 0.2 s of CPU-bound time (a large prompt on a real tokenizer)."""

    def count_tokens(self, text: str) -> tuple[int, ...]:
        time.sleep(0.2)
        return (1,) * min(len(text), 8)


def test_large_prompts_are_tokenised_off_the_event_loop() -> None:
    engine = SlowTokenizer(context_length=64, queue_cap=32)

    async def go() -> float:
        async with serving(engine) as (client, _):
            body = {"prompt": "x" * 10_000, "max_new_tokens": 1}
            posts = [asyncio.create_task(client.post("/v1/generate", json=body)) for _ in range(16)]
            await asyncio.sleep(0.05)
            started = time.monotonic()
            health = await client.get("/health")
            waited = time.monotonic() - started
            assert health.status_code == 200
            answers: list[httpx.Response] = await asyncio.gather(*posts)
            assert {a.status_code for a in answers} == {200}
            return waited

    # 16 prompts take 3.2 s to tokenise; /health must not wait behind them.
    assert asyncio.run(go()) < 0.5
