"""One wave of the CTranslate2 engine: which requests share it, and its callback.

Why a module of its own: what a ``generate_batch`` call can hold (one set of
sampling settings, prompts of nearly one length) and how its per-token callback
feeds each row's :class:`SequenceState` are facts about CTranslate2's decoding
loop; the engine (inference/ct2_engine.py) decides when waves run and where.

Left out: anything that waits or holds the engine's lock; these are plain
functions over one wave's rows.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from inference.engine import GREEDY_BELOW, GenerationParams
from inference.engine_worker import RoundEnd
from inference.sequence_state import SequenceState

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


class Lane(RoundEnd):
    """One thread that runs waves: its wave, and when its last one ended, its rows and
    its time per decode step (for the wait for its clients)."""

    def __init__(self) -> None:
        super().__init__()
        self.wave: list[SequenceState] = []
        self.mode: str | None = None  # "solo" or "lanes" while it runs a wave, else None

    def fail(self, message: str) -> None:
        fail_all(self.wave, message)


class StepCounter:
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


def take_token(live: list[SequenceState], step: Any, steps: StepCounter) -> bool:
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


def admissible(wave: list[SequenceState]) -> list[SequenceState]:
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


def fail_all(seqs: list[SequenceState], message: str) -> None:
    for seq in seqs:
        if not seq.done:
            seq.finish("error", message)
