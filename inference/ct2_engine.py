"""The CTranslate2 engine: the same contract as the torch engine, decoding with CTranslate2.

Why a second engine: on some CPUs CTranslate2's kernels are faster than what torch
reaches here (docs/performance.md, "The CTranslate2 engine"), and there the
well-kept library is the better way than more hand-written kernels.
It serves a converted model directory (inference/ct2_model.py), which the
pipeline makes and judges as a model change.

Threading model: one worker thread owns the ``ctranslate2.Generator`` and calls
``generate_batch``; CTranslate2 computes on its own threads and calls the
per-token callback, where each row's :class:`SequenceState` (shared with the
torch engine: detokenising, stop strings, limits, events) takes its token. The
server, on the asyncio loop, only calls :meth:`submit`, which never blocks.

Batching: waves, not continuous batching. CTranslate2 exposes no decode step
with a cache the caller keeps, so rows cannot join a running ``generate_batch``;
a request that arrives during a wave waits for the next one. A wave starts when
``max_batch_size`` requests are waiting, or when no request has arrived for
``batch_window_s`` (capped at :data:`WINDOW_CAP` windows after the oldest), so
a burst of clients lands in one wave. After a wave ends, the next also waits up
to one decode step of the last wave for as many requests as the last wave held:
its clients come back a few milliseconds after their answers, and a request
that misses a wave waits a whole wave, so without this the waves of 16
closed-loop clients split into two smaller ones and stay split (the torch
engine's continuous batching admits a request at the next step, which is the
same granularity). Rows leave a wave early (their limit, a stop string, a
cancel or a deadline) by the callback returning True. Sampling settings are per
call in CTranslate2, so a wave holds requests with the same temperature, top-p
and minimum length. ``seed`` is refused (422, naming it) and left out of the
OpenAPI document: CTranslate2 seeds its sampler once per compute thread, so no
per-request seed can be honoured.

Failure isolation: a failure while handling one row's token finishes that row
with ``reason="error"``; a failed ``generate_batch`` fails that wave only. The
worker keeps serving.

Left out: logits of the model (sampling is CTranslate2's own), GPU, and
CTranslate2's parallel batches (``inter_threads``), which on a small CPU would
only split the same cores.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from inference.ct2_model import ConvertedModel
from inference.engine import (
    Event,
    FinishEvent,
    GenerationParams,
    UnsupportedRequestError,
)
from inference.engine_worker import WorkerEngine
from inference.sampling import GREEDY_BELOW
from inference.sequence_state import SequenceState

SEED_UNSUPPORTED = (
    "`seed` is not accepted by this server's engine (ctranslate2): CTranslate2 seeds its "
    "sampler once per thread, not per request, so no seed can be honoured; omit it"
)
# CTranslate2 reads top_p as a float32 in (0, 1]; a smaller accepted value (a subnormal
# double) keeps the best token only, as the torch engine's sampler does.
SMALLEST_TOP_P = 1.2e-38
# A wave waits at most this many batch windows after its oldest request.
WINDOW_CAP = 20
# Prompt tokens a wave's longest prompt may have beyond its shortest: each costs the
# whole wave one decode step, where leaving the row out costs it a whole wave's wait.
MAX_PROMPT_SPREAD = 8
log = logging.getLogger(__name__)


def prompts_fit(lengths: list[int]) -> bool:
    """Whether prompts of these token counts can share one ``generate_batch`` call.

    With ``include_prompt_in_result=False`` CTranslate2 forwards the shortest
    prompt's length minus one at once and feeds the rest of every longer prompt
    through the decoding loop, one lockstep step per token: so the spread is
    capped at :data:`MAX_PROMPT_SPREAD`. And when the shortest prompt is one token,
    it reports those fed prompt tokens to the callback as if generated and counts
    ``min_length`` over them: so a one-token prompt shares a wave only with others.
    """
    low, high = min(lengths), max(lengths)
    return high - low <= MAX_PROMPT_SPREAD and (low >= 2 or high == 1)


def wave_key(params: GenerationParams) -> tuple[float, float, int]:
    """Requests with equal keys can share one ``generate_batch`` call."""
    if params.temperature < GREEDY_BELOW:
        return (0.0, 1.0, params.min_new_tokens)
    return (params.temperature, params.top_p, params.min_new_tokens)


class CTranslate2Engine(WorkerEngine):
    """:class:`inference.engine.Engine` backed by a ``ctranslate2.Generator``."""

    thread_name = "ct2-engine"

    def __init__(
        self,
        model: ConvertedModel,
        *,
        max_batch_size: int,
        batch_window_s: float,
        queue_cap: int,
        threads: int | None = None,
    ) -> None:
        super().__init__(
            model.tokenizer,
            model.eos_ids,
            max_batch_size=max_batch_size,
            batch_window_s=batch_window_s,
            queue_cap=queue_cap,
        )
        self._model = model
        self._threads = threads or _default_threads()
        self._generator: Any = None
        self._wave: list[SequenceState] = []
        # The last wave: when it ended, its rows, and its time per decode step.
        self._last_end = 0.0
        self._last_rows = 0
        self._step_s = 0.0

    # -- Engine protocol: metadata -------------------------------------------------
    @property
    def model_name(self) -> str:
        return self._model.name

    @property
    def revision(self) -> str:
        return self._model.revision

    @property
    def context_length(self) -> int:
        return self._model.context_length

    @property
    def threads(self) -> int:
        """CTranslate2's intra-op threads (OMP_NUM_THREADS, else every core), as
        ``/v1/models`` shows for the torch engine."""
        return self._threads

    @property
    def decode_step(self) -> str:
        return "ctranslate2"

    @property
    def engine_name(self) -> str:
        return "ctranslate2"

    # -- worker ------------------------------------------------------------------------
    @property
    def unsupported_fields(self) -> frozenset[str]:
        """Request fields refused (422), and left out of the OpenAPI document."""
        return frozenset({"seed"})

    def _check(self, params: GenerationParams) -> None:
        if params.seed is not None:
            raise UnsupportedRequestError("seed", SEED_UNSUPPORTED)

    def _serve_round(self) -> bool:
        wave = self._next_wave()
        if wave is None:
            return False
        self._wave = wave
        self._run_wave(wave)
        return True

    def _fail_round(self, message: str) -> None:
        _fail(self._wave, message)

    def _prepare(self) -> None:
        import ctranslate2

        self._generator = ctranslate2.Generator(
            str(self._model.weights), device="cpu", intra_threads=self._threads
        )
        log.info(
            "ctranslate2 %s: %s weights, %d threads",
            ctranslate2.__version__,
            self._model.quantization,
            self._threads,
        )
        events: list[Event] = []
        warm = self._warm_up_request(events)
        with self._lock:
            self._running += 1
        try:
            self._run_wave([warm])
        finally:
            if not warm.done:  # failed outside the guarded call: count it out
                warm.finish("error", "the warm-up request failed")
        finish = events[-1] if events else None
        if not isinstance(finish, FinishEvent) or finish.reason == "error":
            raise RuntimeError(f"the warm-up request ended with {finish}")

    def _next_wave(self) -> list[SequenceState] | None:
        """The next wave (see the module docstring), or None when stopping and idle."""
        with self._lock:
            while not self._pending and not self._stopping:
                self._lock.wait()
            if not self._pending:
                return None
            while len(self._pending) < self._max_batch and not self._stopping:
                remaining = self._start_by() - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            wave = self._take_wave()
            self._running += len(wave)
        return wave

    def _start_by(self) -> float:
        """When the forming wave starts at the latest (lock held; the module docstring says why)."""
        oldest, newest = self._pending[0].submitted_at, self._pending[-1].submitted_at
        deadline = min(newest + self._window, oldest + WINDOW_CAP * self._window)
        if len(self._pending) < self._last_rows:  # its clients may be on their way back
            deadline = max(deadline, self._last_end + self._step_s)
        return deadline

    def _take_wave(self) -> list[SequenceState]:
        """The oldest request and the next ones with its key whose prompts fit (lock held)."""
        first = self._pending.popleft()
        wave = [first]
        low = high = len(first.input_ids)
        key, rest = wave_key(first.params), collections.deque[SequenceState]()
        while self._pending:
            seq = self._pending.popleft()
            length = len(seq.input_ids)
            joins = len(wave) < self._max_batch and wave_key(seq.params) == key
            if joins and prompts_fit([low, high, length]):
                wave.append(seq)
                low, high = min(low, length), max(high, length)
            else:
                rest.append(seq)
        self._pending = rest
        return wave

    def _run_wave(self, wave: list[SequenceState]) -> None:
        live = _admissible(wave)
        if not live:
            return
        rows = [self._tokenizer.convert_ids_to_tokens(seq.input_ids) for seq in live]
        lengths = [len(row) for row in rows]
        # Rows stop at their own limits (the callback); this bounds the call, with room
        # for the prompt tokens fed through the decoding loop (prompts_fit).
        longest = max(seq.tokens_to_come for seq in live) + max(lengths) - min(lengths)
        params = live[0].params
        sampled = params.temperature >= GREEDY_BELOW
        steps = _StepCounter(self._batch_callbacks)
        try:
            self._generator.generate_batch(
                rows,
                max_length=longest,
                min_length=params.min_new_tokens,
                sampling_topk=0 if sampled else 1,
                sampling_topp=max(params.top_p, SMALLEST_TOP_P) if sampled else 1.0,
                sampling_temperature=params.temperature if sampled else 1.0,
                end_token=sorted(self._model.eos_ids) or None,
                return_end_token=True,
                include_prompt_in_result=False,
                callback=lambda step: _take_token(live, step, steps),
            )
        except Exception as error:  # fail only the requests in this wave
            _fail(live, f"ctranslate2: {type(error).__name__}: {error}")
            return
        finally:
            steps.flush()
            self._last_end = time.monotonic()
            self._last_rows = len(live)
            self._step_s = min(steps.step_s(self._last_end), WINDOW_CAP * self._window)
        for seq in live:  # CTranslate2 ended a row without a last token: its limit
            if not seq.done:
                seq.finish("length")


class _StepCounter:
    """Reports each decode step's rows to the batch observers (the batch-size metric)."""

    def __init__(self, observers: list[Callable[[int], None]]) -> None:
        self._observers = observers
        self._step = -1
        self._rows = 0
        self._steps = 0
        self._first_at = 0.0

    def count(self, step: int) -> None:
        if step != self._step:
            self.flush()
            self._step = step
            self._steps += 1
            if self._steps == 1:
                self._first_at = time.monotonic()
        self._rows += 1

    def step_s(self, ended: float) -> float:
        """Seconds per decode step after the first (the prefill left out); 0 if unknown."""
        return (ended - self._first_at) / (self._steps - 1) if self._steps > 1 else 0.0

    def flush(self) -> None:
        if self._rows:
            for observer in self._observers:
                try:
                    observer(self._rows)
                except Exception:  # metrics must never stop generation
                    log.exception("batch observer failed")
        self._rows = 0


