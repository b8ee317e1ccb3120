"""``mlcicd bench``: our server against the naive baseline and the peer, in one run.

Why in one run on one machine: a speed-up is only meaningful when both sides
met the same CPU, the same load from neighbours and the same model bytes. For
each model in the definition's ``bench`` table, each server (ours via
``mlcicd serve``; the baseline via ``python -m pipeline.bench.baseline_server``) is
started as a real process on a free loopback port, and the latency gate's load
generator (:mod:`pipeline.load.generator`, streaming, ``min_tokens = max_tokens``)
drives it at each concurrency level in turn. While a level runs, a sampling
thread records the peak RSS of the server's process tree, and the CPU time
taken by processes outside the benchmark, so a noisy run says it was noisy.

The time budget rule, instead of fabricated numbers: a level sends
``max(requests_per_client x concurrency, min_requests)`` requests, unless the
previous level's measured request rate says that would take longer than
``cell_budget_s``; then it sends what fits (at least one request per client),
or, when not even that fits, it is skipped. A level still running after three
budgets is cancelled (and the higher levels of that server are not run). Each
case is stated in the cell's ``note`` or ``skipped`` text, and a target that
needs a missing cell reads NOT MEASURED, never a guess.

Left out: open-loop (rate) arrivals (the targets are stated per concurrency),
prompt-length sweeps, and GPU-specific knobs: on a CUDA machine the same command
runs unchanged, with the model and dtype the loader picks there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.bench.paired import PairedCell
from pipeline.bench.peer import PeerCell
from pipeline.definition import PAIRED_METRICS, Bench, BenchTarget
from pipeline.load.generator import LoadResult

ServerKind = Literal["ours", "baseline"]
SERVERS: tuple[ServerKind, ...] = ("ours", "baseline")
GIB = 1024**3
# Above this many cores busy outside the benchmark, a cell is labelled noisy.
NOISY_FOREIGN_CORES = 0.25

TargetStatus = Literal["PASS", "MISS", "NOT MEASURED"]


@dataclass(frozen=True)
class Cell:
    """One (model, server, concurrency) measurement, or the reason it was skipped."""

    model: str
    server: ServerKind
    concurrency: int
    requests: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    server_errors: int = 0
    duration_s: float = 0.0
    tokens_per_s: float = 0.0
    requests_per_s: float = 0.0
    ttft_ms: dict[str, float | int] | None = None
    e2e_ms: dict[str, float | int] | None = None
    itl_ms: dict[str, float | int] | None = None
    peak_rss_bytes: int = 0
    foreign_cpu_cores: float = 0.0
    note: str | None = None
    skipped: str | None = None

    @property
    def measured(self) -> bool:
        return self.skipped is None and self.ok > 0


@dataclass(frozen=True)
class TargetOutcome:
    id: str
    description: str
    bound: Literal["min", "max"]
    threshold: float
    measured: float | None
    status: TargetStatus
    detail: str


@dataclass(frozen=True)
class RequestPlan:
    requests: int
    note: str | None = None
    skipped: str | None = None


def plan_requests(concurrency: int, bench: Bench, previous_rps: float | None) -> RequestPlan:
    """How many requests a level sends, applying the per-cell time budget (see module doc)."""
    nominal = max(bench.requests_per_client * concurrency, bench.min_requests)
    if previous_rps is None or previous_rps <= 0:
        return RequestPlan(nominal)
    estimate = nominal / previous_rps
    if estimate <= bench.cell_budget_s:
        return RequestPlan(nominal)
    fits = math.floor(bench.cell_budget_s * previous_rps)
    rate = f"{previous_rps:.2f} req/s measured at the previous level"
    if fits >= concurrency:
        return RequestPlan(
            fits,
            note=f"sent {fits} of {nominal} requests: {nominal} at {rate} "
            f"would take ~{estimate:.0f} s > budget {bench.cell_budget_s:.0f} s",
        )
    return RequestPlan(
        0,
        skipped=f"not run: even {concurrency} requests (one per client) at {rate} "
        f"would take ~{concurrency / previous_rps:.0f} s > budget {bench.cell_budget_s:.0f} s",
    )


def cell_from_load(
    model: str,
    server: ServerKind,
    result: LoadResult,
    peak_rss_bytes: int,
    foreign_cpu_cores: float,
    note: str | None = None,
) -> Cell:
    """Aggregate one load run; a 5xx or an error event inside a 200 stream is a server error."""
    server_errors = sum(
        1
        for r in result.records
        if not r.ok
        and ((r.status_code is not None and r.status_code >= 500) or r.error_kind == "stream_error")
    )

    def ms(summary: Any) -> dict[str, float | int] | None:
        return None if summary is None else dict(summary.as_ms())

    assert result.concurrency is not None
    return Cell(
        model=model,
        server=server,
        concurrency=result.concurrency,
        requests=result.requests,
        ok=len(result.ok_records),
        errors=result.errors,
        server_errors=server_errors,
        duration_s=result.duration_s,
        tokens_per_s=result.tokens_per_s,
        requests_per_s=result.throughput_rps,
        ttft_ms=ms(result.ttft),
        e2e_ms=ms(result.e2e),
        itl_ms=ms(result.itl),
        peak_rss_bytes=peak_rss_bytes,
        foreign_cpu_cores=foreign_cpu_cores,
        note=note,
    )


def _find(cells: Sequence[Cell], model: str, server: ServerKind, concurrency: int) -> Cell | None:
    for cell in cells:
        if (cell.model, cell.server, cell.concurrency) == (model, server, concurrency):
            return cell
    return None


def find_peer(
    peers: Sequence[PeerCell], model: str, batch: int, quantization: str = "float32"
) -> PeerCell | None:
    for peer in peers:
        if (peer.model, peer.quantization, peer.batch) == (model, quantization, batch):
            return peer
    return None


def _vs_peer(
    target: BenchTarget, ours: Cell, peers: Sequence[PeerCell]
) -> tuple[float | None, str]:
    """Our figure over CTranslate2's fp32 figure at ``peer_batch`` (default: our concurrency)."""
    batch = target.peer_batch or target.concurrency
    peer = find_peer(peers, target.model, batch)
    if peer is None or not peer.measured:
        why = peer.skipped if peer is not None and peer.skipped else "not measured"
        return None, f"CTranslate2 float32 batch {batch}: {why}"
    if target.metric == "tokens_per_s_vs_peer":
        return (
            ours.tokens_per_s / peer.tokens_per_s,
            f"{ours.tokens_per_s:.1f} vs {peer.tokens_per_s:.1f} tokens/s (batch {batch})",
        )
    if ours.itl_ms is None:
        return None, "no inter-token gaps were recorded"
    itl = float(ours.itl_ms["p50_ms"])
    return itl / peer.step_ms, f"{itl:.1f} ms vs {peer.step_ms:.1f} ms per step (batch {batch})"


