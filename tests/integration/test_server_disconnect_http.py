"""A client that hangs up on a non-streamed request, over a real socket and uvicorn.

The unit test (tests/unit/test_server_disconnect.py) speaks ASGI directly; this
one checks that uvicorn really delivers the disconnect to a handler that is
waiting for the engine, so the engine's work is cancelled and counted as 499.
A fake engine that takes 50 ms per token makes "the work would have gone on"
measurable; the built-in model on CPU finishes too fast for that. The torch
engine is checked too, on the GPT-2-small-shaped model, whose decode steps take
milliseconds each on CPU: a long answer outlives the client by seconds.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from inference.loader import load_model
from inference.torch_engine import TorchEngine
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


def test_hanging_up_stops_the_torch_engine_generating_for_that_client() -> None:
    """The real engine, not a fake: the request is cancelled at the next step, its
    tokens stop, and the engine serves the next request."""
    loaded = load_model("gpt2-small-random", device="cpu", dtype="fp32")
    engine = TorchEngine(loaded, max_batch_size=4, batch_window_s=0.005, queue_cap=8)
    with threaded_server(engine, fake_settings(model="gpt2-small-random")) as server:
        url = server.url
        steps: list[int] = []  # the engine's own decode steps: the work, seen from inside
        engine.observe_batches(steps.append)
        body = {"prompt": "a", "max_tokens": 500, "min_tokens": 500, "stream": True}
        started = time.monotonic()
        _post_and_hang_up(url, "/v1/completions", body, after_s=0.5)
        gone = 'code="499",status="client_error"'
        left = False
        while not left and time.monotonic() - started < 20:
            time.sleep(0.05)
            metrics = httpx.get(f"{url}/metrics").text
            left = metric(metrics, "inference_requests_total", gone) == 1
        assert left, "no 499 within 20 s"
        assert metric(metrics, "inference_requests_in_flight") == 0
        done = len(steps)
        time.sleep(0.5)
        assert len(steps) == done, "the engine kept generating for a client that left"
        assert 0 < done < 250, f"{done} of 500 steps: cancelled late"
        answer = httpx.post(f"{url}/v1/completions", json={"prompt": "a", "max_tokens": 3})
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3
