"""Probes that break a benchmark miss down: where a decode step's time and 64 clients' memory go.

``python -m pipeline.bench.probes --probes step-profile,memory-c64,output-layer`` runs them
(registered in :mod:`pipeline.bench.probes`, each in a fresh interpreter):

* ``step-profile``: the engine's decode step at batch 1 and 16 (layers chosen by
  measuring, as :meth:`TorchEngine.start` does; the engine's growing cache),
  median of 40 steps each, and torch's profiler over 10 of them: the share of the step spent in
  matrix products (oneDNN's packed linear, ``addmm``, ``mm``, ``addmv``, ``mv``). If the matrix
  multiplies alone take longer than the target allows for the whole step, no
  scheduling or Python work on our side can meet it.
* ``memory-c64``: our engine in process at 64 clients (3 rounds of 32 tokens,
  the benchmark's prompts and ``max_batch_size`` 64): resident memory after
  import, after loading, after start (packing and warm-up), its peak during the
  load (sampled every 5 ms), and the KV cache's own bytes at its largest. The
  difference between the peak's growth and the cache is what the allocator
  holds beyond live tensors.

* ``output-layer``: the model's output layer (GPT-2's is tied to the embedding)
  as one matrix multiply, dense against packed, at 1, 16 and 64 rows, on
  torch's threads, and the dense one-row call's effective memory bandwidth.

Left out: HTTP (``mlcicd bench`` measures the server whole) and repeats.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import threading
import time
from typing import Any

from pipeline.load.generator import DEFAULT_PROMPTS

GIB = 1 << 30
# A weight-first layer computes a single row as a matrix-vector product (addmv, mv).
MATMUL_OPS = ("mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "aten::addmv", "aten::mv")


def prompts_for(loaded: Any, count: int) -> list[tuple[str, tuple[int, ...]]]:
    texts = [DEFAULT_PROMPTS[index % len(DEFAULT_PROMPTS)] for index in range(count)]
    return [(text, tuple(loaded.tokenizer(text)["input_ids"])) for text in texts]


def probe_step_profile(model: str) -> dict[str, Any]:
    from inference.compute_thread import run_in_fresh_thread

    return run_in_fresh_thread(lambda: _step_profile(model))


def _step_profile(model: str) -> dict[str, Any]:
    from inference.layer_tuning import tune_linear_layers
    from inference.loader import load_model

    loaded = load_model(model, "cpu", "fp32")
    choices = tune_linear_layers(loaded.model, [1, 16], "measure")
    results: dict[str, Any] = {}
    for batch in (1, 16):
        times, events = profiled_steps(loaded, batch)
        total = sum(event.self_cpu_time_total for event in events)
        matmul = sum(event.self_cpu_time_total for event in events if event.key in MATMUL_OPS)
        suffix = "" if batch == 1 else f"_b{batch}"
        results[f"decode_b{batch}_ms_p50"] = round(statistics.median(times[5:40]) * 1000, 2)
        results[f"matmul_share{suffix}"] = round(matmul / total, 3) if total else None
        results[f"matmul_ms_per_step{suffix}"] = round(matmul / 10 / 1000, 2)
    results["layers"] = [f"{c.shape} x{c.layers}: {c.layout} {c.threads}t" for c in choices]
    return results


def profiled_steps(loaded: Any, batch: int) -> tuple[list[float], Any]:
    """``batch`` rows' KV-cached decode steps after a shared prompt: 40 timed, then 10 profiled."""
    import torch
    from torch.profiler import profile

    from inference.kv_cache import cache_layers
    from inference.padded_prefill import padded_prefill

    prompt = list(loaded.tokenizer("The capital of France is")["input_ids"])
    times: list[float] = []
    with torch.inference_mode():
        _, cache, mask = padded_prefill(loaded.model, [prompt] * batch, torch.device("cpu"))
        cache_layers(cache)
        state = {"mask": mask}

        def step() -> None:
            mask = torch.cat([state["mask"], torch.ones((batch, 1), dtype=torch.long)], dim=1)
            started = time.perf_counter()
            out = loaded.model(
                input_ids=torch.full((batch, 1), 5), attention_mask=mask,
                position_ids=mask.sum(dim=1, keepdim=True) - 1,
                past_key_values=cache, use_cache=True,
            )  # fmt: skip
            out.logits[:, -1, :].argmax(dim=-1)
            times.append(time.perf_counter() - started)
            state["mask"] = mask

        for _ in range(40):
            step()
        with profile() as profiler:
            for _ in range(10):
                step()
    return times, profiler.key_averages()


