"""What both engines share: the bounded queue, the one worker thread, start, submit and drain.

Why a base class: the torch engine and the CTranslate2 engine differ only in how
a round of generation runs (a continuous-batching decode step, or a wave of one
``generate_batch`` call); the contract around it (inference/engine.py) must
behave the same for both: a full queue is refused, a stopping engine refuses new
work and finishes what it holds, a failed warm-up is raised by :meth:`start` and
answered to everyone waiting, and a failure in one round never kills the worker.

Threading model: :meth:`submit` and the metadata run on the server's event loop
and take the lock only briefly; everything else runs on the worker thread, which
a subclass fills with :meth:`_prepare` (load, tune, warm up) and
:meth:`_serve_round` (one round of generation).

Gathering a batch: a round that starts with nothing running waits for company,
until ``max_batch_size`` requests wait, or no request has arrived for
``batch_window_s`` (capped at :data:`WINDOW_CAP` windows after the oldest), so
a burst of clients lands in one batch. After a round of rows ends, the next also
waits up to one decode step for as many requests as that round held: closed-loop
clients come back a few milliseconds after their answers, and those who miss the
batch cost every row a second prefill (the torch engine) or wait a whole wave
(the CTranslate2 engine). Without it, waves of 16 or 64 clients split in two and
stay split (docs/performance.md, "Gathering a batch").

Left out: priorities and per-client fairness in the queue (first come, first served).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from inference.engine import (
    EngineStoppedError,
    Event,
    GenerationHandle,
    GenerationParams,
    QueueFullError,
)
from inference.sequence_state import SequenceState

WARMUP_PROMPT = "Hello"
# A forming batch waits at most this many batch windows after its oldest request.
WINDOW_CAP = 20


class RoundEnd:
    """When a worker's last round of rows ended, how many rows it held, and its time per
    decode step: until one step has passed, those rows' clients may be on their way back."""

    def __init__(self) -> None:
        self.last_end = 0.0
        self.last_rows = 0
        self.step_s = 0.0

    def record(self, rows: int, step_s: float, window: float) -> None:
        """A round of ``rows`` ended now, at ``step_s`` per decode step (capped)."""
        self.last_end = time.monotonic()
        self.last_rows = rows
        self.step_s = min(step_s, WINDOW_CAP * window)

    def returning(self, now: float, window: float) -> bool:
        return now - self.last_end <= max(self.step_s, window)


