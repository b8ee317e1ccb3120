"""The moving parts of ``mlcicd bench``: real server processes, the peer, the loop.

Why separate from :mod:`pipeline.bench.targets`: that module is the pure arithmetic
(plans, aggregation, targets) and is unit-tested without processes; this one
starts servers, samples ``/proc`` and drives the load generator, and is tested
end to end (``tests/integration/test_bench_quick.py``).

Each server runs in its own process group on a free 127.0.0.1 port and is
always stopped (SIGTERM, then SIGKILL) before the next one starts, so two
servers never compete for the two cores. The one exception is the paired phase
(pipeline/bench/paired.py): our server and the peer's processes are all up, and
take turns, so only one computes at a time. Left out: running servers in
parallel (it would halve what each one measures) and retries (a failed cell is
recorded as failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from inference.builtin_model import cache_root
from pipeline import serving
from pipeline.bench.paired import PairedCell, measure_paired
from pipeline.bench.peer import PeerCell, process_note, run_peer
from pipeline.bench.targets import GIB, SERVERS, Cell, ServerKind, cell_from_load, plan_requests
from pipeline.bench.tree_sampler import TreeSampler
from pipeline.convert import ctranslate2_candidate, source_directory
from pipeline.definition import PAIRED_METRICS, Bench, load_definition
from pipeline.load.generator import run_load
from pipeline.processes import ManagedProcess, free_port

# A level still running after this many cell budgets (the first level has no
# rate to plan from) is cancelled and recorded as aborted, never extrapolated.
ABORT_AFTER_BUDGETS = 3


def server_argv(kind: ServerKind, model: str, port: int | str, engine: str = "torch") -> list[str]:
    """The exact command line each server is started with (recorded in the output)."""
    if kind == "ours":
        return serving.server_argv(model, port, ("--engine", engine))
    return [sys.executable, "-m", "pipeline.bench.baseline_server",
            "--model", model, "--port", str(port)]  # fmt: skip


@functools.cache
def conversion_of(model: str) -> str:
    """The fp32 CTranslate2 candidate of ``model`` (pipeline/convert.py), made once and
    cached; ValueError or RuntimeError says why it cannot be made."""
    source = source_directory(model, "--engine ctranslate2")
    return str(ctranslate2_candidate(source, "float32", cache_root() / "candidates"))


@contextlib.contextmanager
def running_server(
    kind: ServerKind,
    model: str,
    log_dir: Path,
    ready_timeout_s: float,
    env: dict[str, str] | None = None,
    engine: str = "torch",
) -> Iterator[tuple[str, ManagedProcess]]:
    """Start one server, wait for ``/ready``, always stop it.

    With ``engine="ctranslate2"`` our server serves the model's conversion, made by
    the pipeline's conversion step (pipeline/convert.py); cells keep the model's name.
    """
    port = free_port()
    served = conversion_of(model) if kind == "ours" and engine == "ctranslate2" else model
    argv = server_argv(kind, served, port, engine)
    if kind == "ours":
        limits = load_definition(serving.default_profile(model)).serving
        env = {**serving.serving_env(limits), **(env or {})}
    server = serving.start_http_server(
        f"{kind}-{model}", argv, port, log_dir, env=env, ready_timeout_s=ready_timeout_s
    )
    try:
        yield server.url, server.process
    finally:
        server.stop()


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def model_floor(
    model: str, batch_sizes: Sequence[int] = (1, 16), steps: int = 12
) -> dict[str, Any]:
    """Weights bytes, and what the bare model costs here, for explaining the server's figures.

    Loads the model in this process as the server does and times (median) one
    KV-cached decode step of the plain ``model(...)`` call at each batch size,
    with no server, mask or scheduler around it: the floor for inter-token
    latency and the ceiling for throughput that any server on this machine
    meets. Also times a large fp32 matmul for the machine's compute ceiling
    (GFLOP/s) and gives the model's forward FLOPs per token (2 x parameters).
    """
    import torch

    from inference.loader import load_model

    loaded = load_model(model)
    net, device = loaded.model, loaded.device
    seen: set[int] = set()
    weights = 0
    for tensor in [*net.parameters(), *net.buffers()]:
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in seen:
            seen.add(pointer)
            weights += tensor.untyped_storage().nbytes()
    params = sum(p.numel() for p in net.parameters())
    vocab = int(net.config.vocab_size)
    step_ms: dict[str, float] = {}
    with torch.inference_mode():
        # The first size is measured twice: the first pass pays one-off kernel set-up.
        for batch in [batch_sizes[0], *batch_sizes]:
            ids = torch.randint(0, vocab, (batch, 16), device=device)
            out = net(input_ids=ids, use_cache=True)
            cache, last = out.past_key_values, ids[:, -1:]
            times = []
            for _ in range(steps):
                started = time.perf_counter()
                out = net(input_ids=last, past_key_values=cache, use_cache=True)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
                cache = out.past_key_values
            step_ms[str(batch)] = round(1000 * _median(times[2:]), 2)
        a = torch.randn(1024, 1024, device=device)
        b = torch.randn(1024, 1024, device=device)
        mm = []
        for _ in range(6):
            started = time.perf_counter()
            torch.mm(a, b)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            mm.append(time.perf_counter() - started)
    gflops = 2 * 1024**3 / _median(mm[1:]) / 1e9
    flops_per_token = 2 * params
    del loaded, net
    return {
        "weights_bytes": weights,
        "parameters": params,
        "decode_step_ms": step_ms,
        "decode_tokens_per_s": {k: round(int(k) * 1000 / v, 1) for k, v in step_ms.items()},
        "matmul_gflops": round(gflops, 1),
        "gflop_per_token": round(flops_per_token / 1e9, 4),
        "compute_ceiling_tokens_per_s": round(gflops * 1e9 / flops_per_token, 1),
    }


Progress = Callable[[str], None]


def measure_server(
    kind: ServerKind,
    model: str,
    bench: Bench,
    concurrency: Sequence[int],
    log_dir: Path,
    progress: Progress,
    ready_timeout_s: float = 300.0,
    env: dict[str, str] | None = None,
    engine: str = "torch",
    after_levels: Callable[[str], None] | None = None,
) -> list[Cell]:
    """Every concurrency level, ascending, against one freshly started server;
    then ``after_levels(url)``, while it still runs (the paired phase)."""
    cells: list[Cell] = []
    progress(f"[{model}/{kind}] starting server")
    with running_server(kind, model, log_dir, ready_timeout_s, env, engine) as (url, proc):
        sampler = TreeSampler(proc.pid)
        sampler.start()
        try:
            previous_rps: float | None = None
            aborted = False
            for level in sorted(concurrency):
                if aborted:
                    why = "not run: a lower concurrency level was aborted"
                    cell = Cell(model, kind, level, skipped=why)
                else:
                    cell = _measure_level(kind, model, bench, level, previous_rps, url, sampler)
                aborted = aborted or (cell.skipped or "").startswith("aborted")
                cells.append(cell)
                if cell.skipped is not None:
                    progress(f"[{model}/{kind}] c={level}: {cell.skipped}")
                    continue
                previous_rps = cell.requests_per_s or None
                progress(
                    f"[{model}/{kind}] c={level}: {cell.requests} requests, "
                    f"{cell.tokens_per_s:.1f} tok/s, {cell.requests_per_s:.2f} req/s, "
                    f"errors {cell.errors or 0}, peak RSS {cell.peak_rss_bytes / GIB:.2f} GiB, "
                    f"foreign load {cell.foreign_cpu_cores:.2f} cores"
                    + (f" ({cell.note})" if cell.note else "")
                )
        finally:
            sampler.stop()
        if after_levels is not None:
            after_levels(url)
    return cells


def _measure_level(
    kind: ServerKind,
    model: str,
    bench: Bench,
    level: int,
    previous_rps: float | None,
    url: str,
    sampler: TreeSampler,
) -> Cell:
    plan = plan_requests(level, bench, previous_rps)
    if plan.skipped is not None:
        return Cell(model, kind, level, skipped=plan.skipped)
    sampler.begin_cell()
    cap_s = ABORT_AFTER_BUDGETS * bench.cell_budget_s
    load = run_load(
        url,
        requests=plan.requests,
        concurrency=level,
        warmup=min(bench.warmup_requests, plan.requests),
        max_new_tokens=bench.max_new_tokens,
        fixed_tokens=True,
        request_timeout_s=cap_s,
        progress=False,
    )
    try:
        result = asyncio.run(asyncio.wait_for(load, timeout=cap_s))
    except TimeoutError:
        peak, foreign = sampler.end_cell()
        return Cell(
            model,
            kind,
            level,
            peak_rss_bytes=peak,
            foreign_cpu_cores=foreign,
            skipped=f"aborted: {plan.requests} requests did not finish within {cap_s:.0f} s "
            f"({ABORT_AFTER_BUDGETS} x the cell budget); nothing recorded",
        )
    peak, foreign = sampler.end_cell()
    return cell_from_load(model, kind, result, peak, foreign, plan.note)


def peer_batches(bench: Bench, model: str, concurrency: Sequence[int]) -> list[int]:
    """The peer's batch sizes: our concurrency levels, plus any target's ``peer_batch``."""
    extra = {t.peer_batch for t in bench.targets if t.model == model and t.peer_batch}
    return sorted(set(concurrency) | extra)


def measure_peer(
    bench: Bench, model: str, concurrency: Sequence[int], threads: int, progress: Progress
) -> list[PeerCell]:
    """CTranslate2 at every quantization of the bench table, in fresh processes."""
    cells: list[PeerCell] = []
    for quantization in bench.peer_quantizations:
        started = time.monotonic()
        found = run_peer(
            model, quantization, peer_batches(bench, model, concurrency),
            bench.max_new_tokens, bench.peer_repeats, threads, bench.cell_budget_s,
            bench.peer_processes,
        )  # fmt: skip
        cells.extend(found)
        for cell in found:
            shown = cell.skipped or (
                f"{cell.tokens_per_s:.1f} tok/s, step {cell.step_ms:.1f} ms, "
                f"first token {cell.first_token_ms:.0f} ms"
            )
            if note := process_note(cell.process_tokens_per_s):
                shown += f"; {note}"
            if cell.measured:
                shown += f"; foreign load {cell.foreign_cpu_cores:.2f} cores"
            progress(f"[{model}/peer-{quantization}] batch {cell.batch}: {shown}")
        progress(f"[{model}/peer-{quantization}] done in {time.monotonic() - started:.0f} s")
    return cells


def _is_quantized_candidate(model: str) -> bool:
    from inference.quantize import read_marker

    directory = Path(model)
    return directory.is_dir() and read_marker(directory) is not None


def run_bench(
    bench: Bench,
    models: Sequence[str],
    concurrency: Sequence[int],
    log_dir: Path,
    progress: Progress,
    servers: Sequence[ServerKind] = SERVERS,
    torch_threads: int | None = None,
    peer: bool = True,
    engine: str = "torch",
) -> tuple[list[Cell], dict[str, dict[str, Any]], list[PeerCell], list[PairedCell]]:
    """(cells, :func:`model_floor` per model, peer cells, paired cells), one process
    at a time but for the paired phase, which alternates our server and the peer.

    ``torch_threads`` sets ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` for both
    servers alike (and torch's threads for the bare-model timing here); the
    peer gets as many threads as torch uses here, so all sides use the same cores.
    """
    import torch

    env: dict[str, str] | None = None
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
        env = {"OMP_NUM_THREADS": str(torch_threads), "MKL_NUM_THREADS": str(torch_threads)}
    cells: list[Cell] = []
    floors: dict[str, dict[str, Any]] = {}
    peers: list[PeerCell] = []
    paired: list[PairedCell] = []
    threads = torch.get_num_threads()
    paired_models = {t.model for t in bench.targets if t.metric in PAIRED_METRICS}

    def pair(model: str, url: str) -> None:
        paired.append(measure_paired(model, url, bench, threads, progress))

    for model in models:
        progress(f"[{model}] loading once: weights size, bare decode step, compute ceiling")
        floors[model] = model_floor(model)
        progress(f"[{model}] {floors[model]}")
        with_peer = peer and not _is_quantized_candidate(model)  # the peer times its own int8
        if with_peer:
            peers.extend(measure_peer(bench, model, concurrency, threads, progress))
        for kind in servers:
            started = time.monotonic()
            after = (
                functools.partial(pair, model)
                if kind == "ours" and with_peer and model in paired_models
                else None
            )
            cells.extend(measure_server(
                kind, model, bench, concurrency, log_dir, progress, env=env, engine=engine,
                after_levels=after,
            ))  # fmt: skip
            progress(f"[{model}/{kind}] done in {time.monotonic() - started:.0f} s")
    return cells, floors, peers, paired
