"""The CTranslate2 engine: the same contract as the torch engine, decoding with CTranslate2.

Why a second engine: on some CPUs CTranslate2's kernels are faster than what torch
reaches here (docs/performance.md, "The CTranslate2 engine"), and there the
well-kept library is the better way than more hand-written kernels.
It serves a converted model directory (inference/ct2_model.py), which the
pipeline makes and judges as a model change.

Threading model: one thread per lane (inference/ct2_lanes.py; one lane when the
engine measured that lanes do not pay) forms waves and calls ``generate_batch``,
on the solo generator (all threads on one call) or on the lanes' generator (one
thread a call, as many calls at once as lanes); the two never compute at once.
CTranslate2 computes on its own threads and calls the per-token callback, where
each row's :class:`SequenceState` (shared with the torch engine: detokenising,
stop strings, limits, events) takes its token. The server, on the asyncio loop,
only calls :meth:`submit`, which never blocks.

Batching: waves, not continuous batching. CTranslate2 exposes no decode step
with a cache the caller keeps, so rows cannot join a running ``generate_batch``;
a request that arrives during a wave waits for the next one. A wave gathers its
requests as every round of the worker does (inference/engine_worker.py): a
burst lands in one wave, and after a wave ends the next waits up to one decode
step for the last wave's clients, each lane's and not only its own. Rows leave
a wave early (their limit, a stop string, a cancel or a deadline) by the
callback returning True. Sampling settings are per call in CTranslate2, so a
wave holds requests with the same temperature, top-p and minimum length.
``seed`` is refused (422, naming it) and left out of the OpenAPI document:
CTranslate2 seeds its sampler once per compute thread, so no per-request seed
can be honoured.

Failure isolation: a failure while handling one row's token finishes that row
with ``reason="error"``; a failed ``generate_batch`` fails that wave only. The
worker keeps serving.

Left out: logits of the model (sampling is CTranslate2's own), and GPU.
"""

from __future__ import annotations

import collections
import logging
import os
import statistics
import threading
import time
from typing import Any

from inference.ct2_lanes import (
    PROBE_NEW_TOKENS,
    Arrangement,
    choose_arrangement,
    measure_rates,
    summarise,
    timed_greedy_call,
)
from inference.ct2_model import ConvertedModel
from inference.ct2_wave import (
    Lane,
    StepCounter,
    admissible,
    fail_all,
    prompts_fit,
    take_token,
    wave_key,
)
from inference.engine import (
    GREEDY_BELOW,
    Event,
    FinishEvent,
    GenerationParams,
    UnsupportedRequestError,
)
from inference.engine_worker import WorkerEngine
from inference.sequence_state import SequenceState

