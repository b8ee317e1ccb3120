"""Choosing the next token from one row of logits: greedy, or temperature + top-p.

Why a function of its own: it must be numerically safe for every value the
API accepts (temperature in [0, 2], top_p in (0, 1]), and that is checked by
property-based tests on this function alone, without a model.

How it stays safe, in float32:

- a temperature below :data:`GREEDY_BELOW` is greedy (argmax): dividing by a
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

import torch

# Below this, sampling is greedy: softmax(x / t) is already one-hot in float32 for
# any logit gap the models produce, and smaller values only risk overflow.
GREEDY_BELOW = 1e-5


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
