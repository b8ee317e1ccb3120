"""The peer column of ``mlcicd bench``: CTranslate2 on the same weights, in the same run.

Why a peer: beating the naive pipeline server says little; someone serving a
small model on CPU would pick CTranslate2 (PyPI ``ctranslate2``). So the
benchmark converts the very weights our server loads (fp32 and int8, with
CTranslate2's own converter) and times ``Generator.generate_batch`` in process
at the batch sizes of our concurrency levels, on the same machine, minutes
apart. Our HTTP figures are judged against these in-process figures, so the
peer pays no HTTP, streaming or scheduling: the comparison is tilted towards it.

What is measured per (model, quantization, batch):

- ``tokens_per_s``: ``batch x max_new_tokens`` over the wall time of one
  ``generate_batch`` call that produces exactly ``max_new_tokens`` per row
  (``min_length = max_length``, greedy), prefill included, as ours is.
- ``step_ms``: the median gap between consecutive decode steps of those calls,
  timestamped by ``generate_batch``'s per-token callback: the peer's
  inter-token latency, without the prefill.
- ``first_token_ms``: call start to the first token (prefill and one step).

Each figure is the median of ``peer_repeats`` calls after one warm-up call. The
prompts are the load generator's, tokenised by the model's own tokenizer, so
both sides see the same token ids. The measurement runs in a fresh interpreter
(``python -m pipeline.bench.peer``) so that its thread pool and memory never
meet the benchmark's or a server's.

Why ``peer_processes`` interpreters, one after another, keeping per batch the
fastest: on 2 shared cores some CTranslate2 processes run 2-4x slower for their
whole life (docs/performance.md). One such process makes every ratio against the
peer look better than it is; the fastest of several is the peer at its best,
which errs against us. Every process's tokens/s stays in the cell, so the spread
is in the report. The budget rule is the servers': a batch
whose estimated time (from the previous batch's rate) exceeds the cell budget
runs once, or not at all, and says so.

Left out: CTranslate2's own batching across calls (``inter_threads``), GPU,
and quantizations other than fp32 and int8.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from inference.builtin_model import cache_root
from inference.ct2_lanes import timed_greedy_call
from inference.loader import directory_content_hash, model_directory
from pipeline.bench.host_load import ChildSpan
from pipeline.convert import INSTALL_HINT, convert_weights, source_directory
from pipeline.load.generator import DEFAULT_PROMPTS

QUANTIZATIONS = ("float32", "int8")


@dataclass(frozen=True)
class PeerCell:
    """One (model, quantization, batch) timing of CTranslate2, or why it is missing."""

    model: str
    quantization: str
    batch: int
    tokens_per_s: float = 0.0
    step_ms: float = 0.0
    first_token_ms: float = 0.0
    runs: int = 0
    threads: int = 0
    note: str | None = None
    skipped: str | None = None
    # tokens/s of this batch in each peer process that measured it (the cell is the fastest's)
    process_tokens_per_s: tuple[float, ...] = ()
    # cores busy outside the benchmark while the process that timed this cell ran
    foreign_cpu_cores: float = 0.0

    @property
    def measured(self) -> bool:
        return self.skipped is None and self.runs > 0


def peer_version() -> str | None:
    """CTranslate2's version, or None when the optional extra is not installed."""
    try:
        import ctranslate2
    except ImportError:
        return None
    return str(ctranslate2.__version__)


def converted_model(model_ref: str, quantization: str, cache_dir: Path | None = None) -> Path:
    """The CTranslate2 conversion of ``model_ref``'s weights (pipeline/convert.py), made
    once and cached by the source directory's content hash."""
    name, _ = model_directory(model_ref)
    directory = source_directory(model_ref, "the peer")
    key = directory_content_hash(directory)[:16]
    final = cache_root(cache_dir) / "ct2" / f"{name}-{key}-{quantization}"
    if (final / "model.bin").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        out = convert_weights(directory, tmp / "model", quantization)
        with contextlib.suppress(FileExistsError, OSError):
            out.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def prompt_tokens(model_ref: str) -> list[list[str]]:
    from transformers import AutoTokenizer

    _, directory = model_directory(model_ref)
    tokenizer: Any = AutoTokenizer.from_pretrained(str(directory))
    return [
        tokenizer.convert_ids_to_tokens(tokenizer(prompt)["input_ids"])
        for prompt in DEFAULT_PROMPTS
    ]


def _time_batch(
    generator: Any, rows: list[list[str]], max_new_tokens: int, runs: int
) -> tuple[float, float, float]:
    """Medians over ``runs`` calls (after one warm-up call): seconds, first-token s, step s."""
    timed_greedy_call(generator, rows, min(2, max_new_tokens))
    timings = [timed_greedy_call(generator, rows, max_new_tokens) for _ in range(runs)]
    gaps = [gap for timing in timings for gap in timing.gaps_s]
    return (
        statistics.median(t.seconds for t in timings),
        statistics.median(t.first_s for t in timings),
        statistics.median(gaps) if gaps else 0.0,
    )


def load_generator(model_ref: str, quantization: str, threads: int) -> Any:
    """The peer: CTranslate2's generator on ``model_ref``'s conversion, on ``threads``."""
    import ctranslate2

    return ctranslate2.Generator(
        str(converted_model(model_ref, quantization)), device="cpu", intra_threads=threads
    )


