"""How a failed request reads: one typed :class:`ApiError`, two JSON shapes.

Why two shapes: ``/v1/generate`` keeps its documented flat body
``{"error": message, "type": kind}``, while the OpenAI-compatible endpoints
(``/v1/completions``, ``/v1/models``, ``/v1/chat/...``) answer OpenAI's
``{"error": {"message", "type", "param", "code"}}`` so that the official
clients show the message. ``code`` there is our ``kind``, ``type`` is OpenAI's
coarse class (``invalid_request_error``, ``rate_limit_error``,
``server_error``) and ``param`` the offending field, when there is one.

Messages are made safe to encode as UTF-8 (a lone surrogate a client sent
is written as ``\\udXXX``), so echoing a bad value can never turn a 4xx into
a 500 at the last step.

Left out: OpenAI's ``organization``/``quota`` error kinds (no accounts here).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ValidationError

ErrorType = Literal[
    "validation",
    "invalid_json",
    "payload_too_large",
    "overloaded",
    "timeout",
    "request_timeout",
    "unavailable",
    "internal",
    "injected_fault",
    "not_found",
    "method_not_allowed",
    "model_not_found",
    "client_gone",
]
ErrorStyle = Literal["generate", "openai"]
OPENAI_PATHS = ("/v1/completions", "/v1/models", "/v1/chat")


class ErrorBody(BaseModel):
    """``/v1/generate``'s error shape (and that of routes outside the OpenAI API)."""

    error: str
    type: ErrorType


class OpenAIErrorDetail(BaseModel):
    message: str
    type: Literal["invalid_request_error", "rate_limit_error", "server_error"]
    param: str | None
    code: ErrorType


class OpenAIErrorBody(BaseModel):
    """The OpenAI-compatible endpoints' error shape."""

    error: OpenAIErrorDetail


def safe_text(text: str) -> str:
    """``text`` with anything UTF-8 cannot carry (lone surrogates) escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def style_of(path: str) -> ErrorStyle:
    return "openai" if path.startswith(OPENAI_PATHS) else "generate"


class ApiError(Exception):
    """A request's failure: its HTTP status, kind, message and (if any) the field at fault."""

    def __init__(
        self,
        status: int,
        type_: ErrorType,
        message: str,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        message = safe_text(message)
        super().__init__(message)
        self.status = status
        self.type: ErrorType = type_
        self.message = message
        self.headers = headers or {}
        self.param = safe_text(param) if param is not None else None

    def body(self, style: ErrorStyle = "generate") -> dict[str, Any]:
        if style == "generate":
            return {"error": self.message, "type": self.type}
        return {"error": self.openai_detail()}

    def openai_detail(self) -> dict[str, Any]:
        if self.status == 429:
            kind = "rate_limit_error"
        elif self.status >= 500:
            kind = "server_error"
        else:
            kind = "invalid_request_error"
        return {"message": self.message, "type": kind, "param": self.param, "code": self.type}


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
    "dict_type": "an object",
    "model_type": "an object",
}


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    if value is None:
        return "null"
    return names.get(type(value), "object")


def _describe(item: Any, field: str) -> str:
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
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return f"`{field}` must not be empty, got {got!r}"
    if kind == "string_unicode":
        return f"`{field}` must be valid Unicode (it contains a lone surrogate)"
    if kind in _TYPE_NAMES:
        return f"`{field}` must be {_TYPE_NAMES[kind]}, got {_json_type(got)}"
    message = str(item["msg"]).removeprefix("Value error, ")
    if kind == "value_error":
        shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:77] + "..."
        return f"`{field}` {message}, got {shown}"
    return f"`{field}`: {message}"


def validation_error(error: ValidationError) -> ApiError:
    """A 422 for the first problem, naming the field and the limit (TGI style)."""
    item = error.errors()[0]
    loc = item["loc"]
    if not loc and item["type"] == "model_type":
        return ApiError(422, "validation", "request body must be a JSON object")
    field = ".".join(str(part) for part in loc) or "body"
    param = str(loc[0]) if loc else None
    return ApiError(422, "validation", _describe(item, field), param=param)
