"""Request and response models of the HTTP API, how bodies are read, and how errors read.

Why strict: a client that sends ``"5"`` for an integer, or a field we do not
support, should learn so at once rather than get a silently different result.
Both request models forbid unknown fields and use strict types (an integer
is accepted where a float is expected, nothing else is coerced).

Accepted ranges (checked here; the server adds the limits that depend on its
settings and model, ``max_new_tokens <= cap`` and prompt + new tokens <= context):

- ``prompt``: a non-empty string.
- ``max_new_tokens`` / ``max_tokens``: an integer >= 1 (default 16).
- ``temperature``: [0, 2]; 0 means greedy. Default 0 for ``/v1/generate``,
  1 for ``/v1/completions`` (OpenAI's default).
- ``top_p``: (0, 1], default 1.
- ``stop``: a string or up to 4 non-empty strings.
- ``seed``: an integer in [0, 2**63 - 1].

``/v1/completions`` accepts OpenAI's ``model`` (the served model's name or
reference, or omitted), ``prompt`` (one string; token arrays and batches are
rejected), ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``,
``stream``, ``n`` (1 only), ``user`` (ignored) and vLLM's ``min_tokens``
(a floor on new tokens, capped at ``max_tokens``). Everything else OpenAI
defines (``logprobs``, ``echo``, ``best_of``, ``suffix``, penalties,
``logit_bias``, ``stream_options``) is rejected as an unknown field.

Bodies are read by :func:`read_body` (413 over the cap, by ``Content-Length``
and by the bytes that really arrive) and parsed by :func:`parse_request`
(400 for malformed JSON, including ``NaN``; 422 naming the first bad field).
Any content type is accepted as long as the body is JSON.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request

DEFAULT_MAX_NEW_TOKENS = 16
MAX_STOP_SEQUENCES = 4
MAX_SEED = 2**63 - 1

ErrorType = Literal[
    "validation",
    "invalid_json",
    "payload_too_large",
    "overloaded",
    "timeout",
    "unavailable",
    "internal",
    "injected_fault",
    "not_found",
    "method_not_allowed",
    "model_not_found",
    "client_gone",
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    prompt: str
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_shape(cls, value: Any) -> Any:
        ok = value is None or isinstance(value, str)
        ok = ok or (isinstance(value, list) and all(isinstance(item, str) for item in value))
        if not ok:
            raise ValueError("must be a string or a list of strings")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_sequences(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > MAX_STOP_SEQUENCES:
            raise ValueError(f"must have at most {MAX_STOP_SEQUENCES} sequences")
        if any(not item for item in items):
            raise ValueError("must not contain an empty string")
        return value

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class GenerateRequest(_Request):
    """``POST /v1/generate``."""

    max_new_tokens: int = Field(default=DEFAULT_MAX_NEW_TOKENS, ge=1)

    @property
    def new_tokens(self) -> int:
        return self.max_new_tokens


class CompletionRequest(_Request):
    """``POST /v1/completions`` (the OpenAI subset described in the module docstring)."""

    model: str | None = None
    max_tokens: int = Field(default=DEFAULT_MAX_NEW_TOKENS, ge=1)
    # vLLM's extension: a floor on new tokens (EOS suppressed until reached), so a
    # benchmark can make every request do the same work (min = max).
    min_tokens: int = Field(default=0, ge=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    stream: bool = False
    n: int = 1
    user: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        if isinstance(value, list):
            raise ValueError("must be a string (token arrays and batches are not supported)")
        return value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("must be 1 (one completion per request)")
        return value

    @property
    def new_tokens(self) -> int:
        return self.max_tokens


class Timings(BaseModel):
    queue_s: float
    ttft_s: float
    total_s: float


class GenerateResponse(BaseModel):
    text: str
    prompt_tokens: int
    generated_tokens: int
    finish_reason: Literal["length", "stop", "eos"]
    timings: Timings


class CompletionChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: None = None
    finish_reason: Literal["length", "stop"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mlcicd"
    revision: str
    context_length: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    error: str
    type: ErrorType


# pydantic error type -> how the limit reads in a message.
_BOUNDS = {
    "greater_than": ("must be >", "gt"),
    "greater_than_equal": ("must be >=", "ge"),
    "less_than": ("must be <", "lt"),
    "less_than_equal": ("must be <=", "le"),
}
_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "a list",
}


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    if value is None:
        return "null"
    return names.get(type(value), "object")


def describe_validation_error(error: ValidationError) -> str:
    """One message for the first problem, naming the field and the limit (TGI style)."""
    item = error.errors()[0]
    field = ".".join(str(part) for part in item["loc"]) or "body"
    kind = item["type"]
    got = item.get("input")
    ctx = item.get("ctx") or {}
    if kind == "missing":
        return f"`{field}` is required"
    if kind == "extra_forbidden":
        return f"unknown field `{field}`"
    if kind in _BOUNDS:
        words, key = _BOUNDS[kind]
        return f"`{field}` {words} {_number(ctx.get(key))}, got {got!r}"
    if kind in _TYPE_NAMES:
        return f"`{field}` must be {_TYPE_NAMES[kind]}, got {_json_type(got)}"
    if kind == "model_type":
        return "request body must be a JSON object"
    message = str(item["msg"]).removeprefix("Value error, ")
    if kind == "value_error":
        shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:77] + "..."
        return f"`{field}` {message}, got {shown}"
    return f"`{field}`: {message}"


class ApiError(Exception):
    """A request's failure: its HTTP status and its ``{"error", "type"}`` body."""

    def __init__(
        self,
        status: int,
        type_: ErrorType,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type: ErrorType = type_
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.message, "type": self.type}


RequestT = TypeVar("RequestT", bound=BaseModel)


async def read_body(request: Request, cap: int) -> bytes:
    """The body, refusing more than ``cap`` bytes by header and by what actually arrives."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid_json", f"bad Content-Length header: {declared!r}")
        if int(declared) > cap:
            raise ApiError(
                413, "payload_too_large", f"request body must be <= {cap} bytes, got {declared}"
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ApiError(
                413, "payload_too_large", f"request body must be <= {cap} bytes, got more"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client closes the connection; call it once the body has been read."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_request(body: bytes, model: type[RequestT]) -> RequestT:
    try:
        data = json.loads(body, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "validation", describe_validation_error(exc)) from exc
