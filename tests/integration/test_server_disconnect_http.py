"""A client that hangs up on a non-streamed request, over a real socket and uvicorn.

The unit test (tests/unit/test_server_disconnect.py) speaks ASGI directly; this
one checks that uvicorn really delivers the disconnect to a handler that is
waiting for the engine, so the engine's work is cancelled and counted as 499.
A fake engine that takes 50 ms per token makes "the work would have gone on"
measurable; the real model on CPU finishes too fast for that.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures.threaded_server import threaded_server
from tests.unit.fake_engine import FakeEngine, fake_settings, metric

pytestmark = pytest.mark.slow


@pytest.fixture()
def served() -> Iterator[tuple[str, FakeEngine]]:
    engine = FakeEngine(token_delay_s=0.05)
    with threaded_server(engine, fake_settings()) as server:
        yield server.url, engine


def _post_and_hang_up(url: str, path: str, body: dict[str, object], after_s: float) -> None:
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(head + payload)
        time.sleep(after_s)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/generate", {"prompt": "a", "max_new_tokens": 50}),
        ("/v1/completions", {"prompt": "a", "max_tokens": 50}),
    ],
)
def test_hanging_up_cancels_the_generation(
    served: tuple[str, FakeEngine], path: str, body: dict[str, object]
) -> None:
    url, engine = served
    started = time.monotonic()
    _post_and_hang_up(url, path, body, after_s=0.3)  # 50 tokens would take 2.5 s
    while not engine.cancelled and time.monotonic() - started < 2.0:
        time.sleep(0.02)
    assert len(engine.cancelled) == 1, "the engine kept generating for a client that left"
    assert time.monotonic() - started < 2.0
    metrics = httpx.get(f"{url}/metrics").text
    assert metric(metrics, "inference_requests_total", 'code="499",status="client_error"') == 1
    assert metric(metrics, "inference_requests_in_flight") == 0
