"""One client against CTranslate2's batch-1 step, in turns: both sides in the same minute.

Why: the one-client target divides our inter-token latency by the peer's step,
and on a shared host both move by more than the target's margin within minutes
(CTranslate2's batch-1 step took 11.7-18.2 ms in processes of the same day on one
machine; docs/performance.md, "The one-client ratio, taken in turns"). The
sequential cells time the peer minutes before our server, so their ratio
measures the host's drift as much as the servers. The latency gate pairs a
candidate with its champion for the same reason (pipeline/gates/latency.py).

How: after our server's levels, while it is still up, ``peer_processes`` fresh
interpreters (``python -m pipeline.bench.paired``) each load the fp32
conversion and wait. Each of ``paired_rounds`` rounds times both sides back to
back: every peer process makes one greedy batch-1 call of ``max_new_tokens``
(its step: the median gap between its tokens), and the fastest process counts, as
in the peer cells (it errs against us); our server serves ``paired_requests``
requests one at a time (its figure: the p50 of their inter-token gaps). The side
that goes first alternates between rounds. Before each side, ``SETTLE_S`` of
quiet lets the other side's OpenMP threads stop spinning. The figure is the
median over rounds of each round's ratio, so a round in a slow minute slows
both sides of its own ratio. Foreign load is measured over the whole phase, with
the benchmark's processes and all their children counted as its own.

Left out: pairing the throughput targets (a round would be whole waves of 16 or
64 requests against whole batches, and their margins are wider than the drift).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.bench.peer import load_generator, peer_version, prompt_tokens
from pipeline.bench.tree_sampler import TreeSampler
from pipeline.convert import INSTALL_HINT
from pipeline.definition import Bench
from pipeline.load.generator import run_load

# Quiet before each side: longer than the spin-then-sleep time of either side's
# OpenMP threads (libgomp's spin count, Intel OpenMP's 200 ms block time).
SETTLE_S = 0.3
# Loading the conversion, or one batch-1 call: a peer silent for longer has failed.
ANSWER_TIMEOUT_S = 120.0


class PairingError(RuntimeError):
    """A side of the pairing failed; the message says which and why."""


@dataclass(frozen=True)
class PairedRound:
    ours_itl_ms: float
    peer_step_ms: float  # the fastest peer process's step in this round

    @property
    def ratio(self) -> float:
        return self.ours_itl_ms / self.peer_step_ms


@dataclass(frozen=True)
class PairedCell:
    """The paired one-client figure of one model, or why it is missing."""

    model: str
    rounds: tuple[PairedRound, ...] = ()
    requests_per_round: int = 0
    peer_processes: int = 0
    ratio: float = 0.0  # median over rounds of ours / peer
    ours_itl_ms: float = 0.0  # median over rounds
    peer_step_ms: float = 0.0  # median over rounds
    foreign_cpu_cores: float = 0.0
    skipped: str | None = None

    @property
    def measured(self) -> bool:
        return self.skipped is None and bool(self.rounds)


def paired_cell(
    model: str,
    rounds: Sequence[PairedRound],
    requests_per_round: int,
    peer_processes: int,
    foreign_cpu_cores: float = 0.0,
) -> PairedCell:
    """The cell of ``rounds``: the median of the rounds' ratios, and each side's median."""
    return PairedCell(
        model=model,
        rounds=tuple(rounds),
        requests_per_round=requests_per_round,
        peer_processes=peer_processes,
        ratio=round(statistics.median(r.ratio for r in rounds), 4),
        ours_itl_ms=round(statistics.median(r.ours_itl_ms for r in rounds), 3),
        peer_step_ms=round(statistics.median(r.peer_step_ms for r in rounds), 3),
        foreign_cpu_cores=round(foreign_cpu_cores, 3),
    )


class _PeerProcess:
    """One paired-mode peer interpreter: a line in asks for a call, a line out answers."""

    def __init__(self, argv: list[str], errors: Path) -> None:
        self._errors = errors
        with errors.open("wb") as sink:  # the child holds its own copy of the descriptor
            self._process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sink, text=True
            )

    def _answer(self) -> str:
        stdout = self._process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], ANSWER_TIMEOUT_S)
        line = stdout.readline() if ready else ""
        if line:
            return line
        self.close()
        tail = self._errors.read_text(errors="replace").strip().splitlines()[-1:]
        why = f"exit {self._process.returncode}" if ready else f"silent {ANSWER_TIMEOUT_S:.0f} s"
        raise PairingError(f"a peer process failed ({why}): {tail[0] if tail else 'no output'}")

    def wait_ready(self) -> None:
        self._answer()

    def step_ms(self) -> float:
        """One batch-1 call: the median gap between its tokens, in ms."""
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write("call\n")
            stdin.flush()
        except BrokenPipeError:
            pass  # it died: the read below says why
        answer = self._answer()
        try:
            return float(statistics.median(json.loads(answer)))
        except (ValueError, TypeError, statistics.StatisticsError) as error:
            raise PairingError(f"a peer process answered {answer.strip()[:80]!r}") from error

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            if self._process.stdin is not None:
                self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _our_itl_ms(url: str, bench: Bench) -> float:
    requests = bench.paired_requests
    result = asyncio.run(run_load(
        url, requests=requests, concurrency=1, warmup=0,
        max_new_tokens=bench.max_new_tokens, fixed_tokens=True, progress=False,
    ))  # fmt: skip
    if len(result.ok_records) < requests or result.itl is None:
        raise PairingError(
            f"our server answered {len(result.ok_records)} of {requests} requests: {result.errors}"
        )
    return result.itl.p50 * 1000


def _round(index: int, peers: Sequence[_PeerProcess], url: str, bench: Bench) -> PairedRound:
    def peer_side() -> float:
        steps = []
        for peer in peers:
            time.sleep(SETTLE_S)
            steps.append(peer.step_ms())
        return min(steps)

    def our_side() -> float:
        time.sleep(SETTLE_S)
        return _our_itl_ms(url, bench)

    if index % 2 == 0:
        peer_ms = peer_side()
        ours_ms = our_side()
    else:
        ours_ms = our_side()
        peer_ms = peer_side()
    return PairedRound(round(ours_ms, 3), round(peer_ms, 3))


def measure_paired(
    model: str, url: str, bench: Bench, threads: int, progress: Callable[[str], None]
) -> PairedCell:
    """Time our server at ``url`` and the peer in turns; failures become a skipped cell."""
    if peer_version() is None:
        return PairedCell(model, skipped=f"not run: {INSTALL_HINT}")
    argv = [sys.executable, "-m", "pipeline.bench.paired", "--model", model,
            "--max-new-tokens", str(bench.max_new_tokens), "--threads", str(threads)]  # fmt: skip
    rounds: list[PairedRound] = []
    peers: list[_PeerProcess] = []
    logs = tempfile.TemporaryDirectory(prefix="mlcicd-paired-")
    try:
        peers.extend(
            _PeerProcess(argv, Path(logs.name) / f"peer-{index}.err")
            for index in range(bench.peer_processes)
        )
        for peer in peers:
            peer.wait_ready()
        sampler = TreeSampler(os.getpid())  # this process and every child: the run's own CPU
        sampler.begin_cell()
        for index in range(bench.paired_rounds):
            rounds.append(_round(index, peers, url, bench))
            progress(
                f"[{model}/paired] round {index + 1}/{bench.paired_rounds}: ours ITL p50 "
                f"{rounds[-1].ours_itl_ms:.1f} ms, peer step {rounds[-1].peer_step_ms:.1f} ms"
            )
        _, foreign = sampler.end_cell()
    except PairingError as error:
        return PairedCell(model, skipped=f"failed: {error}")
    finally:
        for peer in peers:
            peer.close()
        logs.cleanup()
    return paired_cell(model, rounds, bench.paired_requests, bench.peer_processes, foreign)


def serve_calls(model: str, max_new_tokens: int, threads: int) -> None:
    """The peer's side: load once, say ready, then one batch-1 call per line of input."""
    from inference.ct2_lanes import timed_greedy_call

    generator = load_generator(model, "float32", threads)
    rows = [prompt_tokens(model)[0]]  # batch 1 of the peer cells: the first prompt
    timed_greedy_call(generator, rows, min(2, max_new_tokens))
    print("ready", flush=True)
    for _ in sys.stdin:
        timing = timed_greedy_call(generator, rows, max_new_tokens)
        print(json.dumps([round(1000 * gap, 4) for gap in timing.gaps_s]), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CTranslate2's batch-1 call, once per input line")
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    serve_calls(args.model, args.max_new_tokens, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
