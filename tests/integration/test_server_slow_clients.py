"""Slow, silent and vanishing clients over real sockets: timed out, capped, counted as 4xx.

The server runs in this process behind real uvicorn sockets, configured as
``mlcicd serve`` configures it (tests/fixtures/threaded_server.py), in front
of a fake engine, so that timings are the server's own.
"""

from __future__ import annotations

import logging
import socket
import statistics
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures.threaded_server import ThreadedServer, threaded_server
from tests.unit.fake_engine import FakeEngine, fake_settings, metric

pytestmark = pytest.mark.slow

HEAD = "POST /v1/generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"


@pytest.fixture()
def served(request: pytest.FixtureRequest) -> Iterator[ThreadedServer]:
    overrides = {"header_timeout_s": 0.5, "body_timeout_s": 0.5, **getattr(request, "param", {})}
    settings = fake_settings(**overrides)
    with threaded_server(FakeEngine(queue_cap=64), settings) as server:
        yield server


def _connect(server: ThreadedServer) -> socket.socket:
    conn = socket.create_connection((server.host, server.port), timeout=5)
    conn.settimeout(5)
    return conn


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _counted(server: ThreadedServer, code: int, status: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return metric(text, "inference_requests_total", f'code="{code}",status="{status}"')


def test_a_silent_connection_is_closed_after_the_header_timeout(served: ThreadedServer) -> None:
    started = time.monotonic()
    with _connect(served) as conn:
        assert _read_all(conn) == b""  # closed, nothing written: an idle connection
    assert 0.4 < time.monotonic() - started < 2.0
    assert _counted(served, 408, "client_error") == 0


def test_a_head_stopped_halfway_gets_408_and_counts_as_a_client_error(
    served: ThreadedServer,
) -> None:
    with _connect(served) as conn:
        conn.sendall(HEAD.encode())  # no blank line: the head never ends
        answer = _read_all(conn)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"type": "request_timeout"' in answer
    assert _counted(served, 408, "client_error") == 1


def test_a_trickled_body_gets_408_not_504(served: ThreadedServer) -> None:
    started = time.monotonic()
    with _connect(served) as conn:
        conn.sendall(f"{HEAD}Content-Length: 200\r\n\r\n".encode())
        try:
            for _ in range(20):  # 10 bytes every 0.1 s: 2 s for the whole body
                conn.sendall(b" " * 10)
                time.sleep(0.1)
        except OSError:
            pass  # the server answered and closed
        answer = _read_all(conn)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"did not arrive within 0.5s" in answer
    assert time.monotonic() - started < 1.5
    assert _counted(served, 408, "client_error") == 1
    assert _counted(served, 504, "error") == 0


def test_hanging_up_while_sending_the_body_is_499(
    served: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO), _connect(served) as conn:
        conn.sendall(f"{HEAD}Content-Length: 1000\r\n\r\n".encode() + b'{"prompt": "' + b"x" * 90)
        time.sleep(0.1)
    deadline = time.monotonic() + 2
    while _counted(served, 499, "client_error") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _counted(served, 499, "client_error") == 1
    assert _counted(served, 500, "error") == 0
    assert "ClientDisconnect" not in caplog.text and "Traceback" not in caplog.text


@pytest.mark.parametrize("served", [{"header_timeout_s": 2.0}], indirect=True)
def test_normal_requests_keep_their_latency_while_200_slow_connections_are_held(
    served: ThreadedServer,
) -> None:
    body = {"prompt": "a", "max_new_tokens": 2}

    def latencies(client: httpx.Client, count: int) -> list[float]:
        took = []
        for _ in range(count):
            started = time.monotonic()
            assert client.post(f"{served.url}/v1/generate", json=body).status_code == 200
            took.append(time.monotonic() - started)
        return took

    with httpx.Client(timeout=5) as client:
        baseline = statistics.median(latencies(client, 20))
        held = [_connect(served) for _ in range(200)]
        for conn in held:
            conn.sendall(HEAD.encode())
        loaded = latencies(client, 20)
    assert statistics.median(loaded) < 3 * baseline + 0.02, (baseline, loaded)
    assert max(loaded) < 0.5
    # ...and the held connections are let go when their head times out.
    answers = [_read_all(conn) for conn in held]
    for conn in held:
        conn.close()
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers)
    assert _counted(served, 408, "client_error") == 200


@pytest.mark.parametrize(
    "served", [{"max_connections": 20, "header_timeout_s": 30.0}], indirect=True
)
def test_connections_beyond_the_cap_are_closed_at_once(served: ThreadedServer) -> None:
    conns = [_connect(served) for _ in range(25)]
    time.sleep(0.2)
    closed = 0
    for conn in conns:
        conn.settimeout(0.2)
        try:
            closed += conn.recv(1) == b""
        except TimeoutError:
            pass  # still open, waiting for its head
        finally:
            conn.close()
    assert closed == 5
