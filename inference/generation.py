"""One request in flight: await the engine's events under a deadline, then shape the answer.

Why separate from the routes: the deadline, time-to-first-token and token
accounting must be the same for ``/v1/generate``, ``/v1/completions`` and its
stream. :class:`GenerationCall` is the only place that reads a handle's events;
whatever ends a call early (deadline, client gone, task cancelled) cancels the
handle so the engine drops the request at its next step.

Timings: ``queue_s`` is arrival until the engine accepted the request (body,
validation, tokenisation, injected latency); the engine's own queue wait is
inside ``ttft_s`` because the engine contract has no "started" event.
``ttft_s`` is arrival to first token, ``total_s`` arrival to finish.

Tokens generated for a call that ended early (client gone, deadline) are still
counted: closing such a call leaves a small task that reads the engine's
final event and adds its ``generated_tokens`` to the counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from inference.api_models import (
    CompletionChoice,
    CompletionResponse,
    GenerateResponse,
    Timings,
    Usage,
)
from inference.engine import Event, FinishEvent, GenerationHandle, TokenEvent
from inference.errors import ApiError
from inference.metrics import ServerMetrics

# nginx's code for "client closed the request": how a stream the client left is counted.
CLIENT_GONE = 499
# How long a closed call waits for the engine's final event to count its tokens.
_ABANDONED_WAIT_S = 30.0
_counting: set[asyncio.Task[None]] = set()


@dataclass(frozen=True)
class Collected:
    finish: FinishEvent
    timings: Timings


class GenerationCall:
    """Reads one handle's events, enforcing the request deadline."""

    def __init__(
        self,
        handle: GenerationHandle,
        arrived: float,
        deadline_s: float,
        metrics: ServerMetrics,
        event_delay_s: float = 0.0,
    ) -> None:
        self.handle = handle
        self.event_delay_s = event_delay_s  # fault injection: see inference.faults
        self.arrived = arrived
        self.accepted = time.monotonic()
        self.deadline_s = deadline_s
        self.deadline = arrived + deadline_s
        self.first_token_at: float | None = None
        self._metrics = metrics
        self._events = handle.events()
        self.done = False

    async def next_event(self) -> Event:
        """The next event; raises ApiError 504 (deadline) or 500/503 (engine gave up)."""
        remaining = self.deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                if self.event_delay_s:
                    await asyncio.sleep(self.event_delay_s)
                event = await anext(self._events)
        except TimeoutError:
            self.close()
            raise ApiError(
                504,
                "timeout",
                f"request deadline of {self.deadline_s:g}s passed; the request was cancelled",
            ) from None
        except BaseException:
            self.close()
            raise
        now = time.monotonic()
        if isinstance(event, TokenEvent) and self.first_token_at is None:
            self.first_token_at = now
            self._metrics.ttft.observe(now - self.arrived)
        if isinstance(event, FinishEvent):
            self.done = True
            self._metrics.generated_tokens.inc(event.generated_tokens)
            if event.reason == "error":
                raise ApiError(500, "internal", f"generation failed: {event.error or 'unknown'}")
            if event.reason == "cancelled":
                raise ApiError(503, "unavailable", "the request was cancelled by the server")
        return event

    async def first_event(self) -> Event:
        """Wait for the first event before answering a stream, so early errors get a status."""
        return await self.next_event()

    async def collect(self) -> Collected:
        while True:
            event = await self.next_event()
            if isinstance(event, FinishEvent):
                return Collected(event, self.timings())

    def timings(self) -> Timings:
        now = time.monotonic()
        first = self.first_token_at if self.first_token_at is not None else now
        return Timings(
            queue_s=round(self.accepted - self.arrived, 6),
            ttft_s=round(first - self.arrived, 6),
            total_s=round(now - self.arrived, 6),
        )

    def close(self) -> None:
        """Cancel the engine's work unless it already finished; its tokens are still counted."""
        if not self.done:  # its final event is unread (or yet to come)
            if not self.handle.finished:
                self.handle.cancel()
            task = asyncio.get_running_loop().create_task(self._count_abandoned())
            _counting.add(task)
            task.add_done_callback(_counting.discard)
        self.done = True

    async def _count_abandoned(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_ABANDONED_WAIT_S):
                async for event in self.handle.events():
                    if isinstance(event, FinishEvent):
                        self._metrics.generated_tokens.inc(event.generated_tokens)


