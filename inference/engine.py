"""The contract between the HTTP server and whatever generates tokens.

Why a contract: the server (validation, queueing, deadlines, metrics, drain) is
tested with a fake engine and no torch, and the torch engine is tested without
HTTP. Both sides meet here and nowhere else.

Threading model: an engine owns one worker thread that runs the model. The
server, on the asyncio event loop, calls :meth:`Engine.submit`, which never
blocks; events travel back through the :class:`GenerationHandle`, which the
engine feeds with ``loop.call_soon_threadsafe``. A failure inside one request
finishes that request with an error event; it never kills the worker.

Left out on purpose: tokenisation of chat templates, logprobs, beam search.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

# Below this temperature a request is greedy, in every engine: softmax(x / t) is
# already one-hot in float32 for any logit gap the models produce, and smaller
# values only risk overflow (the torch sampler: inference/sampling.py).
GREEDY_BELOW = 1e-5

FinishReason = Literal["length", "stop", "eos", "cancelled", "error"]


class QueueFullError(Exception):
    """The engine's bounded queue is full; the server answers 429."""


class EngineStoppedError(Exception):
    """The engine is draining or stopped; the server answers 503."""


class UnsupportedRequestError(ValueError):
    """A request field this engine cannot honour; the server answers 422 naming ``field``.

    An engine that raises it lists the field in ``unsupported_fields``, so the
    server's OpenAPI document leaves the field out and a client can know."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class GenerationParams:
    """One validated request, already tokenised by the server."""

    prompt: str
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class TokenEvent:
    """New text for the client; ``text`` may be empty while a multi-byte char is incomplete."""

    text: str
    token_id: int


@dataclass(frozen=True)
class FinishEvent:
    reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    text: str
    error: str | None = None


Event = TokenEvent | FinishEvent


@dataclass
class GenerationHandle:
    """The server's view of one request in flight.

    The engine thread calls :meth:`push` (thread-safe); the server iterates
    :meth:`events` on the loop. :meth:`cancel` marks the request so the engine
    drops it at its next step (deadline passed or client gone).
    """

    params: GenerationParams
    loop: asyncio.AbstractEventLoop
    _queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    finished: bool = False

    def push(self, event: Event) -> None:
        if isinstance(event, FinishEvent):
            self.finished = True
        # A closed loop (server shut down) raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def cancel(self) -> None:
        self.cancelled = True

    async def events(self) -> AsyncIterator[Event]:
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, FinishEvent):
                return


class Engine(Protocol):
    """What the server needs from a generator."""

    @property
    def model_name(self) -> str: ...

    @property
    def revision(self) -> str: ...

    @property
    def context_length(self) -> int: ...

    @property
    def queue_depth(self) -> int:
        """Requests submitted and not yet running."""
        ...

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet finished (queued or running)."""
        ...

    def count_tokens(self, text: str) -> tuple[int, ...]:
        """Token ids of ``text`` as the model will see it."""
        ...

    def observe_batches(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(batch_size)`` from the worker after each forward pass."""
        ...

    def start(self) -> None:
        """Start the worker thread and warm the model up; blocks until ready."""
        ...

    def submit(self, params: GenerationParams, loop: asyncio.AbstractEventLoop) -> GenerationHandle:
        """Queue a request; never blocks. Raises QueueFullError, EngineStoppedError or
        UnsupportedRequestError."""
        ...

    def stop(self) -> None:
        """Refuse new work, let the worker finish what it holds, then join it."""
        ...
