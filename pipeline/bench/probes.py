"""Engine probes behind docs/performance.md: why the engine is built as it is.

``python -m pipeline.bench.probes [--model M] [--out FILE]`` runs, each in a
fresh interpreter so no probe inherits another's threads or caches:

* ``steps``: the bare model's KV-cached decode step at batch 1 and 16, and the
  prefill of the 16 prompts both as one padded forward and as the engine cuts it
  (inference/padded_prefill.py), eager and then with packed linear layers (what
  the engine serves), medians, on one thread.
* ``engine``: our engine in-process, no HTTP, at concurrency 16 (3 rounds of 16
  requests, 32 tokens each, the benchmark's prompts), the way ``mlcicd serve``
  runs it: the main thread only runs the event loop.
* ``engine-second-pool``: the same, except that the main thread first runs one
  parallel torch op and so keeps a CPU thread pool of its own, as it did when the
  engine warmed up on the calling thread (inference/compute_thread.py).
* ``engine-omp-active`` / ``engine-omp-passive``: ``engine`` with
  ``OMP_WAIT_POLICY`` set, i.e. idle OpenMP helpers always spin / sleep at once.
* ``step-profile``, ``memory-c64`` and ``output-layer``: where a decode step's
  time and 64 clients' memory go, and what the output layer's layout costs
  (:mod:`pipeline.bench.probes_breakdown`).
* ``layer-layouts`` and ``lean-step``: each linear-layer layout's cost in the
  model's order at 1, 16 and 64 rows, and a bare one-row decode step without
  transformers' modules (:mod:`pipeline.bench.probes_layers`).
* ``torch-compile``: the eager decode step against ``torch.compile`` of the
  model (inductor), compiled cold (inductor's caches off, as on a fresh server):
  the first compiled steps (compiling), the steady step, and the first step at a
  new batch size.
* ``hf-generate-batch`` and ``hf-generate-batch-packed``: transformers' own
  continuous-batching API (``generate_batch``) on the same 48 requests, submitted
  all at once (its best case), without and with our packed linear layers; its
  first call (which sizes and warms its paged cache) is excluded, and nothing
  else holds a CPU thread pool while it runs.

Each prints what it measured: tokens/s, and for our engine the median
decode-forward time. The
output is plain text, recorded in docs/bench/probes.txt. Left out: HTTP (that is
what ``mlcicd bench`` measures) and repeated trials (run it again to see the spread).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.bench.probes_breakdown import (
    probe_memory_c64,
    probe_output_layer,
    probe_step_profile,
    prompts_for,
)
from pipeline.bench.probes_layers import (
    probe_attention_query,
    probe_layer_layouts,
    probe_lean_step,
)

PROBES = (
    "steps",
    "step-profile",
    "memory-c64",
    "output-layer",
    "layer-layouts",
    "lean-step",
    "attention-query",
    "engine",
    "engine-second-pool",
    "engine-omp-active",
    "engine-omp-passive",
    "hf-generate-batch",
    "hf-generate-batch-packed",
    "torch-compile",
)
# Probes that are the engine probe under another OpenMP setting (read at process start).
_PROBE_ENV = {
    "engine-omp-active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "engine-omp-passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    # A cold compile, as a freshly started server pays it: no on-disk cache reuse.
    "torch-compile": {"TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"},
}
CONCURRENCY, ROUNDS, NEW_TOKENS = 16, 3, 32


def _rate(tokens: int, elapsed: float) -> dict[str, Any]:
    rate = round(tokens / elapsed, 1)
    return {"tokens": tokens, "seconds": round(elapsed, 2), "tokens_per_s": rate}


def _probe_engine(model: str, second_pool: bool) -> dict[str, Any]:
    import torch

    import inference.torch_engine as torch_engine
    from inference.engine import FinishEvent, GenerationParams
    from inference.loader import load_model

    loaded = load_model(model, "cpu", "fp32")
    if second_pool:  # the main thread computes once, so it keeps a pool of its own
        torch.ones(1024, 1024) @ torch.ones(1024, 1024)
    forwards: list[float] = []

    class TimedEngine(torch_engine.TorchEngine):
        def _forward_step(self, seqs: Any) -> Any:
            started = time.perf_counter()
            try:
                return super()._forward_step(seqs)
            finally:
                forwards.append(time.perf_counter() - started)

    engine = TimedEngine(loaded, max_batch_size=CONCURRENCY, batch_window_s=0.005, queue_cap=64)
    engine.start()
    prompts = prompts_for(loaded, CONCURRENCY * ROUNDS)

    async def client(worker: int, loop: asyncio.AbstractEventLoop) -> int:
        tokens = 0
        for index in range(worker, len(prompts), CONCURRENCY):
            text, ids = prompts[index]
            params = GenerationParams(
                prompt=text, prompt_ids=ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS
            )
            async for event in engine.submit(params, loop).events():
                if isinstance(event, FinishEvent):
                    tokens += event.generated_tokens
        return tokens

    async def drive() -> int:
        loop = asyncio.get_running_loop()
        return sum(await asyncio.gather(*(client(w, loop) for w in range(CONCURRENCY))))

    forwards.clear()
    started = time.perf_counter()
    tokens = asyncio.run(drive())
    elapsed = time.perf_counter() - started
    engine.stop()
    return {
        **_rate(tokens, elapsed),
        "decode_forward_ms_p50": round(statistics.median(forwards) * 1000, 1),
    }


def _probe_hf_generate_batch(model: str, packed: bool) -> dict[str, Any]:
    from transformers import GenerationConfig

    from inference.compute_thread import run_in_fresh_thread
    from inference.loader import load_model
    from inference.packed_linear import pack_linear_layers

    loaded = load_model(model, "cpu", "fp32")
    inputs = [list(ids) for _, ids in prompts_for(loaded, CONCURRENCY * ROUNDS)]
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        eos_token_id=-1,  # no early stop: every request does the same work
        pad_token_id=0,
    )

    # generate_batch decodes on a thread of its own; every step here runs on a
    # short-lived thread, so no other pool is alive while it is timed.
    if packed:
        run_in_fresh_thread(lambda: pack_linear_layers(loaded.model))
    run_in_fresh_thread(
        lambda: loaded.model.generate_batch(inputs[:CONCURRENCY], generation_config=config)
    )

    def timed() -> tuple[float, Any]:
        started = time.perf_counter()
        out = loaded.model.generate_batch(inputs, generation_config=config, warmup=False)
        return time.perf_counter() - started, out

    elapsed, out = run_in_fresh_thread(timed)
    tokens = sum(len(result.generated_tokens) for result in out.values())
    return _rate(tokens, elapsed)


def _probe_steps(model: str) -> dict[str, Any]:
    """Median times of the bare model's steps, eager and then packed, on one thread."""
    import torch

    from inference.compute_thread import run_in_fresh_thread
    from inference.kv_cache import cache_layers
    from inference.loader import load_model
    from inference.packed_linear import pack_linear_layers
    from inference.padded_prefill import padded_prefill, prefill_chunks

    loaded = load_model(model, "cpu", "fp32")
    prompts = [list(ids) for _, ids in prompts_for(loaded, CONCURRENCY)]
    cut = [[prompts[i] for i in chunk] for chunk in prefill_chunks([len(p) for p in prompts])]
    device = torch.device("cpu")

    def median_ms(step: Callable[[], object], repeats: int = 9) -> float:
        step()  # first call: allocations and kernel selection
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        return round(statistics.median(times) * 1000, 1)

    @torch.inference_mode()
    def decode_ms(rows: list[list[int]]) -> float:
        _, cache, mask = padded_prefill(loaded.model, rows, device)
        cache_layers(cache)  # the engine's growing cache layers
        last = torch.full((len(rows), 1), 5, dtype=torch.long)
        state = {"mask": mask}

        def step() -> None:
            mask = torch.cat([state["mask"], torch.ones_like(last)], dim=1)
            positions = mask.sum(dim=1, keepdim=True) - 1
            loaded.model(
                input_ids=last,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
            state["mask"] = mask

        return median_ms(step)

    def run() -> dict[str, Any]:
        result: dict[str, Any] = {}
        for label in ("eager", "packed"):
            if label == "packed":
                result["packed_layers"] = pack_linear_layers(loaded.model)
            for batch in (1, CONCURRENCY):
                result[f"{label}_decode_b{batch}_ms"] = decode_ms(prompts[:batch])
            result[f"{label}_prefill_one_forward_ms"] = median_ms(
                lambda: padded_prefill(loaded.model, prompts, device), repeats=5
            )
            result[f"{label}_prefill_engine_cut_ms"] = median_ms(
                lambda: [padded_prefill(loaded.model, rows, device) for rows in cut], repeats=5
            )
        result["prompt_tokens"] = sum(len(ids) for ids in prompts)
        result["engine_cut_forwards"] = len(cut)
        return result

    return run_in_fresh_thread(run)


def _probe_torch_compile(model: str) -> dict[str, Any]:
    """``torch.compile`` (inductor) on the decode step: what compiling costs, what it buys.

    The step is timed at batch 16 for a dozen steps (the cache grows by one each
    step, as in serving), then once at batch 1 (a new batch size, as when requests
    leave), against the same eager step.
    """
    import torch

    from inference.compute_thread import run_in_fresh_thread
    from inference.loader import load_model

    loaded = load_model(model, "cpu", "fp32")
    prompts = [list(ids) for _, ids in prompts_for(loaded, CONCURRENCY)]
    device = torch.device("cpu")

    @torch.no_grad()  # not inference_mode: dynamo's recompile fails on inference tensors
    def step_times(forward: Callable[..., Any], rows: list[list[int]], steps: int) -> list[float]:
        width = max(len(ids) for ids in rows)
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        out = loaded.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0),
            use_cache=True,
        )
        cache = out.past_key_values
        last = torch.full((len(rows), 1), 5, dtype=torch.long)
        times = []
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones_like(last)], dim=1)
            started = time.perf_counter()
            forward(
                input_ids=last,
                attention_mask=mask,
                position_ids=mask.sum(dim=1, keepdim=True) - 1,
                past_key_values=cache,
                use_cache=True,
            )
            times.append(time.perf_counter() - started)
        return times

    def run() -> dict[str, Any]:
        eager = step_times(loaded.model, prompts, 6)
        compiled_model = torch.compile(loaded.model)
        compiled = step_times(compiled_model, prompts, 12)
        batch1 = step_times(compiled_model, prompts[:1], 2)
        return {
            "eager_decode_b16_ms": round(statistics.median(eager[1:]) * 1000, 1),
            "compiled_first_steps_s": [round(t, 1) for t in compiled[:3]],
            "compiled_decode_b16_ms": round(statistics.median(compiled[3:]) * 1000, 1),
            "compiled_first_step_at_b1_s": round(batch1[0], 1),
        }

    return run_in_fresh_thread(run)


