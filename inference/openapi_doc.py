"""The OpenAPI document says what the server enforces, so a fuzzer and a client can trust it.

Why by hand: the generation routes read their own bodies (to enforce the size
cap and the body timeout before parsing), so FastAPI cannot infer the request
schema, and some limits depend on the settings (the ``max_tokens`` cap, the
served model's names). :func:`request_body_doc` documents the body with every
limit the server checks before tokenising: a non-empty prompt, at most 4
non-empty stop strings, ``n`` = 1, the new-token cap, the seed range.

Left out (no JSON Schema can say it): prompt tokens + new tokens <= context,
which answers 422 naming both numbers.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from inference.api_models import MAX_STOP_SEQUENCES
from inference.errors import ErrorBody, OpenAIErrorBody

ERROR_CODES = (400, 404, 408, 413, 422, 429, 500, 503, 504)
_STOP = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "maxItems": MAX_STOP_SEQUENCES,
        },
        {"type": "null"},
    ],
    "default": None,
    "title": "Stop",
}


# Each server-sent event (OpenAPI < 3.2: ``schema`` describes one event): its
# ``data`` is a JSON chunk, an error ``{"error": {...}}``, or ``[DONE]``.
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}


def error_responses(openai: bool) -> dict[int | str, dict[str, Any]]:
    model = OpenAIErrorBody if openai else ErrorBody
    return {code: {"model": model} for code in ERROR_CODES}


def request_body_doc(
    model: type[BaseModel],
    new_tokens_cap: int,
    model_names: frozenset[str],
    defs: dict[str, Any],
    omit: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """``openapi_extra`` for a body the route reads itself; nested models go into ``defs``.

    ``omit``: fields the serving engine refuses (``unsupported_fields``), left out
    of the document, so that every body the document allows is one the server takes.
    """
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs.update(schema.pop("$defs", {}))
    props = schema["properties"]
    for name in omit:
        props.pop(name, None)
    props["stop"] = _STOP
    for name in ("max_tokens", "max_new_tokens"):
        if name in props:
            props[name]["maximum"] = new_tokens_cap
    if "n" in props:
        props["n"].update(minimum=1, maximum=1)
    if "model" in props:
        names = sorted(model_names)
        props["model"]["anyOf"] = [{"type": "string", "enum": names}, {"type": "null"}]
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


def completion_responses() -> dict[int | str, dict[str, Any]]:
    """JSON for a plain completion (``response_model``), server-sent events for ``stream: true``."""
    responses = error_responses(openai=True)
    responses[200] = {
        "description": "The completion (JSON), or with `stream: true` a text/event-stream "
        "of `data: {chunk}` lines ending with `data: [DONE]`.",
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    }
    return responses


METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


def install(app: FastAPI, defs: dict[str, Any]) -> None:
    """Add the nested request models to ``components.schemas`` once the document is built."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(defs)
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]
