"""Metrics after real requests, the SSE stream's shape, fault injection and the API docs."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from inference.faults import FaultConfigError, FaultInjector
from inference.metrics import status_label
from tests.unit.fake_engine import FakeEngine, fake_settings, metric, serving


def test_status_label_follows_the_canary_contract() -> None:
    assert [status_label(c) for c in (200, 400, 404, 413, 422, 429, 500, 503, 504)] == [
        "success",
        "client_error",
        "client_error",
        "client_error",
        "client_error",
        "error",
        "error",
        "error",
        "error",
    ]


def test_metrics_after_requests() -> None:
    engine = FakeEngine(max_batch_size=4)

    async def go() -> str:
        async with serving(engine) as (client, _):
            ok = {"prompt": "abc", "max_new_tokens": 5}
            await asyncio.gather(*(client.post("/v1/generate", json=ok) for _ in range(3)))
            await client.post("/v1/generate", json={"prompt": ""})
            await client.post("/v1/generate", json={"prompt": "FAIL"})
            await client.get("/health")  # not a generation request: not counted
            return (await client.get("/metrics")).text

    text = asyncio.run(go())
    total = "inference_requests_total"
    assert metric(text, total, 'code="200",status="success"') == 3
    assert metric(text, total, 'code="422",status="client_error"') == 1
    assert metric(text, total, 'code="500",status="error"') == 1
    assert metric(text, "inference_generated_tokens_total") == 15
    assert metric(text, "inference_prompt_tokens_total") == 3 * 3 + 4
    # Duration: the 3 successes and the failure reached the engine; the 422 did not.
    assert metric(text, "inference_request_duration_seconds_count") == 4
    assert metric(text, "inference_time_to_first_token_seconds_count") == 3
    assert metric(text, "inference_batch_size_count") >= 5
    assert metric(text, "inference_batch_size_sum") >= 15
    assert metric(text, "inference_queue_depth") == 0
    assert metric(text, "inference_requests_in_flight") == 0
    assert metric(text, "inference_model_info", 'model="fake-model",revision="fake-rev-1"') == 1
    assert metric(text, "inference_build_info", 'git_sha="test-sha",version="0.1.0"') == 1


def test_each_app_has_its_own_registry() -> None:
    async def go() -> str:
        async with serving() as (client, _):
            return (await client.get("/metrics")).text

    first, second = asyncio.run(go()), asyncio.run(go())
    assert metric(first, "inference_generated_tokens_total") == 0
    assert metric(second, "inference_generated_tokens_total") == 0


def _stream(body: dict[str, object], engine: FakeEngine | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        async with serving(engine) as (client, _):
            return await client.post("/v1/completions", json={**body, "stream": True})

    return asyncio.run(go())


def _events(response: httpx.Response) -> list[str]:
    assert response.text.endswith("\n\n")
    return [block.removeprefix("data: ") for block in response.text.strip().split("\n\n")]


def test_sse_stream_shape() -> None:
    response = _stream({"model": "fake-model", "prompt": "hey", "max_tokens": 3, "user": "u1"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["text"] for c in chunks] == [" w0", " w1", " w2", ""]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "text_completion" and c["model"] == "fake-model" for c in chunks)
    assert all("usage" not in c for c in chunks)  # only with stream_options.include_usage


def test_stream_options_include_usage_adds_a_usage_chunk_before_done() -> None:
    body = {"prompt": "hey", "max_tokens": 3, "stream": True}
    response = _stream({**body, "stream_options": {"include_usage": True}})
    events = _events(response)
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert json.loads(events[-3])["choices"][0]["finish_reason"] == "length"


def test_plain_completion_matches_openai_shape() -> None:
    async def go() -> httpx.Response:
        async with serving() as (client, _):
            body = {"prompt": "EOS", "max_tokens": 5, "temperature": 0}
            return await client.post("/v1/completions", json=body)

    body = asyncio.run(go()).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"] == [
        {"text": " w0 w1", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_stream_failing_before_first_token_gets_a_real_status() -> None:
    response = _stream({"prompt": "FAIL"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal"
    assert response.json()["error"]["type"] == "server_error"


def test_stream_past_its_deadline_ends_with_an_error_event_and_counts_504() -> None:
    engine = FakeEngine(token_delay_s=0.05)

    async def go() -> tuple[httpx.Response, str]:
        async with serving(engine, fake_settings(request_deadline_s=0.3)) as (client, _):
            body = {"prompt": "a", "max_tokens": 30, "stream": True}
            response = await client.post("/v1/completions", json=body)
            return response, (await client.get("/metrics")).text

    response, metrics = asyncio.run(go())
    events = _events(response)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert (error["code"], error["type"]) == ("timeout", "server_error")
    assert "deadline" in error["message"]
    assert json.loads(events[0])["choices"][0]["text"] == " w0"
    assert metric(metrics, "inference_requests_total", 'code="504",status="error"') == 1
    assert engine.cancelled


def test_fault_error_rate_follows_the_seeded_rng() -> None:
    requests = 40

    async def go() -> tuple[list[int], str, int]:
        settings = fake_settings(fault_error_rate=0.25, fault_seed=1234)
        engine = FakeEngine()
        async with serving(engine, settings) as (client, _):
            body = {"prompt": "a", "max_new_tokens": 1}
            codes = [(await client.post("/v1/generate", json=body)).status_code for _ in range(40)]
            return codes, (await client.get("/metrics")).text, len(engine.submitted)

    codes, metrics, submitted = asyncio.run(go())
    expected = FaultInjector(0.25, seed=1234)
    expected_failures = sum(expected.should_fail() for _ in range(requests))
    assert 0 < expected_failures < requests
    assert codes.count(500) == expected_failures
    assert codes.count(200) == submitted == requests - expected_failures
    assert metric(metrics, "inference_requests_total", 'code="500",status="error"') == codes.count(
        500
    )


def test_injected_fault_body_and_latency() -> None:
    async def go() -> tuple[httpx.Response, httpx.Response]:
        failing = fake_settings(fault_error_rate=1.0)
        async with serving(settings=failing) as (client, _):
            fault = await client.post("/v1/generate", json={"prompt": "a"})
        slow = fake_settings(fault_latency_ms=200)
        async with serving(settings=slow) as (client, _):
            delayed = await client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 1})
        return fault, delayed

    fault, delayed = asyncio.run(go())
    assert (fault.status_code, fault.json()["type"]) == (500, "injected_fault")
    assert delayed.status_code == 200
    assert delayed.json()["timings"]["ttft_s"] >= 0.2


def test_prod_refuses_fault_injection() -> None:
    with pytest.raises(FaultConfigError, match="refused when `environment` is prod"):
        FaultInjector(0.1, environment="prod")
    with pytest.raises(FaultConfigError, match="prod"):
        FaultInjector(latency_ms=5, environment="prod")
    assert not FaultInjector(environment="prod").enabled


def test_openapi_documents_the_endpoints_and_request_bodies() -> None:
    async def go() -> tuple[dict[str, object], int]:
        async with serving() as (client, _):
            spec = (await client.get("/openapi.json")).json()
            return spec, (await client.get("/docs")).status_code

    spec, docs = asyncio.run(go())
    paths = spec["paths"]
    assert isinstance(paths, dict)
    for path in ("/v1/generate", "/v1/completions", "/v1/models", "/health", "/ready"):
        assert path in paths
    schema = paths["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "max_new_tokens" in schema["properties"] and schema["additionalProperties"] is False
    assert docs == 200
