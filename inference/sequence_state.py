"""One request's generation state inside either engine (pure logic: no model, no torch).

Why separate from the engine: streaming text correctly is fiddly and worth
testing on its own -- byte-level BPE tokens can end in the middle of a UTF-8
character, and a stop string can arrive split over several tokens. This class
turns accepted token ids into text deltas (never a broken character, never text
that a stop string will later cut off) and decides when the request is done.

Left out: logprobs, repetition penalties, top-k, and choosing tokens from logits
(the torch engine's: inference/sampling.py), so that the CTranslate2 engine's
process never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inference.engine import (
    Event,
    FinishEvent,
    FinishReason,
    GenerationHandle,
    GenerationParams,
    TokenEvent,
)

# Prompt tokens kept as decoding context so tokenizers that strip a leading space
# (SentencePiece) decode the first generated token the same way as mid-sentence.
_CONTEXT_TOKENS = 4
# A UTF-8 character's bytes after its first: once this many follow, it is decided.
BYTES_AFTER_A_LEAD = 3
# How far back a held text is searched for a settled cut, in tokens.
SETTLE_CUTS = 8


@dataclass
class SequenceState:
    params: GenerationParams
    sink: Callable[[Event], None]
    handle: GenerationHandle | None
    decode: Callable[[list[int]], str]
    eos_ids: frozenset[int]
    context_length: int
    submitted_at: float
    on_done: Callable[[], None] = lambda: None
    generated: list[int] = field(default_factory=list)
    text: str = ""
    done: bool = False
    _emitted: int = 0
    _ids: list[int] = field(default_factory=list)
    _prefix_offset: int = 0
    _read_offset: int = 0
    # The torch engine's per-request sampler (inference/sampling.py); None until it samples.
    sampler: Any = None
    _prompt_length: int = 0  # len(input_ids), read every step

    def __post_init__(self) -> None:
        tail = list(self.params.prompt_ids[-_CONTEXT_TOKENS:])
        self._ids = tail
        self._read_offset = len(tail)
        self._prompt_length = len(self.input_ids)

    @property
    def input_ids(self) -> list[int]:
        """The prompt as fed to the model; an empty prompt starts from an EOS token."""
        if self.params.prompt_ids:
            return list(self.params.prompt_ids)
        return [min(self.eos_ids)] if self.eos_ids else [0]

    @property
    def last_token(self) -> int:
        return self.generated[-1]

    @property
    def position(self) -> int:
        """Position id of :attr:`last_token`."""
        return self._prompt_length + len(self.generated) - 1

    @property
    def tokens_to_come(self) -> int:
        """Decode steps this sequence may still take: cache columns it may still write."""
        generated = len(self.generated)
        return max(
            1,
            min(
                self.params.max_new_tokens - generated,
                self.context_length - self._prompt_length - generated,
            ),
        )

    @property
    def suppress_eos(self) -> bool:
        return len(self.generated) < self.params.min_new_tokens

    @property
    def cancelled(self) -> bool:
        return self.handle is not None and self.handle.cancelled

    def check_fits(self) -> None:
        if self._prompt_length >= self.context_length:
            raise ValueError(
                f"prompt has {self._prompt_length} tokens; the context is {self.context_length}"
            )

    def accept(self, token: int) -> None:
        """Take the next token: stream its text, or finish on EOS / stop / length."""
        if token in self.eos_ids and not self.suppress_eos:
            self._flush(token)
            self.finish("eos")
            return
        self.generated.append(token)
        self._ids.append(token)
        before = len(self.text)
        self.text += self._next_delta()
        hit = self._find_stop(before)
        if hit is not None:
            self.text = self.text[:hit]
            self._emit(token, len(self.text))
            self.finish("stop")
            return
        at_limit = len(self.generated) >= self.params.max_new_tokens or (
            self._prompt_length + len(self.generated) >= self.context_length
        )
        if at_limit:
            self._flush(token)
            self.finish("length")
            return
        self._emit(token, len(self.text) - self._stop_holdback())

    def finish(self, reason: FinishReason, error: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        event = FinishEvent(
            reason=reason,
            prompt_tokens=len(self.params.prompt_ids),
            generated_tokens=len(self.generated),
            text=self.text,
            error=error,
        )
        try:
            self.on_done()  # first, so in_flight is already down when the client hears
        finally:
            self.sink(event)

    def _next_delta(self) -> str:
        """Text the newest token completes (incremental decode, as in TGI)."""
        prefix = self.decode(self._ids[self._prefix_offset : self._read_offset])
        full = self.decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            return self._advance_to(len(self._ids), full[len(prefix) :])
        return self._settled_delta(prefix, full)

    def _settled_delta(self, prefix: str, full: str) -> str:
        """While the text ends in an unfinished character: the held text no token can change.

        Why: TGI's rule alone holds everything back while the text ends in U+FFFD,
        so a model whose every token ends part-way through a character (a run of
        CJK split mid-character, or an untrained model) streams nothing until the
        end. The text before a cut is settled when the whole text starts with it and
        its end is decided (:func:`_decided`).
        """
        newest = len(self._ids)
        for cut in range(newest - 1, max(self._read_offset, newest - SETTLE_CUTS - 1), -1):
            settled = self.decode(self._ids[self._prefix_offset : cut])
            if len(settled) <= len(prefix) or not full.startswith(settled):
                continue
            if _decided(settled, full[len(settled) :], newest - cut):
                return self._advance_to(cut, settled[len(prefix) :])
        return ""

    def _advance_to(self, read_offset: int, delta: str) -> str:
        self._prefix_offset, self._read_offset = self._read_offset, read_offset
        return delta

    def _flush(self, token: int) -> None:
        """At the end: add any undecoded bytes and emit all text held back so far."""
        prefix = self.decode(self._ids[self._prefix_offset : self._read_offset])
        full = self.decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and len(self._ids) > self._read_offset:
            self.text += full[len(prefix) :]
            self._read_offset = len(self._ids)
        if self._emitted < len(self.text) or token not in self.eos_ids:
            self._emit(token, len(self.text))

    def _emit(self, token: int, upto: int) -> None:
        upto = max(upto, self._emitted)
        self.sink(TokenEvent(text=self.text[self._emitted : upto], token_id=token))
        self._emitted = upto

    def _find_stop(self, before: int) -> int | None:
        best: int | None = None
        for stop in self.params.stop:
            if not stop:
                continue
            index = self.text.find(stop, max(0, before - len(stop) + 1))
            if index >= 0 and (best is None or index < best):
                best = index
        return best

    def _stop_holdback(self) -> int:
        """Length of the text's longest suffix that could still become a stop string."""
        hold = 0
        for stop in self.params.stop:
            for k in range(min(len(stop) - 1, len(self.text)), hold, -1):
                if self.text.endswith(stop[:k]):
                    hold = k
                    break
        return hold


def _decided(settled: str, after: str, tokens_after: int) -> bool:
    """Whether ``settled``'s last character stays as it is whatever tokens come next.

    A whole character does. A U+FFFD (bytes that began a character) does once the
    text after it starts with a whole character, which those bytes cannot be part
    of, or once :data:`BYTES_AFTER_A_LEAD` tokens (a byte or more each) follow it,
    since a UTF-8 character has at most four bytes.
    """
    if not settled.endswith("\ufffd"):
        return True
    return (bool(after) and not after.startswith("\ufffd")) or tokens_after >= BYTES_AFTER_A_LEAD