def probe_output_layer(model: str) -> dict[str, Any]:
    """The output layer's matrix multiply, whole (no slice), dense and packed, at 1, 16 and 64 rows.

    Why whole: layer tuning times this layer on a slice that fits in cache,
    and a tied output layer is no longer packed; this is what that costs.
    """
    import torch

    from inference.loader import load_model
    from inference.packed_linear import PACK_ROWS, packable

    loaded = load_model(model, "cpu", "fp32")
    weight = loaded.model.get_output_embeddings().weight.detach()
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)
    layouts: dict[str, Any] = {"dense": lambda x: torch.nn.functional.linear(x, weight)}
    if packable(loaded.model):
        layouts["packed"] = lambda x: torch.ops.mkldnn._linear_pointwise(
            x, packed, None, "none", [], ""
        )
    results: dict[str, Any] = {"shape": "x".join(map(str, weight.shape))}
    with torch.inference_mode():
        for rows, (name, layer) in itertools.product((1, 16, 64), layouts.items()):
            x = torch.randn(rows, weight.shape[1])
            layer(x)
            best = min(_mean_call_s(layer, x) for _ in range(3))
            results[f"{name}_{rows}_ms"] = round(best * 1000, 2)
    results["dense_1_row_gb_per_s"] = round(weight.nbytes / results["dense_1_ms"] / 1e6, 1)
    return results


def _mean_call_s(layer: Any, x: Any, calls: int = 20) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        layer(x)
    return (time.perf_counter() - started) / calls


def probe_memory_c64(model: str) -> dict[str, Any]:
    import psutil

    import inference.torch_engine as torch_engine
    from inference.engine import GenerationParams
    from inference.kv_cache import cache_layers
    from inference.loader import load_model

    process = psutil.Process()
    rss = {"imported": process.memory_info().rss}
    loaded = load_model(model, "cpu", "fp32")
    rss["loaded"] = process.memory_info().rss
    engine = torch_engine.TorchEngine(loaded, max_batch_size=64, batch_window_s=0.005,
                                      queue_cap=64)  # fmt: skip
    cache_bytes = [0]

    def measure_cache(_: int) -> None:
        layers = cache_layers(engine._batch.cache)
        held = sum(layer._k.nbytes + layer._v.nbytes for layer in layers)
        cache_bytes[0] = max(cache_bytes[0], held)

    engine.observe_batches(measure_cache)
    engine.start()
    rss["started"] = process.memory_info().rss
    peak, stop = [rss["started"]], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    prompts = prompts_for(loaded, 64 * 3)

    async def client(worker: int, loop: asyncio.AbstractEventLoop) -> None:
        for index in range(worker, len(prompts), 64):
            text, ids = prompts[index]
            params = GenerationParams(prompt=text, prompt_ids=ids, max_new_tokens=32,
                                      min_new_tokens=32)  # fmt: skip
            async for _ in engine.submit(params, loop).events():
                pass

    async def drive() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(client(worker, loop) for worker in range(64)))

    asyncio.run(drive())
    stop.set()
    sampler.join()
    engine.stop()
    return {
        **{f"rss_{name}_gib": round(value / GIB, 3) for name, value in rss.items()},
        "rss_peak_c64_gib": round(peak[0] / GIB, 3),
        "growth_c64_gib": round((peak[0] - rss["started"]) / GIB, 3),
        "kv_cache_max_gib": round(cache_bytes[0] / GIB, 3),
    }