class WorkerEngine:
    """The queue and worker of an :class:`inference.engine.Engine`; subclasses generate."""

    thread_name = "engine"

    def __init__(
        self,
        tokenizer: Any,
        eos_ids: frozenset[int],
        *,
        max_batch_size: int,
        batch_window_s: float,
        queue_cap: int,
    ) -> None:
        if max_batch_size < 1 or queue_cap < 1 or batch_window_s < 0:
            raise ValueError("max_batch_size and queue_cap must be >= 1, batch_window_s >= 0")
        self._tokenizer = tokenizer
        self._eos_ids = eos_ids
        self._max_batch = max_batch_size
        self._window = batch_window_s
        self._queue_cap = queue_cap
        self._lock = threading.Condition()
        self._pending: collections.deque[SequenceState] = collections.deque()
        self._running = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._batch_callbacks: list[Callable[[int], None]] = []

    @property
    def context_length(self) -> int:
        raise NotImplementedError

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending) + self._running

    def count_tokens(self, text: str) -> tuple[int, ...]:
        return tuple(int(i) for i in self._tokenizer(text)["input_ids"])

    def observe_batches(self, callback: Callable[[int], None]) -> None:
        self._batch_callbacks.append(callback)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker, which prepares and warms up, then serves; blocks until ready."""
        if self._thread is not None:
            return
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._worker, args=(ready, failure), name=self.thread_name, daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            message = f"engine warm-up failed: {failure[0]}"
            with self._lock:
                waiting, self._pending = list(self._pending), collections.deque()
                self._running += len(waiting)  # finishing counts each one out again
            for seq in waiting:  # nobody is left waiting forever
                seq.finish("error", message)
            self._fail_held(message)
            raise RuntimeError(message) from failure[0]

    def submit(self, params: GenerationParams, loop: asyncio.AbstractEventLoop) -> GenerationHandle:
        handle = GenerationHandle(params=params, loop=loop)
        with self._lock:
            if self._stopping:
                raise EngineStoppedError("engine is stopping")
            self._check(params)
            if len(self._pending) >= self._queue_cap:
                raise QueueFullError(f"queue is full ({self._queue_cap} requests waiting)")
            self._pending.append(self._new_sequence(params, handle.push, handle))
            self._lock.notify_all()
        return handle

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()

    # -- for subclasses ----------------------------------------------------------------
    def _start_by(self, ends: Sequence[RoundEnd]) -> float:
        """When a forming batch starts at the latest (lock held, requests pending), given
        the rounds whose clients may be returning (the module docstring says why)."""
        oldest, newest = self._pending[0].submitted_at, self._pending[-1].submitted_at
        deadline = min(newest + self._window, oldest + WINDOW_CAP * self._window)
        if len(self._pending) < sum(end.last_rows for end in ends):
            deadline = max(deadline, *(end.last_end + end.step_s for end in ends))
        return deadline

    def _gather(self, returning: Callable[[], Sequence[RoundEnd]]) -> None:
        """Wait (lock held) until the forming batch is full or its start is due."""
        while self._pending and len(self._pending) < self._max_batch and not self._stopping:
            remaining = self._start_by(returning()) - time.monotonic()
            if remaining <= 0:
                return
            self._lock.wait(remaining)

    def _check(self, params: GenerationParams) -> None:
        """Raise UnsupportedRequestError for a request this engine cannot honour."""

    def _prepare(self) -> None:
        """On the worker thread, before serving: load, tune, warm up. Raising fails start()."""
        raise NotImplementedError

    def _serve_round(self) -> bool:
        """One round of generation; False when stopping and idle (the worker then exits)."""
        raise NotImplementedError

    def _fail_round(self, message: str) -> None:
        """Finish the requests of a round that failed outside its guarded calls."""
        raise NotImplementedError

    def _fail_held(self, message: str) -> None:
        """Finish requests the engine still holds after a failed warm-up (none by default)."""

    # -- worker ------------------------------------------------------------------------
    def _new_sequence(
        self,
        params: GenerationParams,
        sink: Callable[[Event], None],
        handle: GenerationHandle | None,
    ) -> SequenceState:
        return SequenceState(
            params=params,
            sink=sink,
            handle=handle,
            decode=self._decode_text,
            eos_ids=self._eos_ids,
            context_length=self.context_length,
            submitted_at=time.monotonic(),
            on_done=self._on_done,
        )

    def _warm_up_request(self, events: list[Event]) -> SequenceState:
        params = GenerationParams(
            prompt=WARMUP_PROMPT, prompt_ids=self.count_tokens(WARMUP_PROMPT), max_new_tokens=4
        )
        return self._new_sequence(params, events.append, None)

    def _on_done(self) -> None:
        with self._lock:
            self._running -= 1
            self._lock.notify_all()

    def _decode_text(self, ids: list[int]) -> str:
        """Detokenise; a seam the tests use to make one request fail."""
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def _worker(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            self._prepare()
        except BaseException as error:  # whatever it is, start() must hear of it
            failure.append(error)
            return
        finally:
            ready.set()
        self._serve_until_stopped(self._serve_round, self._fail_round)

    @staticmethod
    def _serve_until_stopped(serve: Callable[[], bool], fail: Callable[[str], None]) -> None:
        """Run rounds until one says it is stopping; a round that raises fails, the loop goes on."""
        while True:
            try:
                if not serve():
                    return
            except Exception as error:  # a bug outside the guarded calls: fail the round, go on
                fail(f"engine round failed: {type(error).__name__}: {error}")
