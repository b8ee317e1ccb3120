"""A fake :class:`inference.engine.Engine` for the server's unit tests (no torch).

Why a fake here: the server's own logic (validation, queueing, deadlines,
drain, metrics, streaming) is what these tests judge, and it must not depend
on a model's speed or text. Like the real engine, it runs a worker thread and
feeds handles with ``push`` (thread-safe), so the server's awaiting of events
is exercised for real.

Behaviour, all deterministic:
- one token per prompt character (``count_tokens``); token ``i`` reads `` w{i}``;
- a prompt containing ``FAIL`` finishes with reason ``error``; ``EOS`` finishes
  with ``eos`` after two tokens; ``stop`` strings cut the text (reason ``stop``);
- ``token_delay_s`` per step, ``start_delay_s`` / ``start_error`` for warm-up;
- a bounded queue (``queue_cap``), batches of up to ``max_batch_size``,
  batch sizes reported to ``observe_batches`` callbacks;
- ``cancelled`` handles finish with ``cancelled`` and are recorded in ``cancelled``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI

from inference.engine import (
    EngineStoppedError,
    FinishEvent,
    FinishReason,
    GenerationHandle,
    GenerationParams,
    QueueFullError,
    TokenEvent,
)
from inference.faults import FaultInjector
from inference.server import create_app
from inference.settings import ServerSettings, load_settings


@dataclass
class _Seq:
    handle: GenerationHandle
    tokens: int = 0
    text: str = ""
    events: list[str] = field(default_factory=list)


class FakeEngine:
    def __init__(
        self,
        *,
        context_length: int = 64,
        queue_cap: int = 8,
        max_batch_size: int = 4,
        token_delay_s: float = 0.0,
        start_delay_s: float = 0.0,
        start_error: str | None = None,
    ) -> None:
        self.model_name_value = "fake-model"
        self._context = context_length
        self._queue_cap = queue_cap
        self._max_batch = max_batch_size
        self.token_delay_s = token_delay_s
        self._start_delay = start_delay_s
        self._start_error = start_error
        self._lock = threading.Condition()
        self._pending: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._callbacks: list[Callable[[int], None]] = []
        self.submitted: list[GenerationParams] = []
        self.cancelled: list[GenerationParams] = []
        self.started = False
        self.stopped = False

    @property
    def model_name(self) -> str:
        return self.model_name_value

    @property
    def revision(self) -> str:
        return "fake-rev-1"

    @property
    def context_length(self) -> int:
        return self._context

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._running)

    def count_tokens(self, text: str) -> tuple[int, ...]:
        return tuple(ord(c) for c in text)

    def observe_batches(self, callback: Callable[[int], None]) -> None:
        self._callbacks.append(callback)

    def start(self) -> None:
        time.sleep(self._start_delay)
        if self._start_error is not None:
            raise RuntimeError(self._start_error)
        self._thread = threading.Thread(target=self._worker, name="fake-engine", daemon=True)
        self._thread.start()
        self.started = True

    def submit(self, params: GenerationParams, loop: asyncio.AbstractEventLoop) -> GenerationHandle:
        handle = GenerationHandle(params=params, loop=loop)
        with self._lock:
            if self._stopping:
                raise EngineStoppedError("stopping")
            if len(self._pending) >= self._queue_cap:
                raise QueueFullError("full")
            self._pending.append(_Seq(handle))
            self.submitted.append(params)
            self._lock.notify_all()
        return handle

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.stopped = True

    # -- worker -------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._running and not self._stopping:
                    self._lock.wait(timeout=0.5)
                if self._stopping and not self._pending and not self._running:
                    return
                while self._pending and len(self._running) < self._max_batch:
                    self._running.append(self._pending.popleft())
                batch = list(self._running)
            for callback in self._callbacks:
                callback(len(batch))
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            done = [seq for seq in batch if self._step(seq)]
            with self._lock:
                self._running = [seq for seq in self._running if seq not in done]

    def _finish(self, seq: _Seq, reason: FinishReason, error: str | None = None) -> bool:
        params = seq.handle.params
        if reason == "cancelled":
            self.cancelled.append(params)
        event = FinishEvent(reason, len(params.prompt_ids), seq.tokens, seq.text, error)
        seq.handle.push(event)
        return True

    def _step(self, seq: _Seq) -> bool:
        params = seq.handle.params
        if seq.handle.cancelled:
            return self._finish(seq, "cancelled")
        if "FAIL" in params.prompt:
            return self._finish(seq, "error", "fake failure")
        piece = f" w{seq.tokens}"
        seq.tokens += 1
        seq.text += piece
        for stop in params.stop:
            if stop in seq.text:
                seq.text = seq.text[: seq.text.index(stop)]
                seq.handle.push(TokenEvent(piece, seq.tokens))
                return self._finish(seq, "stop")
        seq.handle.push(TokenEvent(piece, seq.tokens))
        if "EOS" in params.prompt and seq.tokens >= 2:
            return self._finish(seq, "eos")
        if seq.tokens >= params.max_new_tokens:
            return self._finish(seq, "length")
        return False


# -- harness: the app around a fake engine, lifespan included -------------------------

TEST_ENV = {"MLCICD_GIT_SHA": "test-sha"}


def fake_settings(**overrides: object) -> ServerSettings:
    """Settings as ``mlcicd serve`` would resolve them, without reading the real env."""
    return load_settings(overrides, env=TEST_ENV)


@asynccontextmanager
async def serving(
    engine: FakeEngine | None = None,
    settings: ServerSettings | None = None,
    faults: FaultInjector | None = None,
    wait_ready: bool = True,
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The app (lifespan running) and an httpx client talking to it in-process."""
    app = create_app(engine or FakeEngine(), settings or fake_settings(), faults)
    async with app.router.lifespan_context(app):
        if wait_ready:
            for _ in range(500):
                if app.state.runtime.ready:
                    break
                await asyncio.sleep(0.01)
            assert app.state.runtime.ready, "fake engine did not become ready"
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, app


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    wanted = name + (f"{{{labels}}}" if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split(" ")[1])
    return 0.0
