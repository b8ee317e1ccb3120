"""Request and response models of the HTTP API, and how bodies are read and parsed.

Why strict: a client that sends ``"5"`` for an integer, or a field we do not
support, should learn so at once rather than get a silently different result.
Both request models forbid unknown fields and use strict types (an integer
is accepted where a float is expected, and a number with no fraction such as
``16.0`` where an integer is, as JSON Schema reads them; nothing else is
coerced).

Accepted ranges (checked here; the server adds the limits that depend on its
settings and model, ``max_new_tokens <= cap`` and prompt + new tokens <= context):

- ``prompt``: a non-empty string of valid Unicode (no lone surrogates).
- ``max_new_tokens`` / ``max_tokens``: an integer >= 1 (default 16).
- ``temperature``: [0, 2]; 0 means greedy (and so does anything below
  ``inference.engine.GREEDY_BELOW``). Default 0 for ``/v1/generate``,
  1 for ``/v1/completions`` (OpenAI's default).
- ``top_p``: (0, 1], default 1.
- ``stop``: a string or up to 4 non-empty strings.
- ``seed``: an integer in [0, 2**53 - 1].

``/v1/completions`` accepts OpenAI's ``model`` (the served model's name or
reference, or omitted), ``prompt`` (one string; token arrays and batches are
rejected), ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``,
``stream``, ``stream_options`` (``include_usage``; ignored unless ``stream``),
``n`` (1 only), ``user`` (ignored) and vLLM's ``min_tokens`` (a floor on new
tokens, capped at ``max_tokens``). Everything else OpenAI defines
(``logprobs``, ``echo``, ``best_of``, ``suffix``, penalties, ``logit_bias``)
is rejected as an unknown field.

Bodies are read by :func:`read_body` (413 over the cap, by ``Content-Length``
and by the bytes that really arrive; 408 when the body takes longer than its
timeout; 499 when the client hangs up halfway) and parsed by
:func:`parse_request` (400 for malformed or too deeply nested JSON, including
``NaN``; 422 naming the first bad field). Any content type is accepted as
long as the body is JSON.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.requests import ClientDisconnect, Request

from inference.errors import ApiError, validation_error

DEFAULT_MAX_NEW_TOKENS = 16
MAX_STOP_SEQUENCES = 4
# JSON's safe integer range: every client (and JSON Schema validator) reads it exactly.
MAX_SEED = 2**53 - 1


# JSON has one number type: 16.0 is the integer 16 (as JSON Schema reads it), 16.5 is not.
_INTEGER_FIELDS = ("max_new_tokens", "max_tokens", "min_tokens", "n", "seed")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _integral_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        whole = {
            key: int(value)
            for key, value in data.items()
            if key in _INTEGER_FIELDS and isinstance(value, float) and value.is_integer()
        }
        return {**data, **whole} if whole else data

    prompt: str = Field(min_length=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)

    @field_validator("prompt")
    @classmethod
    def _prompt_unicode(cls, value: str) -> str:
        return _valid_unicode(value)

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
        for item in items:
            _valid_unicode(item)
        return value

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


def _valid_unicode(value: str) -> str:
    """Refuse lone surrogates (valid JSON escapes, but no tokenizer can encode them)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it contains a lone surrogate)") from None
    return value


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``: ``include_usage`` adds a last chunk with the usage."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    include_usage: bool = False


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
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None

    @field_validator("model", "user")
    @classmethod
    def _names_unicode(cls, value: str | None) -> str | None:
        return None if value is None else _valid_unicode(value)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

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
    # Torch threads the engine computes with; None for an engine that does not say.
    threads: int | None = None
    # The process's C allocator, as its memory map shows it (inference/allocator.py).
    allocator: str | None = None
    # Which code runs a decode step ("gpt2": inference/gpt2_decode.py; "model";
    # "ctranslate2").
    decode_step: str | None = None
    # Which engine generates ("torch" or "ctranslate2": inference/engine_factory.py).
    engine: str | None = None
    # How the CTranslate2 engine spends its threads, measured at start
    # (inference/ct2_lanes.py); None for the torch engine.
    arrangement: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


RequestT = TypeVar("RequestT", bound=BaseModel)


async def read_body(request: Request, cap: int, timeout_s: float) -> bytes:
    """The body, refusing more than ``cap`` bytes (by header and by what arrives).

    Also 408 when the whole body takes longer than ``timeout_s`` (a client
    trickling bytes must not hold a request open), and 499 when the client
    hangs up before sending all of it.
    """
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
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise ApiError(
                        413, "payload_too_large", f"request body must be <= {cap} bytes, got more"
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"the request body did not arrive within {timeout_s:g}s",
            headers={"Connection": "close"},
        ) from None
    except ClientDisconnect:
        raise ApiError(
            499, "client_gone", "the client closed the connection while sending the body"
        ) from None
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
    except RecursionError:
        raise ApiError(400, "invalid_json", "request body is nested too deeply") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from exc
