"""The torch engine's choice of each row's next token: greedy, or temperature + top-p.

:func:`accept_next_tokens` chooses for a batch and hands each row its token;
:func:`sample_token` samples one row. Why that is a function of its own: it must
be numerically safe for every value the API accepts (temperature in [0, 2],
top_p in (0, 1]), and that is checked by property-based tests on this function
alone, without a model.

How it stays safe, in float32:

- a temperature below :data:`inference.engine.GREEDY_BELOW` is greedy (argmax): dividing by a
  subnormal temperature overflows to ``inf`` and the softmax turns into NaN;
- logits are shifted so that the largest is 0 before dividing, so every
  scaled logit is <= 0, the best token's weight is exactly 1 and the sum can
  neither overflow nor underflow to 0;
- top-p always keeps the most likely token, however small ``top_p`` is
  (one that rounds to 0 in float32 would otherwise keep nothing, and
  ``multinomial`` raises on all-zero weights);
- ``-inf`` logits (tokens masked out, such as a suppressed EOS) keep weight 0
  and are never chosen unless nothing else is left.

Left out: top-k, repetition penalties, logit bias.
"""

from __future__ import annotations

import os

import numpy
import torch

from inference.engine import GREEDY_BELOW
from inference.sequence_state import SequenceState


@torch.inference_mode()
def sample_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """The chosen token id for one row of ``logits`` (shape ``[vocab]``)."""
    logits = logits.float()
    best = int(torch.argmax(logits).item())
    if temperature < GREEDY_BELOW or not torch.isfinite(logits[best]):
        return best
    shifted = torch.nan_to_num(logits - logits[best], nan=float("-inf"))
    weights = torch.exp(shifted / temperature)  # in [0, 1]; weights[best] == 1
    if top_p < 1.0:
        sorted_weights, order = torch.sort(weights, descending=True, stable=True)
        mass = torch.cumsum(sorted_weights, dim=-1)
        before = (mass - sorted_weights) / mass[-1]
        kept = torch.zeros_like(weights).scatter(0, order, sorted_weights * (before < top_p))
        kept[best] = 1.0  # however small top_p is (it may round to 0 in float32)
        weights = kept
    return int(torch.multinomial(weights, 1, generator=generator).item())


def sample_row(seq: SequenceState, logits: torch.Tensor) -> int:
    """Temperature + top-p sampling with this request's own seeded generator."""
    if seq.sampler is None:
        seq.sampler = torch.Generator(device=logits.device)
        seed = seq.params.seed
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little") >> 1
        seq.sampler.manual_seed(seed)
    return sample_token(logits, seq.params.temperature, seq.params.top_p, seq.sampler)


def accept_next_tokens(
    seqs: list[SequenceState], logits: torch.Tensor, eos_ids: frozenset[int]
) -> None:
    """Choose each row's next token from ``logits`` and hand it to its sequence.

    Whatever fails for one sequence (choosing, detokenising, a stop check)
    finishes that sequence with ``reason="error"``; the others go on.
    """
    for seq, token in zip(seqs, _choose_safely(seqs, logits, eos_ids), strict=True):
        if token is None:
            continue
        try:
            seq.accept(token)
        except Exception as error:
            seq.finish("error", f"{type(error).__name__}: {error}")


def _choose_safely(
    seqs: list[SequenceState], logits: torch.Tensor, eos_ids: frozenset[int]
) -> list[int | None]:
    """Next token per row; ``None`` where choosing failed (that row is finished).

    Rows are chosen together; if that fails, row by row, so one bad request (say,
    an invalid sampling state) fails alone.
    """
    try:
        return list(_choose(seqs, logits, eos_ids))
    except Exception:
        chosen: list[int | None] = []
        for row, seq in enumerate(seqs):
            try:
                chosen.append(_choose([seq], logits[row : row + 1], eos_ids)[0])
            except Exception as error:
                seq.finish("error", f"{type(error).__name__}: {error}")
                chosen.append(None)
        return chosen


@torch.inference_mode()
def _choose(seqs: list[SequenceState], logits: torch.Tensor, eos_ids: frozenset[int]) -> list[int]:
    """Greedy for temperature 0, else seeded temperature + top-p; EOS masked where suppressed.

    ``logits`` is the step's own output, and EOS is masked in it in place: a copy of
    a vocabulary-wide batch, torch's small indexing calls and its CPU argmax run on
    the worker thread in series with every step, and were a measurable share of a
    16-row step (docs/performance.md, "3 Dec").
    """
    logits = logits.float()
    suppress = [row for row, s in enumerate(seqs) if s.suppress_eos]
    if suppress and eos_ids:
        _mask_in_place(logits, suppress, sorted(eos_ids))
    chosen = greedy_tokens(logits)
    for row, seq in enumerate(seqs):
        if seq.params.temperature > 0:
            chosen[row] = sample_row(seq, logits[row])
    return chosen


def _mask_in_place(logits: torch.Tensor, rows: list[int], columns: list[int]) -> None:
    if logits.device.type == "cpu":
        logits.numpy()[numpy.ix_(rows, columns)] = -numpy.inf
    else:
        index = torch.tensor(rows, device=logits.device).unsqueeze(1)
        logits[index, torch.tensor(columns, device=logits.device)] = float("-inf")


def greedy_tokens(logits: torch.Tensor) -> list[int]:
    """Each row's first highest-scoring token, as ``torch.argmax`` chooses it.

    On CPU through numpy, whose argmax returns the same first maximum and is several
    times faster over vocabulary-wide rows (docs/performance.md, "3 Dec").
    """
    if logits.device.type == "cpu":
        return [int(token) for token in logits.numpy().argmax(axis=-1)]
    return [int(token) for token in logits.argmax(dim=-1).tolist()]