SEED_UNSUPPORTED = (
    "`seed` is not accepted by this server's engine (ctranslate2): CTranslate2 seeds its "
    "sampler once per thread, not per request, so no seed can be honoured; omit it"
)
# CTranslate2 reads top_p as a float32 in (0, 1]; a smaller accepted value (a subnormal
# double) keeps the best token only, as the torch engine's sampler does.
SMALLEST_TOP_P = 1.2e-38
# The prompt the arrangement probe decodes from (inference/ct2_lanes.py).
PROBE_PROMPT = "The engine measures which arrangement of its threads serves a wave faster"
log = logging.getLogger(__name__)


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
        arrangement: Arrangement | None = None,
    ) -> None:
        """``arrangement``: None to measure it at start (inference/ct2_lanes.py)."""
        super().__init__(
            model.tokenizer,
            model.eos_ids,
            max_batch_size=max_batch_size,
            batch_window_s=batch_window_s,
            queue_cap=queue_cap,
        )
        self._model = model
        self._threads = threads or _default_threads()
        self._arrangement = arrangement or Arrangement(threads=self._threads)
        self._measure = arrangement is None
        self._solo: Any = None  # the generator with every thread on one call
        self._lanes_generator: Any = None  # one thread a call, one call per lane
        self._lanes = [Lane()]  # the worker thread is lane 0
        self._lane_threads: list[threading.Thread] = []

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
    def arrangement(self) -> str:
        """How the threads serve waves, as measured at start (inference/ct2_lanes.py)."""
        return self._arrangement.describe()

    @property
    def arrangement_rates(self) -> dict[str, float]:
        return dict(self._arrangement.rates)

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
        if self._serve_lane(self._lanes[0]):
            return True
        for thread in self._lane_threads:
            thread.join()
        return False

    def _fail_round(self, message: str) -> None:
        fail_all(self._lanes[0].wave, message)

    def _serve_lane(self, lane: Lane) -> bool:
        """Form and run one wave on ``lane``; False when stopping and idle."""
        taken = self._next_wave(lane)
        if taken is None:
            return False
        _, on_lanes = taken
        try:
            self._run_wave(lane, self._lanes_generator if on_lanes else self._solo)
        finally:
            with self._lock:
                lane.mode = None
                self._lock.notify_all()
        return True

    def _running_in(self, mode: str) -> list[Lane]:
        """The lanes running a wave in ``mode`` ("solo" or "lanes"; lock held)."""
        return [lane for lane in self._lanes if lane.mode == mode]

    def _start_lanes(self) -> None:
        """Lanes 1.. on threads of their own (lane 0 is the worker thread)."""
        self._lanes += [Lane() for _ in range(self._arrangement.lanes - 1)]
        for index, lane in enumerate(self._lanes[1:], start=1):
            thread = threading.Thread(
                target=self._serve_until_stopped,
                args=(lambda lane=lane: self._serve_lane(lane), lane.fail),
                name=f"{self.thread_name}-lane{index}",
                daemon=True,
            )
            self._lane_threads.append(thread)
            thread.start()

    def _prepare(self) -> None:
        import ctranslate2

        self._solo = ctranslate2.Generator(
            str(self._model.weights), device="cpu", intra_threads=self._threads
        )
        self._warm_up()
        self._arrange(ctranslate2)
        log.info(
            "ctranslate2 %s: %s weights, %d threads; %s; measured: %s",
            ctranslate2.__version__,
            self._model.quantization,
            self._threads,
            self._arrangement.describe(),
            summarise(self._arrangement.rates),
        )
        self._start_lanes()

    def _arrange(self, ctranslate2: Any) -> None:
        """Load the lanes' generator and measure whether it pays (unless given)."""
        if self._threads < 2 or (not self._measure and not self._arrangement.uses_lanes):
            return
        self._lanes_generator = ctranslate2.Generator(
            str(self._model.weights),
            device="cpu",
            intra_threads=1,
            inter_threads=self._arrangement.lanes if not self._measure else self._threads,
        )
        if self._measure:
            prompt = self._tokenizer.convert_ids_to_tokens(list(self.count_tokens(PROBE_PROMPT)))

            def probe_wave(rows: int, on_lanes: bool) -> tuple[float, float]:
                generator = self._lanes_generator if on_lanes else self._solo
                timing = timed_greedy_call(generator, [prompt] * rows, PROBE_NEW_TOKENS)
                return timing.first_s, statistics.median(timing.gaps_s)

            rates = measure_rates(probe_wave, self._threads, self._max_batch)
            self._arrangement = choose_arrangement(self._threads, rates)
        if not self._arrangement.uses_lanes:
            self._lanes_generator = None  # one copy of the weights, not two

    def _warm_up(self) -> None:
        events: list[Event] = []
        warm = self._warm_up_request(events)
        lane = self._lanes[0]
        lane.wave = [warm]
        with self._lock:
            self._running += 1
        try:
            self._run_wave(lane, self._solo)
        finally:
            if not warm.done:  # failed outside the guarded call: count it out
                warm.finish("error", "the warm-up request failed")
        finish = events[-1] if events else None
        if not isinstance(finish, FinishEvent) or finish.reason == "error":
            raise RuntimeError(f"the warm-up request ended with {finish}")

    def _next_wave(self, lane: Lane) -> tuple[list[SequenceState], bool] | None:
        """The next wave for ``lane`` (the module docstring) and whether it runs on the
        lanes' generator; None when stopping and idle. A solo wave waits for the
        lanes to be idle, and lanes wait while a solo wave runs."""
        with self._lock:
            while True:
                while not self._pending or self._running_in("solo"):
                    if self._stopping and not self._pending:
                        return None
                    self._lock.wait()
                self._gather(self._returning_lanes)
                if self._pending and not self._running_in("solo"):
                    break
            lane_waves = self._running_in("lanes")
            demand = max(len(self._pending), self._returning())
            demand += sum(len(other.wave) for other in lane_waves)
            on_lanes = bool(lane_waves) or (
                self._arrangement.uses_lanes and demand >= self._arrangement.lanes_from
            )
            limit = self._arrangement.lane_share(demand, self._max_batch)
            wave = self._take_wave(limit if on_lanes else self._max_batch)
            lane.wave, lane.mode = wave, "lanes" if on_lanes else "solo"
            self._running += len(wave)
        return wave, on_lanes

    def _returning_lanes(self) -> list[Lane]:
        """Idle lanes whose wave ended within its decode step (lock held): their clients
        may be on their way back. Every lane thread waits for them, not only the one
        that ran the wave: else an idle lane starts a wave with the first few back and
        the rest wait a whole wave."""
        now = time.monotonic()
        return [
            lane for lane in self._lanes if lane.mode is None and lane.returning(now, self._window)
        ]

    def _returning(self) -> int:
        """Rows whose clients may be on their way back: they count as waiting when
        choosing between one call and the lanes, and when sharing rows between lanes."""
        return sum(lane.last_rows for lane in self._returning_lanes())

    def _take_wave(self, limit: int) -> list[SequenceState]:
        """The oldest request and the next ones with its key whose prompts fit, at most
        ``limit`` (lock held)."""
        first = self._pending.popleft()
        wave = [first]
        low = high = len(first.input_ids)
        key, rest = wave_key(first.params), collections.deque[SequenceState]()
        while self._pending:
            seq = self._pending.popleft()
            length = len(seq.input_ids)
            joins = len(wave) < limit and wave_key(seq.params) == key
            if joins and prompts_fit([low, high, length]):
                wave.append(seq)
                low, high = min(low, length), max(high, length)
            else:
                rest.append(seq)
        self._pending = rest
        return wave

    def _run_wave(self, lane: Lane, generator: Any) -> None:
        live = admissible(lane.wave)
        if not live:
            return
        rows = [self._tokenizer.convert_ids_to_tokens(seq.input_ids) for seq in live]
        lengths = [len(row) for row in rows]
        # Rows stop at their own limits (the callback); this bounds the call, with room
        # for the prompt tokens fed through the decoding loop (prompts_fit).
        longest = max(seq.tokens_to_come for seq in live) + max(lengths) - min(lengths)
        params = live[0].params
        sampled = params.temperature >= GREEDY_BELOW
        steps = StepCounter(self._batch_callbacks)
        try:
            generator.generate_batch(
                rows,
                max_length=longest,
                min_length=params.min_new_tokens,
                sampling_topk=0 if sampled else 1,
                sampling_topp=max(params.top_p, SMALLEST_TOP_P) if sampled else 1.0,
                sampling_temperature=params.temperature if sampled else 1.0,
                end_token=sorted(self._model.eos_ids) or None,
                return_end_token=True,
                include_prompt_in_result=False,
                callback=lambda step: take_token(live, step, steps),
            )
        except Exception as error:  # fail only the requests in this wave
            fail_all(live, f"ctranslate2: {type(error).__name__}: {error}")
            return
        finally:
            steps.flush()
            lane.record(len(live), steps.step_s(time.monotonic()), self._window)
        for seq in live:  # CTranslate2 ended a row without a last token: its limit
            if not seq.done:
                seq.finish("length")


def _default_threads() -> int:
    """OMP_NUM_THREADS when set (as the torch engine honours it), else every core this
    process may run on (its affinity: a container's CPU set, not the host's count)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) or 1
