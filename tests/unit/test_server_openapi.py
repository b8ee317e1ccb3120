"""The OpenAPI document states the limits the server enforces and the media types it answers."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.unit.fake_engine import fake_settings, serving


def _document(**settings: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with serving(settings=fake_settings(**settings)) as (client, _):
            return dict((await client.get("/openapi.json")).json())

    return asyncio.run(go())


def _body(doc: dict[str, Any], path: str) -> dict[str, Any]:
    content = doc["paths"][path]["post"]["requestBody"]["content"]
    return dict(content["application/json"]["schema"]["properties"])


def test_request_bodies_state_every_limit_checked_before_tokenising() -> None:
    doc = _document(max_new_tokens_cap=48)
    for path, tokens in (("/v1/generate", "max_new_tokens"), ("/v1/completions", "max_tokens")):
        props = _body(doc, path)
        assert props["prompt"]["minLength"] == 1
        assert (props[tokens]["minimum"], props[tokens]["maximum"]) == (1, 48)
        seed = props["seed"]["anyOf"][0]
        assert (seed["minimum"], seed["maximum"]) == (0, 2**53 - 1)
        stop_list = props["stop"]["anyOf"][1]
        assert stop_list["maxItems"] == 4 and stop_list["items"]["minLength"] == 1
        assert props["temperature"]["maximum"] == 2 and props["top_p"]["exclusiveMinimum"] == 0
    props = _body(doc, "/v1/completions")
    assert (props["n"]["minimum"], props["n"]["maximum"]) == (1, 1)
    assert props["model"]["anyOf"][0]["enum"] == sorted({"builtin", "fake-model"})
    assert "StreamOptions" in doc["components"]["schemas"]


def test_media_types_and_error_shapes_are_documented() -> None:
    doc = _document()
    completions = doc["paths"]["/v1/completions"]["post"]["responses"]
    assert {"application/json", "text/event-stream"} <= set(completions["200"]["content"])
    assert completions["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/OpenAIErrorBody"
    )
    generate = doc["paths"]["/v1/generate"]["post"]["responses"]
    assert generate["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert set(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert "/v1/chat/completions" not in doc["paths"]  # answered with a 404, not served
