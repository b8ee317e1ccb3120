"""A drain under streams, over real sockets: admitted streams end whole, cut ones end cleanly.

Settings keep ``drain_timeout_s >= request_deadline_s``, so SIGTERM lets every
admitted stream run to its end (or to its deadline) and the server exits 0.
A second signal cuts the drain short: then each stream still running ends
with an OpenAI-shaped error event and ``[DONE]``, is counted as 503, and the
server logs no ``CancelledError``. The server runs in this process (a fake
engine paces the tokens) behind the uvicorn ``mlcicd serve`` builds.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest

from tests.fixtures.threaded_server import ThreadedServer, threaded_server
from tests.unit.fake_engine import FakeEngine, fake_settings, metric

pytestmark = pytest.mark.slow

STREAMS = 4


def _stream(url: str, max_tokens: int, started: threading.Event) -> list[str]:
    """The ``data:`` payloads of one streamed completion, in order."""
    body = {"prompt": "a", "max_tokens": max_tokens, "stream": True}
    events = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                started.set()
    return events


def _start_streams(
    pool: ThreadPoolExecutor, server: ThreadedServer, max_tokens: int
) -> list[Future[list[str]]]:
    flags = [threading.Event() for _ in range(STREAMS)]
    futures = [pool.submit(_stream, server.url, max_tokens, flag) for flag in flags]
    for flag in flags:
        assert flag.wait(10), "a stream did not start"
    return futures


def test_sigterm_lets_every_admitted_stream_finish(caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine(token_delay_s=0.05, max_batch_size=STREAMS)
    settings = fake_settings(request_deadline_s=5.0, drain_timeout_s=5.0)
    with (
        caplog.at_level(logging.INFO),
        threaded_server(engine, settings) as server,
        ThreadPoolExecutor(STREAMS) as pool,
    ):
        futures = _start_streams(pool, server, max_tokens=30)  # 1.5 s each
        server.signal(signal.SIGTERM)
        time.sleep(0.2)
        refused = httpx.post(f"{server.url}/v1/generate", json={"prompt": "a"})
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert httpx.get(f"{server.url}/ready").status_code == 503
        results = [f.result(timeout=15) for f in futures]
        assert server.wait_stopped(15)
    for events in results:
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        assert len(events) == 30 + 2
    assert server.server.exit_code == 0
    assert "CancelledError" not in caplog.text


def test_a_second_signal_ends_running_streams_with_an_error_event_and_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = FakeEngine(token_delay_s=0.05, max_batch_size=STREAMS, context_length=1024)
    with (
        caplog.at_level(logging.INFO),
        threaded_server(engine, fake_settings()) as server,
        ThreadPoolExecutor(STREAMS) as pool,
    ):
        futures = _start_streams(pool, server, max_tokens=400)  # 20 s each
        server.signal(signal.SIGTERM)
        time.sleep(0.2)
        cut_at = time.monotonic()
        server.signal(signal.SIGTERM)
        results = [f.result(timeout=15) for f in futures]
        assert time.monotonic() - cut_at < 3.0
        assert server.wait_stopped(15)
    for events in results:
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert (error["code"], error["type"]) == ("unavailable", "server_error")
    metrics = server.app.state.metrics.render().decode()
    assert metric(metrics, "inference_requests_total", 'code="503",status="error"') == STREAMS
    assert server.server.exit_code == 0
    assert "CancelledError" not in caplog.text