def _paired(target: BenchTarget, paired: Sequence[PairedCell]) -> tuple[float | None, str]:
    """Our one-client ITL over the peer's batch-1 step, in turns (pipeline/bench/paired.py)."""
    cell = next((c for c in paired if c.model == target.model), None)
    if cell is None or not cell.measured:
        why = cell.skipped if cell is not None and cell.skipped else "not run"
        return None, f"the paired one-client phase: {why}"
    ratios = [r.ratio for r in cell.rounds]
    return cell.ratio, (
        f"median of {len(ratios)} rounds' ratios ({min(ratios):.2f}-{max(ratios):.2f}); "
        f"medians {cell.ours_itl_ms:.1f} ms vs {cell.peer_step_ms:.1f} ms per step (batch 1)"
    )


def _metric(
    target: BenchTarget,
    cells: Sequence[Cell],
    weights_bytes: dict[str, int],
    peers: Sequence[PeerCell],
    paired: Sequence[PairedCell],
) -> tuple[float | None, str]:
    """(value, how it was obtained or why it is missing) for one target."""
    if target.metric in PAIRED_METRICS:
        return _paired(target, paired)
    ours = _find(cells, target.model, "ours", target.concurrency)
    where = f"{target.model} at concurrency {target.concurrency}"
    if ours is None or not ours.measured:
        reason = ours.skipped if ours is not None and ours.skipped else "no successful requests"
        return None, f"our server was not measured for {where}: {reason}"
    metric = target.metric
    if metric in ("tokens_per_s_vs_peer", "itl_p50_vs_peer_step"):
        return _vs_peer(target, ours, peers)
    if metric == "tokens_per_s":
        return ours.tokens_per_s, f"{ours.ok} requests in {ours.duration_s:.1f} s"
    if metric == "speedup_vs_baseline":
        base = _find(cells, target.model, "baseline", target.concurrency)
        if base is None or not base.measured or base.tokens_per_s <= 0:
            why = base.skipped if base is not None and base.skipped else "not measured"
            return None, f"baseline {where}: {why}"
        return (
            ours.tokens_per_s / base.tokens_per_s,
            f"{ours.tokens_per_s:.1f} vs {base.tokens_per_s:.1f} tokens/s",
        )
    if metric == "itl_p50_ms":
        if ours.itl_ms is None:
            return None, "no inter-token gaps were recorded"
        return float(ours.itl_ms["p50_ms"]), f"{ours.itl_ms['count']} gaps"
    if metric == "e2e_p99_over_p50":
        if ours.e2e_ms is None or not ours.e2e_ms["p50_ms"]:
            return None, "no end-to-end latencies were recorded"
        p50, p99 = float(ours.e2e_ms["p50_ms"]), float(ours.e2e_ms["p99_ms"])
        return p99 / p50, f"p99 {p99:.0f} ms / p50 {p50:.0f} ms"
    if metric == "rss_over_weights_gib":
        weights = weights_bytes.get(target.model)
        if weights is None:
            return None, "weights size unknown"
        over = (ours.peak_rss_bytes - weights) / GIB
        return over, (
            f"peak RSS {ours.peak_rss_bytes / GIB:.2f} GiB - weights {weights / GIB:.2f} GiB"
        )
    if metric == "server_errors":
        return float(ours.server_errors), f"of {ours.requests} requests; all errors: {ours.errors}"
    raise ValueError(f"unknown bench metric {metric!r}")


def evaluate_targets(
    targets: Sequence[BenchTarget],
    cells: Sequence[Cell],
    weights_bytes: dict[str, int],
    peers: Sequence[PeerCell] = (),
    paired: Sequence[PairedCell] = (),
) -> list[TargetOutcome]:
    """Judge every target against the measured cells; a missing cell is NOT MEASURED."""
    outcomes = []
    for target in targets:
        value, detail = _metric(target, cells, weights_bytes, peers, paired)
        bound: Literal["min", "max"] = "min" if target.min is not None else "max"
        threshold = target.min if target.min is not None else target.max
        assert threshold is not None
        status: TargetStatus
        if value is None:
            status = "NOT MEASURED"
        elif bound == "min":
            status = "PASS" if value >= threshold else "MISS"
        else:
            status = "PASS" if value <= threshold else "MISS"
        outcomes.append(
            TargetOutcome(target.id, target.description, bound, threshold, value, status, detail)
        )
    return outcomes
