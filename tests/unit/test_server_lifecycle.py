"""Readiness, overload, deadlines, failures and drain, behind a fake engine."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from inference.server import create_app
from tests.unit.fake_engine import FakeEngine, fake_settings, metric, serving

BODY = {"prompt": "hello", "max_new_tokens": 4}


def test_generate_answers_text_tokens_and_timings() -> None:
    async def go() -> httpx.Response:
        async with serving() as (client, _):
            return await client.post("/v1/generate", json=BODY)

    response = asyncio.run(go())
    assert response.status_code == 200
    body = response.json()
    assert body["text"] == " w0 w1 w2 w3"
    assert (body["prompt_tokens"], body["generated_tokens"]) == (5, 4)
    assert body["finish_reason"] == "length"
    timings = body["timings"]
    assert 0 <= timings["queue_s"] <= timings["ttft_s"] <= timings["total_s"]


def test_params_reach_the_engine_as_validated() -> None:
    engine = FakeEngine()

    async def go() -> httpx.Response:
        async with serving(engine) as (client, _):
            body = {"prompt": "hi", "max_new_tokens": 3, "temperature": 0.7, "top_p": 0.9}
            return await client.post("/v1/generate", json={**body, "stop": "w2", "seed": 7})

    response = asyncio.run(go())
    assert response.json()["finish_reason"] == "stop"
    assert response.json()["text"] == " w0 w1 "
    params = engine.submitted[0]
    assert params.prompt_ids == (ord("h"), ord("i"))
    assert (params.temperature, params.top_p, params.stop, params.seed) == (0.7, 0.9, ("w2",), 7)


def test_health_at_once_ready_only_after_warm_up() -> None:
    async def go() -> tuple[int, int, int, int]:
        engine = FakeEngine(start_delay_s=0.3)
        async with serving(engine, wait_ready=False) as (client, app):
            health = (await client.get("/health")).status_code
            ready_before = (await client.get("/ready")).status_code
            early = (await client.post("/v1/generate", json=BODY)).status_code
            while not app.state.runtime.ready:
                await asyncio.sleep(0.02)
            return health, ready_before, early, (await client.get("/ready")).status_code

    assert asyncio.run(go()) == (200, 503, 503, 200)


def test_engine_that_fails_to_start_is_never_ready() -> None:
    failures: list[str] = []

    async def go() -> int:
        app = create_app(FakeEngine(start_error="no GPU"), fake_settings())
        app.state.runtime.on_failure.append(failures.append)
        async with app.router.lifespan_context(app):
            for _ in range(100):
                if failures:
                    break
                await asyncio.sleep(0.01)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return (await client.get("/ready")).status_code

    assert asyncio.run(go()) == 503
    assert failures and "no GPU" in failures[0]


def test_queue_full_is_429_with_retry_after_and_counts_as_error() -> None:
    engine = FakeEngine(queue_cap=1, max_batch_size=1, token_delay_s=0.05)

    async def go() -> tuple[list[httpx.Response], str]:
        async with serving(engine) as (client, _):
            burst = [client.post("/v1/generate", json=BODY) for _ in range(6)]
            responses = list(await asyncio.gather(*burst))
            return responses, (await client.get("/metrics")).text

    responses, metrics = asyncio.run(go())
    codes = sorted(r.status_code for r in responses)
    assert codes.count(429) >= 3 and set(codes) == {200, 429}, codes
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["type"] == "overloaded"
    assert metric(metrics, "inference_requests_total", 'code="429",status="error"') == codes.count(
        429
    )


def test_deadline_is_504_and_cancels_the_engine_work() -> None:
    engine = FakeEngine(token_delay_s=0.05)
    settings = fake_settings(request_deadline_s=0.2)

    async def go() -> tuple[httpx.Response, str]:
        async with serving(engine, settings) as (client, _):
            response = await client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 30})
            for _ in range(100):
                if engine.cancelled:
                    break
                await asyncio.sleep(0.01)
            return response, (await client.get("/metrics")).text

    response, metrics = asyncio.run(go())
    assert response.status_code == 504
    assert response.json()["type"] == "timeout"
    assert "deadline of 0.2s" in response.json()["error"]
    assert len(engine.cancelled) == 1
    assert metric(metrics, "inference_requests_total", 'code="504",status="error"') == 1


def test_failed_generation_is_500_internal_and_the_server_keeps_serving() -> None:
    async def go() -> list[httpx.Response]:
        async with serving() as (client, _):
            failed = await client.post("/v1/generate", json={"prompt": "FAIL please"})
            return [failed, await client.post("/v1/generate", json=BODY)]

    failed, after = asyncio.run(go())
    assert failed.status_code == 500
    assert failed.json() == {"error": "generation failed: fake failure", "type": "internal"}
    assert after.status_code == 200


def test_unexpected_exception_is_500_json_not_a_traceback() -> None:
    class Broken(FakeEngine):
        def count_tokens(self, text: str) -> tuple[int, ...]:
            raise KeyError("tokenizer exploded")

    async def go() -> httpx.Response:
        async with serving(Broken()) as (client, _):
            return await client.post("/v1/generate", json=BODY)

    response = asyncio.run(go())
    assert response.status_code == 500
    assert response.json() == {"error": "internal server error", "type": "internal"}


def test_catch_all_handler_answers_json_for_errors_outside_generation() -> None:
    app = create_app(FakeEngine(), fake_settings())

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    async def go(app: FastAPI) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/boom")

    response = asyncio.run(go(app))
    assert response.status_code == 500
    assert response.json() == {"error": "internal server error", "type": "internal"}


def test_drain_refuses_new_work_while_in_flight_requests_finish() -> None:
    engine = FakeEngine(token_delay_s=0.02)

    async def go() -> tuple[httpx.Response, httpx.Response, int, int, bool]:
        async with serving(engine) as (client, app):
            runtime = app.state.runtime
            slow = asyncio.create_task(
                client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 20})
            )
            while runtime.in_flight == 0:
                await asyncio.sleep(0.005)
            runtime.begin_drain()
            late = await client.post("/v1/generate", json=BODY)
            ready = (await client.get("/ready")).status_code
            health = (await client.get("/health")).status_code
            drained = await runtime.wait_drained(5.0)
            return await slow, late, ready, health, drained

    finished, late, ready, health, drained = asyncio.run(go())
    assert finished.status_code == 200 and finished.json()["generated_tokens"] == 20
    assert (late.status_code, late.json()["type"]) == (503, "unavailable")
    assert (ready, health, drained) == (503, 200, True)
    assert engine.stopped  # the lifespan's shutdown stopped the engine


def test_wait_drained_gives_up_at_its_timeout() -> None:
    engine = FakeEngine(token_delay_s=0.05)

    async def go() -> bool:
        async with serving(engine) as (client, app):
            runtime = app.state.runtime
            task = asyncio.create_task(
                client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 6})
            )
            while runtime.in_flight == 0:
                await asyncio.sleep(0.005)
            runtime.begin_drain()
            result = await runtime.wait_drained(0.1)
            await task
            return result

    assert asyncio.run(go()) is False


def test_default_max_new_tokens_never_exceeds_the_cap() -> None:
    engine = FakeEngine()

    async def go() -> httpx.Response:
        async with serving(engine, fake_settings(max_new_tokens_cap=3)) as (client, _):
            return await client.post("/v1/generate", json={"prompt": "hi"})

    response = asyncio.run(go())
    assert response.status_code == 200
    assert engine.submitted[0].max_new_tokens == 3
