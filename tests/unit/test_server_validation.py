"""Every client mistake answers 4xx JSON ``{"error", "type"}`` naming the field and the limit."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.unit.fake_engine import FakeEngine, fake_settings, metric, serving

CAP = 32
CONTEXT = 64

CASES: list[tuple[str, Any, int, str, str]] = [
    # (path, body (bytes = raw), status, type, text the message must contain)
    ("/v1/generate", b'{"prompt": "a"', 400, "invalid_json", "not valid JSON"),
    ("/v1/generate", b"", 400, "invalid_json", "not valid JSON"),
    ("/v1/generate", b'{"prompt": "a", "temperature": NaN}', 400, "invalid_json", "NaN"),
    ("/v1/generate", b"[1, 2]", 422, "validation", "must be a JSON object"),
    ("/v1/generate", {}, 422, "validation", "`prompt` is required"),
    ("/v1/generate", {"prompt": ""}, 422, "validation", "`prompt` must not be empty"),
    ("/v1/generate", {"prompt": 1}, 422, "validation", "`prompt` must be a string, got integer"),
    ("/v1/generate", {"prompt": "a", "max_new_tokens": "5"}, 422, "validation", "integer"),
    ("/v1/generate", {"prompt": "a", "max_new_tokens": 5.5}, 422, "validation", "integer"),
    ("/v1/generate", {"prompt": "a", "max_new_tokens": True}, 422, "validation", "integer"),
    ("/v1/generate", {"prompt": "a", "max_new_tokens": 0}, 422, "validation", ">= 1, got 0"),
    ("/v1/generate", {"prompt": "a", "max_new_tokens": -3}, 422, "validation", ">= 1, got -3"),
    (
        "/v1/generate",
        {"prompt": "a", "max_new_tokens": CAP + 1},
        422,
        "validation",
        f"`max_new_tokens` must be <= {CAP}, got {CAP + 1}",
    ),
    ("/v1/generate", {"prompt": "a", "temperature": 2.01}, 422, "validation", "<= 2, got 2.01"),
    ("/v1/generate", {"prompt": "a", "temperature": -1}, 422, "validation", ">= 0, got -1"),
    ("/v1/generate", {"prompt": "a", "temperature": "hot"}, 422, "validation", "a number"),
    ("/v1/generate", {"prompt": "a", "top_p": 0}, 422, "validation", "`top_p` must be > 0"),
    ("/v1/generate", {"prompt": "a", "top_p": 1.5}, 422, "validation", "`top_p` must be <= 1"),
    ("/v1/generate", {"prompt": "a", "seed": -1}, 422, "validation", "`seed` must be >= 0"),
    ("/v1/generate", {"prompt": "a", "stop": [1]}, 422, "validation", "list of strings"),
    ("/v1/generate", {"prompt": "a", "stop": [""]}, 422, "validation", "empty string"),
    ("/v1/generate", {"prompt": "a", "stop": ["x"] * 5}, 422, "validation", "at most 4"),
    ("/v1/generate", {"prompt": "a", "extra": 1}, 422, "validation", "unknown field `extra`"),
    (
        "/v1/generate",
        {"prompt": "x" * 40, "max_new_tokens": 30},
        422,
        "validation",
        f"`prompt` tokens + `max_new_tokens` must be <= {CONTEXT}, got 40 + 30 = 70",
    ),
    ("/v1/completions", {"prompt": "a", "n": 2}, 422, "validation", "`n` must be 1"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 422, "validation", "batches are not supported"),
    ("/v1/completions", {"prompt": "a", "echo": True}, 422, "validation", "unknown field `echo`"),
    ("/v1/completions", {"prompt": "a", "stream": "yes"}, 422, "validation", "a boolean"),
    (
        "/v1/completions",
        {"prompt": "a", "max_tokens": CAP + 1},
        422,
        "validation",
        f"`max_tokens` must be <= {CAP}, got {CAP + 1}",
    ),
    ("/v1/completions", {"prompt": "a", "model": "other"}, 404, "model_not_found", "`other`"),
    # A lone surrogate is a valid JSON escape that no tokenizer can encode.
    ("/v1/generate", b'{"prompt": "\\ud800 abc"}', 422, "validation", "`prompt` must be valid"),
    ("/v1/completions", b'{"prompt": "\\udfff"}', 422, "validation", "lone surrogate"),
    ("/v1/generate", b'{"prompt": "a", "stop": ["\\ud800"]}', 422, "validation", "`stop`"),
    ("/v1/completions", b'{"prompt": "a", "model": "\\ud800"}', 422, "validation", "`model`"),
]


def _post(path: str, body: Any, **settings: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        merged = {"max_new_tokens_cap": CAP, "max_body_bytes": 1024, **settings}
        engine = FakeEngine(context_length=CONTEXT)
        async with serving(engine, fake_settings(**merged)) as (client, _):
            if isinstance(body, bytes):
                response = await client.post(path, content=body)
            else:
                response = await client.post(path, json=body)
            metrics = (await client.get("/metrics")).text
            assert not engine.submitted, "a rejected request reached the engine"
            code = response.status_code
            label = f'code="{code}",status="client_error"'
            assert metric(metrics, "inference_requests_total", label) == 1
            return response

    return asyncio.run(go())


@pytest.mark.parametrize(("path", "body", "status", "kind", "says"), CASES)
def test_client_mistake_is_json_4xx_naming_field_and_limit(
    path: str, body: Any, status: int, kind: str, says: str
) -> None:
    response = _post(path, body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    if path == "/v1/generate":
        assert response.json() == {"error": response.json()["error"], "type": kind}
        assert says in response.json()["error"]
    else:  # the OpenAI-compatible shape
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["code"], error["type"]) == (kind, "invalid_request_error")
        assert says in error["message"]
        if kind == "validation" and says.startswith("`"):
            assert error["param"] == says.split("`")[1]


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 50_000])
def test_deeply_nested_json_is_400_invalid_json(body: bytes) -> None:
    for path in ("/v1/generate", "/v1/completions"):
        response = _post(path, body, max_body_bytes=300_000)
        assert response.status_code == 400, response.text
        assert "nested too deeply" in response.text and "invalid_json" in response.text


def test_context_cap_setting_lowers_the_models_context() -> None:
    response = _post("/v1/generate", {"prompt": "x" * 10, "max_new_tokens": 11}, context_cap=20)
    assert response.status_code == 422
    assert "must be <= 20, got 10 + 11 = 21" in response.json()["error"]


def test_body_over_cap_by_content_length_is_413() -> None:
    response = _post("/v1/generate", {"prompt": "x" * 2000})
    assert response.status_code == 413
    assert response.json()["type"] == "payload_too_large"
    assert "must be <= 1024 bytes" in response.json()["error"]


def test_body_over_cap_without_content_length_is_413_by_actual_size() -> None:
    data = json.dumps({"prompt": "x" * 2000}).encode()

    async def chunks():  # type: ignore[no-untyped-def]
        for start in range(0, len(data), 256):
            yield data[start : start + 256]

    async def go() -> httpx.Response:
        async with serving(settings=fake_settings(max_body_bytes=1024)) as (client, _):
            request = client.build_request("POST", "/v1/generate", content=chunks())
            assert "content-length" not in request.headers
            return await client.send(request)

    response = asyncio.run(go())
    assert response.status_code == 413
    assert response.json()["type"] == "payload_too_large"


def test_unknown_route_and_wrong_method_answer_json() -> None:
    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with serving() as (client, _):
            return await client.get("/nope"), await client.get("/v1/generate")

    missing, wrong = asyncio.run(go())
    assert (missing.status_code, missing.json()["type"]) == (404, "not_found")
    assert (wrong.status_code, wrong.json()["type"]) == (405, "method_not_allowed")


def test_openai_routes_answer_openai_shaped_errors_everywhere() -> None:
    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with serving() as (client, _):
            chat = await client.post("/v1/chat/completions", json={"messages": []})
            return chat, await client.delete("/v1/models")

    chat, wrong_method = asyncio.run(go())
    assert chat.status_code == 404
    assert chat.json()["error"]["code"] == "not_found"
    assert "only /v1/completions is" in chat.json()["error"]["message"]
    assert wrong_method.status_code == 405 and "allow" in wrong_method.headers
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_a_whole_number_written_with_a_fraction_is_an_integer() -> None:
    """JSON has one number type; the OpenAPI document's `integer` accepts 4.0, so do we."""

    async def go() -> httpx.Response:
        async with serving() as (client, _):
            body = {"prompt": "a", "max_new_tokens": 4.0, "seed": 7.0}
            return await client.post("/v1/generate", json=body)

    response = asyncio.run(go())
    assert response.status_code == 200, response.text
    assert response.json()["generated_tokens"] == 4
