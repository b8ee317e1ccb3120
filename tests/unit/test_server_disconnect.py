"""A client that leaves a non-streamed request cancels the engine's work (499).

Driven at the ASGI level, where "the client left" is exactly the
``http.disconnect`` message the server receives; tests/integration checks the
same over a real socket and uvicorn.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.unit.fake_engine import FakeEngine, metric, serving


async def _post_then_leave(
    app: Any,
    path: str,
    body: dict[str, Any],
    leave_after_s: float | None,
    send_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """POST ``body``; hang up after ``leave_after_s`` (None: stay). The messages sent back.

    With ``send_bytes``, only that much of the body is sent before hanging up.
    """
    payload = json.dumps(body).encode()
    declared = len(payload)
    if send_bytes is not None:
        payload = payload[:send_bytes]
    delivered = False
    sent: list[dict[str, Any]] = []
    finished = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            more = send_bytes is not None
            return {"type": "http.request", "body": payload, "more_body": more}
        if leave_after_s is None:
            await finished.wait()
        else:
            await asyncio.sleep(leave_after_s)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            finished.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(declared).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/generate", {"prompt": "a", "max_new_tokens": 50}),
        ("/v1/completions", {"prompt": "a", "max_tokens": 50}),
    ],
)
def test_leaving_a_non_streamed_request_cancels_it_and_counts_499(
    path: str, body: dict[str, Any]
) -> None:
    engine = FakeEngine(token_delay_s=0.05)  # 50 tokens: 2.5 s of work

    async def go() -> tuple[float, list[dict[str, Any]], str]:
        async with serving(engine) as (client, app):
            loop = asyncio.get_running_loop()
            started = loop.time()
            sent = await _post_then_leave(app, path, body, leave_after_s=0.2)
            took = loop.time() - started
            while not engine.cancelled and loop.time() - started < 2.0:
                await asyncio.sleep(0.01)  # the engine drops it at its next step
            await asyncio.sleep(0.05)  # its final event reaches the loop
            return took, sent, (await client.get("/metrics")).text

    took, sent, metrics = asyncio.run(go())
    assert sent[0]["status"] == 499  # written to nobody, but counted as what happened
    assert took < 1.0  # not the 2.5 s the generation would have taken
    assert len(engine.cancelled) == 1
    assert metric(metrics, "inference_requests_total", 'code="499",status="client_error"') == 1
    assert metric(metrics, "inference_requests_in_flight") == 0
    assert metric(metrics, "inference_generated_tokens_total") >= 2  # the work was done


def test_leaving_a_stream_counts_the_tokens_generated_for_it() -> None:
    engine = FakeEngine(token_delay_s=0.05)
    body = {"prompt": "a", "max_tokens": 50, "stream": True}

    async def go() -> tuple[list[dict[str, Any]], str]:
        async with serving(engine) as (client, app):
            sent = await _post_then_leave(app, "/v1/completions", body, leave_after_s=0.3)
            for _ in range(200):
                if engine.cancelled:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            return sent, (await client.get("/metrics")).text

    sent, metrics = asyncio.run(go())
    streamed = sum(b'"text":" w' in m.get("body", b"") for m in sent)
    assert streamed >= 2 and len(engine.cancelled) == 1
    assert metric(metrics, "inference_generated_tokens_total") >= streamed
    assert metric(metrics, "inference_requests_total", 'code="499",status="client_error"') == 1


def test_hanging_up_while_sending_the_body_is_499_not_500() -> None:
    async def go() -> tuple[list[dict[str, Any]], str]:
        async with serving() as (client, app):
            body = {"prompt": "x" * 500}
            sent = await _post_then_leave(app, "/v1/generate", body, 0.05, send_bytes=100)
            return sent, (await client.get("/metrics")).text

    sent, metrics = asyncio.run(go())
    assert sent[0]["status"] == 499
    assert metric(metrics, "inference_requests_total", 'code="499",status="client_error"') == 1
    assert metric(metrics, "inference_requests_total", 'code="500",status="error"') == 0


def test_a_client_that_stays_gets_its_answer() -> None:
    engine = FakeEngine(token_delay_s=0.001)

    async def go() -> list[dict[str, Any]]:
        async with serving(engine) as (_, app):
            return await _post_then_leave(
                app, "/v1/generate", {"prompt": "a", "max_new_tokens": 5}, leave_after_s=None
            )

    sent = asyncio.run(go())
    assert sent[0]["status"] == 200
    assert json.loads(sent[-1]["body"])["generated_tokens"] == 5
    assert not engine.cancelled