def run_probe(name: str, model: str) -> dict[str, Any]:
    probes: dict[str, Callable[[], dict[str, Any]]] = {
        "steps": lambda: _probe_steps(model),
        "step-profile": lambda: probe_step_profile(model),
        "memory-c64": lambda: probe_memory_c64(model),
        "output-layer": lambda: probe_output_layer(model),
        "layer-layouts": lambda: probe_layer_layouts(model),
        "lean-step": lambda: probe_lean_step(model),
        "attention-query": lambda: probe_attention_query(model),
        "torch-compile": lambda: _probe_torch_compile(model),
        "engine": lambda: _probe_engine(model, second_pool=False),
        "engine-second-pool": lambda: _probe_engine(model, second_pool=True),
        "engine-omp-active": lambda: _probe_engine(model, second_pool=False),
        "engine-omp-passive": lambda: _probe_engine(model, second_pool=False),
        "hf-generate-batch": lambda: _probe_hf_generate_batch(model, packed=False),
        "hf-generate-batch-packed": lambda: _probe_hf_generate_batch(model, packed=True),
    }
    return probes[name]()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench.probes", description=__doc__)
    parser.add_argument("--model", default="gpt2-small-random")
    parser.add_argument("--out", type=Path, help="also write the report here")
    parser.add_argument(
        "--probes",
        default=",".join(PROBES),
        help=f"comma-separated, in order (default: all): {', '.join(PROBES)}",
    )
    parser.add_argument("--one", choices=PROBES, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_probe(args.one, args.model)))
        return 0
    chosen = [name.strip() for name in args.probes.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in PROBES]
    if unknown or not chosen:
        what = ", ".join(unknown) if unknown else "an empty list"
        parser.error(f"--probes: {what} is not a probe; choose from {', '.join(PROBES)}")
    lines = [
        f"python -m pipeline.bench.probes --model {args.model} --probes {','.join(chosen)}",
        f"started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; "
        f"{CONCURRENCY} clients x {ROUNDS} rounds, {NEW_TOKENS} tokens per request, fp32",
    ]
    for name in chosen:
        print(f"[probe] {name} ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.bench.probes", "--model", args.model, "--one", name],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **_PROBE_ENV.get(name, {})},
        )
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            lines.append(f"{name:26s} FAILED: {tail[0]}")
            continue
        lines.append(f"{name:26s} {done.stdout.strip().splitlines()[-1]}")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0 if "FAILED" not in report else 1


if __name__ == "__main__":
    sys.exit(main())
