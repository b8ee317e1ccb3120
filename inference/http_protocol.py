"""uvicorn's h11 protocol with a header timeout and a connection cap.

Why: uvicorn times out only idle keep-alive connections *after* a response.
A connection that sends nothing, or stops halfway through its headers, is
otherwise held forever (one file descriptor each), and enough of them starve
the server. This protocol arms a timer whenever the server is waiting for a
request's head (a new connection; the first bytes of a next request on a
kept-alive one) and disarms it once the head is complete:

- a connection that sent nothing by then is closed silently (an idle
  connection is not a request);
- one that sent part of a head gets ``408`` (JSON, ``Connection: close``) and
  is counted through ``on_timeout`` (code 408, a client error);
- a connection beyond ``max_connections`` is closed as soon as it is accepted.

The body has its own timeout, enforced where the body is read
(:func:`inference.api_models.read_body`), so it answers through the app.

Left out: httptools (not installed here; h11 is what uvicorn picks) and
per-client limits (the ingress' job).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_BODY = json.dumps(
    {"error": "the request head did not arrive in time", "type": "request_timeout"}
).encode()
REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    + f"content-length: {len(_BODY)}\r\n".encode()
    + b"connection: close\r\n\r\n"
    + _BODY
)


class TimedH11Protocol(H11Protocol):
    """See the module docstring; configure with :func:`timed_protocol`."""

    header_timeout_s = 10.0
    max_connections = 1024
    on_timeout: Callable[[], None] = staticmethod(lambda: None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        waiting = self.conn.their_state is h11.IDLE
        if waiting:
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._head_bytes = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self._head_bytes:
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
            self.on_timeout()
        self.transport.close()


def timed_protocol(
    header_timeout_s: float, max_connections: int, on_timeout: Callable[[], None]
) -> type[TimedH11Protocol]:
    """A :class:`TimedH11Protocol` subclass with these settings (uvicorn takes a class)."""
    return type(
        "ConfiguredH11Protocol",
        (TimedH11Protocol,),
        {
            "header_timeout_s": header_timeout_s,
            "max_connections": max_connections,
            "on_timeout": staticmethod(on_timeout),
        },
    )
