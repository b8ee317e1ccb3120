"""Probes behind the layer layouts and the one-client target: what each layout and a bare step cost.

``python -m pipeline.bench.probes --probes layer-layouts,lean-step`` runs them
(registered in :mod:`pipeline.bench.probes`, each in a fresh interpreter):

* ``layer-layouts``: the model's linear layers called in the model's order, as
  the engine's start-up tuning calls them (:func:`inference.layer_tuning.measure_layouts`),
  in each layout (dense, packed, weight-first) on torch's threads, at 1, 16 and 64
  rows: ms per pass summed over the layers every layout applies to, and each other
  layer (GPT-2's tied output layer, never packed) on its own. Unlike the tuning,
  each row count is reported on its own, so the trade between layouts shows.
* ``lean-step``: the floor under a one-client decode step in eager torch fp32: a
  GPT-2 decode step written as the bare sequence of torch calls (no transformers
  modules, a preallocated cache, dense weights), median of 50 steps, beside the
  same model's own step through transformers with the engine's cache. Where the
  lean step alone is over the one-client target's bound, no scheduling or layout
  change inside the transformers model can meet it.

GPT-2-family models only (``lean-step`` reads GPT-2's modules). Left out: HTTP,
sampling and repeats (run it again to see the spread).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

LAYOUT_ROWS = (1, 16, 64)
LEAN_STEPS = 60


def probe_layer_layouts(model: str) -> dict[str, Any]:
    import torch

    from inference.layer_tuning import linear_slots, measure_layouts
    from inference.loader import load_model

    loaded = load_model(model, "cpu", "fp32")
    slots = linear_slots(loaded.model, packing_tied=False)
    threads = torch.get_num_threads()
    results: dict[str, Any] = {"threads": threads, "layers": len(slots)}
    timings: dict[str, dict[Any, tuple[float, ...]]] = {slot.shape: {} for slot in slots}
    measure_layouts(slots, LAYOUT_ROWS, threads, float("inf"), timings)
    layouts = {layout for measured in timings.values() for layout, _ in measured}
    # Sum only the shapes every layout was timed on, so the sums compare.
    common = [s for s, measured in timings.items() if len(measured) == len(layouts)]
    for index, rows in enumerate(LAYOUT_ROWS):
        for layout in sorted(layouts):
            ms = sum(timings[shape][(layout, threads)][index] for shape in common)
            results[f"{layout}_{rows}_rows_ms"] = round(ms, 2)
        for shape in sorted(set(timings) - set(common)):  # e.g. a tied layer: never packed
            for (layout, _), per_rows in sorted(timings[shape].items()):
                results[f"{shape}_{layout}_{rows}_rows_ms"] = round(per_rows[index], 2)
    return results


def probe_lean_step(model: str) -> dict[str, Any]:
    import torch

    from inference.loader import load_model
    from pipeline.bench.probes_breakdown import profiled_steps

    loaded = load_model(model, "cpu", "fp32")
    with torch.inference_mode():
        lean = _lean_step_times(loaded.model)
    engine_cache, _ = profiled_steps(loaded, 1)
    return {
        "lean_b1_ms_p50": round(statistics.median(lean[10:]) * 1000, 2),
        "lean_b1_ms_min": round(min(lean[10:]) * 1000, 2),
        "transformers_b1_ms_p50": round(statistics.median(engine_cache[5:40]) * 1000, 2),
    }


def lean_decoder(model: Any) -> Any:
    """``step(token, position) -> logits``: GPT-2's decode step as bare torch calls, one row.

    The cache is preallocated for the model's context; positions must come in order.
    """
    import torch
    import torch.nn.functional as F

    body, config = model.transformer, model.config
    heads, width, eps = config.n_head, config.n_embd, config.layer_norm_epsilon
    size = width // heads
    keys = [torch.zeros(1, heads, config.n_positions, size) for _ in body.h]
    values = [torch.zeros(1, heads, config.n_positions, size) for _ in body.h]

    def block_step(block: Any, x: Any, k_cache: Any, v_cache: Any, position: int) -> Any:
        h = F.layer_norm(x, (width,), block.ln_1.weight, block.ln_1.bias, eps)
        qkv = torch.addmm(block.attn.c_attn.bias, h, block.attn.c_attn.weight)
        q, k, v = qkv.view(1, 3, heads, size).unbind(1)
        k_cache[0, :, position] = k[0]
        v_cache[0, :, position] = v[0]
        seen = slice(0, position + 1)
        a = F.scaled_dot_product_attention(
            q.view(1, heads, 1, size), k_cache[:, :, seen], v_cache[:, :, seen]
        )
        x = x + torch.addmm(block.attn.c_proj.bias, a.reshape(1, width), block.attn.c_proj.weight)
        h = F.layer_norm(x, (width,), block.ln_2.weight, block.ln_2.bias, eps)
        h = F.gelu(torch.addmm(block.mlp.c_fc.bias, h, block.mlp.c_fc.weight), approximate="tanh")
        return x + torch.addmm(block.mlp.c_proj.bias, h, block.mlp.c_proj.weight)

    def step(token: int, position: int) -> Any:
        x = body.wte.weight[token : token + 1] + body.wpe.weight[position : position + 1]
        for block, k_cache, v_cache in zip(body.h, keys, values, strict=True):
            x = block_step(block, x, k_cache, v_cache, position)
        x = F.layer_norm(x, (width,), body.ln_f.weight, body.ln_f.bias, eps)
        return F.linear(x, model.lm_head.weight)

    return step


def _lean_step_times(model: Any) -> list[float]:
    """Seconds per lean decode step (greedy), one row, from position 0."""
    step, token, times = lean_decoder(model), 5, []
    for position in range(min(LEAN_STEPS, model.config.n_positions)):
        started = time.perf_counter()
        token = int(step(token, position).argmax(-1))
        times.append(time.perf_counter() - started)
    return times
