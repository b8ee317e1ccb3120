"""Prefill many prompts of different lengths in one left-padded forward.

Why: a forward on CPU costs one pass over the weights plus work per token, so
prefilling new requests together is much cheaper than one forward per distinct
prompt length (the engine's earlier grouping by equal length), while padding
costs work per padded token. :func:`prefill_chunks` weighs the two. Recorded on
GPT-2-small, the load generator's 16 prompts (190 tokens), quiet 2-core machine,
packed layers (``python -m pipeline.bench.probes``, ``steps``): the cost-based cut
(2 forwards) takes 222-224 ms, ~850 prompt tokens/s; one padded forward of all 16
takes 240-253 ms.

Correctness: padding is on the left and masked; position ids count real tokens
only; and the cache entries at padded positions are zeroed, because a padded
query attends to nothing and may produce NaN, which a later step would multiply
by its zero attention weight and still get NaN. Each row therefore computes what
a lone prefill computes (up to the rounding of a different batch shape). Prompts
of one length run without a mask, exactly as a lone prefill does.

Left out: chunked prefill interleaved with decode steps (a long prompt delays
the running batch by one prefill).
"""

from __future__ import annotations

from typing import Any

import torch

from inference.kv_cache import SPARE_COLUMNS, cache_layers

# Padded prompt tokens per prefill forward: bounds activations and padding waste.
PREFILL_TOKEN_BUDGET = 4096
# A forward's fixed cost (one pass over the weights) in prompt tokens: GPT-2-small
# on 2 CPU cores with packed layers, a 1-token forward (24 ms) against the cost of
# each further prompt token (1.0 ms, from a 192-token forward: 214 ms), measured
# once while tuning; the cut it gives is timed by bench_probes' ``steps``.
FORWARD_COST_TOKENS = 24


def prefill_chunks(lengths: list[int], budget: int = PREFILL_TOKEN_BUDGET) -> list[list[int]]:
    """Indices into ``lengths`` cut into prefill forwards, shortest prompts first.

    Cost of a chunk: ``FORWARD_COST_TOKENS`` plus its padded size (rows x longest);
    the cut with the least total cost is found exactly (dynamic programming over
    the prompts sorted by length, where an optimal chunk is always a contiguous
    run). A chunk may not pass ``budget`` padded tokens unless it is one prompt.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = [0] + [0x7FFFFFFF] * len(order)  # best[j]: least cost of the first j prompts
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        width = lengths[order[end - 1]]
        for start in range(end - 1, -1, -1):
            rows = end - start
            if rows > 1 and rows * width > budget:
                break
            cost = best[start] + FORWARD_COST_TOKENS + rows * width
            if cost < best[end]:
                best[end], cut[end] = cost, start
    chunks: list[list[int]] = []
    end = len(order)
    while end > 0:
        chunks.append(order[cut[end] : end])
        end = cut[end]
    return chunks[::-1]


@torch.inference_mode()
def padded_prefill(
    model: Any, prompts: list[list[int]], device: torch.device, spare: int = SPARE_COLUMNS
) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """(last-position logits (B, V), cache, (B, T) mask with 1 = real token).

    ``spare``: empty cache columns to keep for decoding (inference/kv_cache.py).
    """
    width = max(len(ids) for ids in prompts)
    ids = torch.tensor(
        [[0] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=device
    )
    mask = torch.tensor(
        [[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=device
    )
    if all(len(p) == width for p in prompts):  # no padding: exactly a lone prefill
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :], out.past_key_values, mask
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=1,
    )
    padding = (mask == 0)[:, None, :, None]
    for layer in cache_layers(out.past_key_values, spare):
        keys, values = layer.current()
        keys.masked_fill_(padding, 0.0)
        values.masked_fill_(padding, 0.0)
    return out.logits[:, -1, :], out.past_key_values, mask
