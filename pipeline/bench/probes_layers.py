"""Probes behind the layer layouts and the one-client target: what each layout and a bare step cost.

``python -m pipeline.bench.probes --probes layer-layouts,lean-step`` runs them
(registered in :mod:`pipeline.bench.probes`, each in a fresh interpreter):

* ``layer-layouts``: the model's linear layers called in the model's order, as
  the engine's start-up tuning calls them (:func:`inference.layer_tuning.measure_layouts`),
  in each layout (dense, packed, weight-first, onednn) on torch's threads, at 1, 16 and 64
  rows: ms per pass summed over the layers every layout applies to, and each other
  layer (GPT-2's tied output layer, never packed) on its own. Unlike the tuning,
  each row count is reported on its own, so the trade between layouts shows.
* ``lean-step``: the engine's two decode steps at one row, on layers tuned as the
  server tunes them: the plain GPT-2 step (:mod:`inference.gpt2_decode`) and the
  model's own forward through transformers, median and fastest of 50 steps each,
  interleaved. The difference is what transformers' module code costs a step.
* ``attention-query``: one decode step's attention calls (one per block) at 1, 16
  and 64 rows, half the rows left-padded, with the query as a weight-first layer
  returns it (a transposed view) and as the plain step passes it (copied
  contiguous), interleaved, and the kernel torch chose for each. It shows what the
  fused kernel's unit-stride condition is worth to a batched step.

GPT-2-family models only (the plain step is GPT-2's). Left out: HTTP,
sampling and repeats (run it again to see the spread).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

LAYOUT_ROWS = (1, 16, 64)
LEAN_STEPS = 60
LEAN_WARMUP = 10
ATTENTION_CONTEXT = 48  # cache columns: a 16-token prompt and 32 new tokens
ATTENTION_STEPS = 40


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
    """Both decode steps the engine can run, one row, layers tuned as the server tunes them.

    Interleaved step by step, each on its own copy of one prefilled cache, so both
    see the same machine at the same moment.
    """
    import copy
    import functools

    import torch

    from inference.gpt2_decode import gpt2_decode_step, model_decode_step
    from inference.kv_cache import cache_layers
    from inference.layer_tuning import tune_linear_layers
    from inference.loader import load_model
    from inference.padded_prefill import padded_prefill

    loaded = load_model(model, "cpu", "fp32")
    tune_linear_layers(loaded.model, list(LAYOUT_ROWS), "measure")
    plain = gpt2_decode_step(loaded.model)
    if plain is None:
        raise ValueError(f"{model}: not a GPT-2 model the plain decode step reproduces")
    prompt = [list(loaded.tokenizer("The capital of France is")["input_ids"])]
    steps: dict[str, Callable[..., Any]] = {
        "plain": plain,
        "transformers": functools.partial(model_decode_step, loaded.model),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    with torch.inference_mode():
        logits, cache, mask = padded_prefill(loaded.model, prompt, torch.device("cpu"))
        cache_layers(cache)
        caches = {"plain": cache, "transformers": copy.deepcopy(cache)}
        token = logits.argmax(-1, keepdim=True)
        for index in range(LEAN_STEPS):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            position = mask.sum(dim=1, keepdim=True) - 1
            for name, step in steps.items():
                started = time.perf_counter()
                step(token, position, mask, caches[name]).argmax(-1)
                if index >= LEAN_WARMUP:
                    times[name].append(time.perf_counter() - started)
    return {
        f"{name}_b1_ms_{stat}": round(func(taken) * 1000, 2)
        for name, taken in times.items()
        for stat, func in (("p50", statistics.median), ("min", min))
    }


def probe_attention_query(model: str) -> dict[str, Any]:
    import torch

    from inference.loader import model_config

    config = model_config(model)  # the shapes; no weights
    width, heads, blocks = int(config.n_embd), int(config.n_head), int(config.n_layer)
    results: dict[str, Any] = {"blocks": blocks, "context": ATTENTION_CONTEXT}
    with torch.inference_mode():
        for rows in LAYOUT_ROWS:
            queries = _weight_first_queries(rows, width, heads)
            keys, values = (
                torch.randn(rows, heads, ATTENTION_CONTEXT, width // heads) for _ in range(2)
            )
            mask = torch.ones(rows, ATTENTION_CONTEXT, dtype=torch.bool)
            mask[::2, : ATTENTION_CONTEXT // 4] = False  # every other row left-padded
            attend = None if rows == 1 else mask[:, None, None, :]
            times = _time_attention(queries, keys, values, attend, blocks)
            for name, taken in times.items():
                results[f"{name}_{rows}_rows_ms"] = round(statistics.median(taken) * 1000, 3)
            results[f"kernels_{rows}_rows"] = _attention_kernels(queries, keys, values, attend)
    return results


def _weight_first_queries(rows: int, width: int, heads: int) -> dict[str, Callable[[], Any]]:
    """The query as a fused q/k/v weight-first layer returns it, and the plain step's copy."""
    import torch

    from inference.packed_linear import WeightFirstLinear

    layer = WeightFirstLinear(torch.randn(3 * width, width), torch.randn(3 * width))
    fused = layer(torch.randn(rows, 1, width))
    strided = fused.view(rows, 1, 3, heads, width // heads).unbind(2)[0].transpose(1, 2)
    return {"strided": lambda: strided, "contiguous": lambda: strided.contiguous()}


def _time_attention(
    queries: dict[str, Callable[[], Any]], keys: Any, values: Any, attend: Any, blocks: int
) -> dict[str, list[float]]:
    import torch.nn.functional as F

    times: dict[str, list[float]] = {name: [] for name in queries}
    for index in range(ATTENTION_STEPS):
        for name, query in queries.items():
            started = time.perf_counter()
            for _ in range(blocks):
                F.scaled_dot_product_attention(query(), keys, values, attend)
            if index >= LEAN_WARMUP:
                times[name].append(time.perf_counter() - started)
    return times


def _attention_kernels(
    queries: dict[str, Callable[[], Any]], keys: Any, values: Any, attend: Any
) -> dict[str, str]:
    import torch.nn.functional as F
    from torch.profiler import profile

    kernels: dict[str, str] = {}
    for name, query in queries.items():
        with profile() as profiler:
            F.scaled_dot_product_attention(query(), keys, values, attend)
        chosen = [e.key for e in profiler.key_averages() if e.key.startswith("aten::_scaled")]
        kernels[name] = ",".join(sorted(chosen)).removeprefix("aten::_scaled_dot_product_")
    return kernels
