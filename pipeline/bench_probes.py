"""Engine probes behind docs/performance.md: why the engine is built as it is.

``python -m pipeline.bench_probes [--model M] [--out FILE]`` runs, each in a
fresh interpreter so no probe inherits another's threads or caches:

* ``engine``: our engine in-process, no HTTP, at concurrency 16 (3 rounds of 16
  requests, 32 tokens each, the benchmark's prompts), the way ``mlcicd serve``
  runs it: the main thread only runs the event loop.
* ``engine-second-pool``: the same, except that the main thread first runs one
  parallel torch op and so keeps a CPU thread pool of its own, as it did when the
  engine warmed up on the calling thread (inference/compute_thread.py).
* ``engine-omp-active`` / ``engine-omp-passive``: ``engine`` with
  ``OMP_WAIT_POLICY`` set, i.e. idle OpenMP helpers always spin / sleep at once.
* ``hf-generate-batch`` and ``hf-generate-batch-packed``: transformers' own
  continuous-batching API (``generate_batch``) on the same 48 requests, submitted
  all at once (its best case), without and with our packed linear layers; its
  first call (which sizes and warms its paged cache) is excluded.

Each prints tokens/s and, for our engine, the median decode-forward time. The
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

from pipeline.loadgen import DEFAULT_PROMPTS

PROBES = (
    "engine",
    "engine-second-pool",
    "engine-omp-active",
    "engine-omp-passive",
    "hf-generate-batch",
    "hf-generate-batch-packed",
)
# Probes that are the engine probe under another OpenMP setting (read at process start).
_PROBE_ENV = {
    "engine-omp-active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "engine-omp-passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}
CONCURRENCY, ROUNDS, NEW_TOKENS = 16, 3, 32


def _prompts(loaded: Any, count: int) -> list[tuple[str, tuple[int, ...]]]:
    texts = [DEFAULT_PROMPTS[index % len(DEFAULT_PROMPTS)] for index in range(count)]
    return [(text, tuple(loaded.tokenizer(text)["input_ids"])) for text in texts]


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
    prompts = _prompts(loaded, CONCURRENCY * ROUNDS)

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
        "tokens": tokens,
        "seconds": round(elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 1),
        "decode_forward_ms_p50": round(statistics.median(forwards) * 1000, 1),
    }


def _probe_hf_generate_batch(model: str, packed: bool) -> dict[str, Any]:
    from transformers import GenerationConfig

    from inference.compute_thread import run_in_fresh_thread
    from inference.loader import load_model
    from inference.packed_linear import pack_linear_layers

    loaded = load_model(model, "cpu", "fp32")
    inputs = [list(ids) for _, ids in _prompts(loaded, CONCURRENCY * ROUNDS)]
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        eos_token_id=-1,  # no early stop: every request does the same work
        pad_token_id=0,
    )

    def run() -> dict[str, Any]:  # one thread, as our engine has
        if packed:
            pack_linear_layers(loaded.model)
        loaded.model.generate_batch(inputs[:CONCURRENCY], generation_config=config)
        started = time.perf_counter()
        out = loaded.model.generate_batch(inputs, generation_config=config, warmup=False)
        elapsed = time.perf_counter() - started
        tokens = sum(len(result.generated_tokens) for result in out.values())
        return {
            "tokens": tokens,
            "seconds": round(elapsed, 2),
            "tokens_per_s": round(tokens / elapsed, 1),
        }

    return run_in_fresh_thread(run, name="hf-generate-batch")


def run_probe(name: str, model: str) -> dict[str, Any]:
    probes: dict[str, Callable[[], dict[str, Any]]] = {
        "engine": lambda: _probe_engine(model, second_pool=False),
        "engine-second-pool": lambda: _probe_engine(model, second_pool=True),
        "engine-omp-active": lambda: _probe_engine(model, second_pool=False),
        "engine-omp-passive": lambda: _probe_engine(model, second_pool=False),
        "hf-generate-batch": lambda: _probe_hf_generate_batch(model, packed=False),
        "hf-generate-batch-packed": lambda: _probe_hf_generate_batch(model, packed=True),
    }
    return probes[name]()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench_probes", description=__doc__)
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
        f"python -m pipeline.bench_probes --model {args.model} --probes {','.join(chosen)}",
        f"started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; "
        f"{CONCURRENCY} clients x {ROUNDS} rounds, {NEW_TOKENS} tokens per request, fp32",
    ]
    for name in chosen:
        print(f"[probe] {name} ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.bench_probes", "--model", args.model, "--one", name],
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
