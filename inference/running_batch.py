"""The torch engine's running batch: its sequences, their shared KV cache and padding mask.

Why separate from the engine: the engine decides who runs and when; this keeps
three things in step that must never drift apart, row for row: the list of
running sequences, the rows of the left-padded cache (inference/kv_cache.py)
and the (B, T) mask that marks real tokens (1) and padding (0). Every change of
membership (prefilled rows joining, finished rows leaving, a failed forward
emptying it) goes through one method here.

The cache keeps only as many spare columns as the batch can still write (its
longest remaining generation), so a batch of short requests does not hold
memory for the context length.

Left out: locking. The batch belongs to the engine's one worker thread.
"""

from __future__ import annotations

from typing import Any

import torch

from inference.kv_cache import append_rows, keep_rows
from inference.sequence_state import SequenceState


def columns_to_come(seqs: list[SequenceState]) -> int:
    """Cache columns ``seqs`` can still write: their longest remaining generation."""
    return max((seq.tokens_to_come for seq in seqs), default=1)


class RunningBatch:
    """The sequences decoding together, with their cache and mask (None while empty)."""

    def __init__(self) -> None:
        self.seqs: list[SequenceState] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None

    def clear(self) -> None:
        self.seqs, self.cache, self.mask = [], None, None

    def fail(self, message: str) -> None:
        """Finish every sequence with ``message`` and empty the batch."""
        for seq in self.seqs:
            seq.finish("error", message)
        self.clear()

    def append(
        self, seqs: list[SequenceState], cache: Any, mask: torch.Tensor, rows: list[int]
    ) -> None:
        """Rows ``rows`` of a prefilled ``cache`` join as ``seqs`` (the other rows finished)."""
        spare = columns_to_come(self.seqs + seqs)
        self.cache, self.mask = append_rows(self.cache, self.mask, cache, mask, rows, spare)
        self.seqs.extend(seqs)

    def drop_finished(self) -> None:
        """Drop the rows of finished sequences, and cache columns now padding for every row."""
        keep = [row for row, seq in enumerate(self.seqs) if not seq.done]
        if len(keep) == len(self.seqs):
            return
        if not keep or self.mask is None:
            self.clear()
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.seqs = [self.seqs[row] for row in keep]
        self.mask = keep_rows(self.cache, self.mask, index, columns_to_come(self.seqs))

    def next_mask(self) -> torch.Tensor:
        """The mask with the column of the token each row decodes next (real for every row)."""
        assert self.mask is not None, "an empty batch has no next step"
        ones = torch.ones((len(self.seqs), 1), dtype=self.mask.dtype, device=self.mask.device)
        return torch.cat([self.mask, ones], dim=1)

    def advance(self, mask: torch.Tensor) -> None:
        """A step wrote its column into the cache, so ``mask`` (from :meth:`next_mask`) holds."""
        self.mask = mask