def measure_batches(
    model_ref: str,
    quantization: str,
    batches: Sequence[int],
    max_new_tokens: int,
    repeats: int,
    threads: int,
    budget_s: float,
) -> list[PeerCell]:
    """Time CTranslate2 at each batch size, ascending, applying the cell budget."""
    generator = load_generator(model_ref, quantization, threads)
    prompts = prompt_tokens(model_ref)
    cells: list[PeerCell] = []
    rate: float | None = None
    for batch in sorted(set(batches)):
        cell = PeerCell(model_ref, quantization, batch, threads=threads)
        runs, note = repeats, None
        if rate is not None:
            one = batch * max_new_tokens / rate
            if one > budget_s:
                cells.append(replace(cell, skipped=(
                    f"not run: one call ~{one:.0f} s at {rate:.0f} tokens/s measured at "
                    f"the previous batch > budget {budget_s:.0f} s"
                )))  # fmt: skip
                continue
            if one * (repeats + 1) > budget_s:
                runs, note = 1, f"1 call instead of {repeats}: the cell budget"
        rows = [prompts[i % len(prompts)] for i in range(batch)]
        full, first, step = _time_batch(generator, rows, max_new_tokens, runs)
        rate = batch * max_new_tokens / full
        cells.append(replace(
            cell, tokens_per_s=round(rate, 2), step_ms=round(1000 * step, 2),
            first_token_ms=round(1000 * first, 2), runs=runs, note=note,
        ))  # fmt: skip
    return cells


def run_peer(
    model_ref: str,
    quantization: str,
    batches: Sequence[int],
    max_new_tokens: int,
    repeats: int,
    threads: int,
    budget_s: float,
    processes: int = 1,
) -> list[PeerCell]:
    """:func:`measure_batches` in ``processes`` fresh interpreters, one after another;
    per batch, the fastest process's cell. Every failure becomes skipped cells.

    The children inherit this process's environment, ``--isa``'s caps included.
    """

    def skipped(why: str) -> list[PeerCell]:
        return [PeerCell(model_ref, quantization, b, threads=threads, skipped=why)
                for b in sorted(set(batches))]  # fmt: skip

    if peer_version() is None:
        return skipped(f"not run: {INSTALL_HINT}")
    argv = [sys.executable, "-m", "pipeline.bench.peer", "--model", model_ref,
            "--quantization", quantization, "--batches", ",".join(map(str, batches)),
            "--max-new-tokens", str(max_new_tokens), "--repeats", str(repeats),
            "--threads", str(threads), "--budget-s", str(budget_s)]  # fmt: skip
    timeout = 3 * budget_s * max(len(set(batches)), 1) + 120
    return fastest_per_batch([_peer_process(argv, timeout, skipped) for _ in range(processes)])


def _peer_process(
    argv: list[str], timeout: float, skipped: Callable[[str], list[PeerCell]]
) -> list[PeerCell]:
    span = ChildSpan()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return skipped(f"aborted: the peer did not finish within {timeout:.0f} s")
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return skipped(f"failed (exit {done.returncode}): {tail[0]}")
    try:
        cells = [PeerCell(**item) for item in json.loads(done.stdout.strip().splitlines()[-1])]
    except (IndexError, ValueError, TypeError) as error:
        return skipped(f"failed: unreadable result ({type(error).__name__}: {error})")
    foreign = round(span.cores(), 3)
    return [replace(cell, foreign_cpu_cores=foreign) for cell in cells]


def fastest_per_batch(runs: Sequence[Sequence[PeerCell]]) -> list[PeerCell]:
    """Per batch, the measured cell with the most tokens/s across ``runs`` (one per process),
    holding every process's tokens/s; a batch no process measured keeps the first's reason."""
    by_batch: dict[int, list[PeerCell]] = {}
    for cells in runs:
        for cell in cells:
            by_batch.setdefault(cell.batch, []).append(cell)
    chosen = []
    for batch in sorted(by_batch):
        measured = [cell for cell in by_batch[batch] if cell.measured]
        if not measured:
            chosen.append(by_batch[batch][0])
            continue
        fastest = max(measured, key=lambda cell: cell.tokens_per_s)
        rates = tuple(cell.tokens_per_s for cell in measured)
        chosen.append(replace(fastest, process_tokens_per_s=rates))
    return chosen


def process_note(rates: Sequence[float]) -> str | None:
    """The report's word on a cell timed in several processes, None for one."""
    if len(rates) < 2:
        return None
    shown = ", ".join(f"{rate:.1f}" for rate in rates)
    return f"fastest of {len(rates)} processes ({shown} tokens/s)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time CTranslate2 generate_batch (JSON out).")
    parser.add_argument("--model", required=True)
    parser.add_argument("--quantization", choices=QUANTIZATIONS, required=True)
    parser.add_argument("--batches", required=True, help="comma-separated batch sizes")
    parser.add_argument("--max-new-tokens", type=int, required=True)
    # No defaults: the bench table (pipeline.toml) is where these numbers live.
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--budget-s", type=float, required=True)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    cells = measure_batches(
        args.model, args.quantization, batches, args.max_new_tokens,
        args.repeats, args.threads, args.budget_s,
    )  # fmt: skip
    print(json.dumps([asdict(cell) for cell in cells]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