def _take_token(live: list[SequenceState], step: Any, steps: _StepCounter) -> bool:
    """CTranslate2's per-token callback: True stops this row. It must never raise."""
    try:
        seq: SequenceState = live[int(step.batch_id)]
        steps.count(int(step.step))
        if seq.done:
            return True
        if seq.cancelled:
            seq.finish("cancelled")
            return True
        try:
            seq.accept(int(step.token_id))
        except Exception as error:
            seq.finish("error", f"{type(error).__name__}: {error}")
        return seq.done
    except Exception as error:  # an unexpected step object: stop the row, keep the worker
        log.exception("ctranslate2 callback failed")
        with contextlib.suppress(Exception):
            live[int(step.batch_id)].finish("error", f"ctranslate2 callback: {error}")
        return True


def _admissible(wave: list[SequenceState]) -> list[SequenceState]:
    """The wave's rows still worth running: cancelled and oversized ones are finished here."""
    live: list[SequenceState] = []
    for seq in wave:
        if seq.cancelled:
            seq.finish("cancelled")
            continue
        try:
            seq.check_fits()
        except ValueError as error:
            seq.finish("error", str(error))
            continue
        live.append(seq)
    return live


def _fail(seqs: list[SequenceState], message: str) -> None:
    for seq in seqs:
        if not seq.done:
            seq.finish("error", message)


def _default_threads() -> int:
    """OMP_NUM_THREADS when set (as the torch engine honours it), else every core this
    process may run on (its affinity: a container's CPU set, not the host's count)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) or 1