async def collect_unless_client_leaves(
    call: GenerationCall, client_left: Callable[[], Awaitable[None]]
) -> Collected:
    """``call.collect()``, unless the client disconnects first: then cancel the work (499).

    Why: a non-streamed answer is written only at the end, so nothing else would
    notice a client that left, and the engine would go on generating for nobody
    until the request finished or its deadline passed. (A stream notices on its
    next write: see :class:`TrackedStream`.)
    """
    collecting = asyncio.ensure_future(call.collect())
    leaving = asyncio.ensure_future(client_left())
    try:
        await asyncio.wait({collecting, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
        if not collecting.done():
            collecting.cancel()
            call.close()
    if collecting.done() and not collecting.cancelled():
        return collecting.result()
    raise ApiError(
        CLIENT_GONE, "client_gone", "the client closed the connection; the request was cancelled"
    )


def generate_body(done: Collected) -> GenerateResponse:
    reason = done.finish.reason
    assert reason in ("length", "stop", "eos")  # errors were raised by next_event
    return GenerateResponse(
        text=done.finish.text,
        prompt_tokens=done.finish.prompt_tokens,
        generated_tokens=done.finish.generated_tokens,
        finish_reason=reason,
        timings=done.timings,
    )


def _openai_reason(reason: str) -> Literal["length", "stop"]:
    return "length" if reason == "length" else "stop"


def _usage(finish: FinishEvent) -> Usage:
    return Usage(
        prompt_tokens=finish.prompt_tokens,
        completion_tokens=finish.generated_tokens,
        total_tokens=finish.prompt_tokens + finish.generated_tokens,
    )


def to_completion(done: Collected, model: str) -> CompletionResponse:
    return CompletionResponse(
        id=f"cmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=model,
        choices=[
            CompletionChoice(
                text=done.finish.text, finish_reason=_openai_reason(done.finish.reason)
            )
        ],
        usage=_usage(done.finish),
    )


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


@dataclass
class StreamOutcome:
    """The HTTP code the stream counts as; stays 499 unless the stream ran to its end."""

    code: int = CLIENT_GONE


async def completion_stream(
    call: GenerationCall,
    first: Event,
    model: str,
    outcome: StreamOutcome,
    include_usage: bool = False,
) -> AsyncIterator[bytes]:
    """OpenAI-style SSE: one ``data: {...}`` chunk per token, a final chunk, ``data: [DONE]``.

    With ``include_usage`` (OpenAI's ``stream_options``), a last chunk with no
    choices carries the usage, as OpenAI sends it. An error after the 200 header
    (deadline, engine failure, a drain cut short) becomes a last
    ``data: {"error": {"message", "type", "param", "code"}}`` event before ``[DONE]``.
    """
    base: dict[str, Any] = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion"}
    base.update(created=int(time.time()), model=model)
    event = first
    try:
        while True:
            if isinstance(event, TokenEvent):
                if event.text:
                    choice = {"text": event.text, "index": 0, "logprobs": None}
                    yield _sse({**base, "choices": [{**choice, "finish_reason": None}]})
            else:
                final = {"text": "", "index": 0, "logprobs": None}
                final["finish_reason"] = _openai_reason(event.reason)
                yield _sse({**base, "choices": [final]})
                if include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage(event).model_dump()})
                yield _sse("[DONE]")
                outcome.code = 200
                return
            event = await call.next_event()
    except ApiError as exc:
        outcome.code = exc.status
        yield _sse(exc.body("openai"))
        yield _sse("[DONE]")
    finally:
        call.close()


class TrackedStream(StreamingResponse):
    """A streaming response that always closes its generator and reports how it ended."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        outcome: StreamOutcome,
        on_end: Callable[[int], None],
    ) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._content = content
        self._outcome = outcome
        self._on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._content, "aclose", None)
            if aclose is not None:
                await aclose()
            self._on_end(self._outcome.code)
