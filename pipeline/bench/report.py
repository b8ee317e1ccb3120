"""What ``mlcicd bench`` writes: ``bench.json``, ``bench.md`` and ``bench.png``.

Why three forms: the JSON is the record (every cell, every target, the machine
and the exact server command lines), the markdown table is what a reviewer
reads and what ``docs/performance.md`` quotes, and the plot shows the shape:
throughput and p99 latency against concurrency, ours vs the baseline, per model,
with the peer's (CTranslate2's) throughput against batch size beside them.

A run is labelled noisy when any cell saw more than ``NOISY_FOREIGN_CORES``
cores busy outside the benchmark; the label is in all three outputs.

Left out: comparisons across runs (a bench run is compared within itself only).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.bench.paired import PairedCell
from pipeline.bench.peer import PeerCell, process_note
from pipeline.bench.targets import GIB, NOISY_FOREIGN_CORES, Cell, TargetOutcome

MARKERS = {"ours": "o-", "baseline": "s--", "peer-float32": "^:", "peer-int8": "v:"}


def build_document(
    *,
    command: str,
    machine: dict[str, Any],
    config: dict[str, Any],
    weights: dict[str, int],
    floors: dict[str, dict[str, Any]],
    servers: dict[str, str],
    cells: Sequence[Cell],
    peers: Sequence[PeerCell],
    targets: Sequence[TargetOutcome],
    started_at: str,
    duration_s: float,
    paired: Sequence[PairedCell] = (),
) -> dict[str, Any]:
    # A peer slowed by the host flatters every ratio against it, so its processes count too.
    foreign = max(
        [c.foreign_cpu_cores for c in cells if c.skipped is None]
        + [p.foreign_cpu_cores for p in peers if p.measured]
        + [p.foreign_cpu_cores for p in paired if p.measured],
        default=0.0,
    )
    return {
        "command": command,
        "started_at": started_at,
        "duration_s": round(duration_s, 1),
        "machine": machine,
        "config": config,
        "noisy": foreign > NOISY_FOREIGN_CORES,
        "max_foreign_cpu_cores": round(foreign, 3),
        "weights_bytes": weights,
        "model_floors": floors,
        "servers": servers,
        "cells": [asdict(c) for c in cells],
        "peers": [asdict(p) for p in peers],
        "paired": [asdict(p) for p in paired],
        "targets": [asdict(t) for t in targets],
    }


def write_json(document: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def _trio(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "n/a"
    return f"{summary['p50_ms']:.0f} / {summary['p95_ms']:.0f} / {summary['p99_ms']:.0f}"


def _itl(summary: dict[str, Any] | None, server: str) -> str:
    if summary is None:
        # The baseline sends the whole completion in one chunk: there is no gap to time.
        return "n/a (one chunk)" if server == "baseline" else "n/a"
    return f"{summary['p50_ms']:.1f} / {summary['p95_ms']:.1f} / {summary['p99_ms']:.1f}"


def _value(value: float | None, bound: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def _machine_line(machine: dict[str, Any]) -> str:
    """CPU, ISA (and any cap), memory, torch and its kernels, oneDNN, the peer, GPU."""
    forced = machine.get("isa_forced")
    return (
        f"Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), ISA {machine['isa']} "
        f"({', '.join(machine['cpu_flags'])})"
        f"{'; every library capped to ' + forced + ' for this run' if forced else ''}, "
        f"{machine['memory_gib']} GiB RAM, torch {machine['torch']} "
        f"({machine['torch_threads']} threads, kernels {machine['torch_cpu_capability']}), "
        f"oneDNN {machine['onednn']}, CTranslate2 {machine['ctranslate2'] or 'not installed'}, "
        f"GPU: {machine['cuda'] or 'none'}.  "
    )


def _engine_line(engine: str) -> str:
    if engine == "ctranslate2":
        return (
            "Our server's engine: **ctranslate2** (`--engine ctranslate2`: each model's "
            "CTranslate2 conversion, served in waves; inference/ct2_engine.py).  "
        )
    return "Our server's engine: torch (inference/torch_engine.py).  "


def render_markdown(document: dict[str, Any]) -> str:
    """The figures table and the targets table, as markdown."""
    lines = [
        f"Command: `{document['command']}`  ",
        f"Started {document['started_at']}, took {document['duration_s']:.0f} s.  ",
        _machine_line(document["machine"]),
        _engine_line(document.get("config", {}).get("engine") or "torch"),
        (
            f"**NOISY RUN**: up to {document['max_foreign_cpu_cores']:.2f} cores were busy "
            "outside the benchmark during a measurement."
            if document["noisy"]
            else f"Quiet run: at most {document['max_foreign_cpu_cores']:.2f} cores busy "
            "outside the benchmark during any measurement."
        ),
        "",
        "| model | server | conc. | requests (ok) | tokens/s | req/s "
        "| TTFT p50/p95/p99 ms | e2e p50/p95/p99 ms | ITL p50/p95/p99 ms "
        "| peak RSS GiB | 5xx | foreign cores | note |",
        "|---|---|--:|--:|--:|--:|---|---|---|--:|--:|--:|---|",
    ]
    for cell in document["cells"]:
        head = f"| {cell['model']} | {cell['server']} | {cell['concurrency']} |"
        if cell["skipped"]:
            lines.append(f"{head} 0 | - | - | - | - | - | - | - | - | {cell['skipped']} |")
            continue
        lines.append(
            f"{head} {cell['requests']} ({cell['ok']}) | {cell['tokens_per_s']:.1f} "
            f"| {cell['requests_per_s']:.2f} | {_trio(cell['ttft_ms'])} "
            f"| {_trio(cell['e2e_ms'])} | {_itl(cell['itl_ms'], cell['server'])} "
            f"| {cell['peak_rss_bytes'] / GIB:.2f} | {cell['server_errors']} "
            f"| {cell['foreign_cpu_cores']:.2f} | {cell['note'] or ''} |"
        )
    weights = ", ".join(
        f"{model} {size / GIB:.3f} GiB" for model, size in document["weights_bytes"].items()
    )
    lines += ["", f"Weights (parameter and buffer bytes as loaded): {weights}.", ""]
    for model, floor in document.get("model_floors", {}).items():
        steps = ", ".join(
            f"batch {b}: {ms:.1f} ms ({floor['decode_tokens_per_s'][b]:.0f} tokens/s)"
            for b, ms in floor["decode_step_ms"].items()
        )
        lines.append(
            f"Bare model, {model}: one KV-cached decode step {steps}; "
            f"matmul {floor['matmul_gflops']:.0f} GFLOP/s / {floor['gflop_per_token']:.3f} "
            f"GFLOP per token = compute ceiling {floor['compute_ceiling_tokens_per_s']:.0f} "
            "tokens/s.  "
        )
    lines += _peer_lines(document)
    lines += _paired_lines(document.get("paired", []))
    lines += [
        "",
        "| target | bound | measured | status | how |",
        "|---|---|--:|---|---|",
    ]
    for target in document["targets"]:
        sign = ">=" if target["bound"] == "min" else "<="
        lines.append(
            f"| {target['description']} | {sign} {target['threshold']:g} "
            f"| {_value(target['measured'], target['bound'])} | **{target['status']}** "
            f"| {target['detail']} |"
        )
    return "\n".join(lines) + "\n"


def _ratio(ours: float | None, other: float | None) -> str:
    if not ours or not other:
        return "n/a"
    return f"{ours / other:.2f}x"


def _peer_lines(document: dict[str, Any]) -> list[str]:
    """The peer's own table, then ours against the peer and the naive server per level."""
    peers = document.get("peers", [])
    if not peers:
        return []
    lines = [
        "",
        "Peer: CTranslate2 `generate_batch` in process (no HTTP), same weights converted, "
        "greedy, the same prompts and new tokens; median of the calls, in the fastest of "
        "the processes that timed it (note).",
        "",
        "| model | peer | batch | tokens/s | decode step ms | first token ms | calls "
        "| threads | foreign cores | note |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for p in peers:
        head = f"| {p['model']} | {p['quantization']} | {p['batch']} |"
        if p["skipped"]:
            lines.append(f"{head} - | - | - | 0 | {p['threads']} | - | {p['skipped']} |")
            continue
        notes = [p["note"], process_note(p.get("process_tokens_per_s", ()))]
        lines.append(
            f"{head} {p['tokens_per_s']:.1f} | {p['step_ms']:.1f} | {p['first_token_ms']:.0f} "
            f"| {p['runs']} | {p['threads']} | {p.get('foreign_cpu_cores', 0.0):.2f} "
            f"| {'; '.join(n for n in notes if n)} |"
        )
    peer_at = {(p["model"], p["quantization"], p["batch"]): p for p in peers if not p["skipped"]}
    base_at = {
        (c["model"], c["concurrency"]): c
        for c in document["cells"]
        if c["server"] == "baseline" and not c["skipped"]
    }
    lines += [
        "",
        "Ours (HTTP, concurrency c) over the peer at batch c and over the naive server at c:",
        "",
        "| model | c | ours tokens/s | vs peer fp32 | vs peer int8 | vs naive "
        "| ours ITL p50 ms | over peer fp32 step |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for c in document["cells"]:
        if c["server"] != "ours" or c["skipped"]:
            continue
        key = (c["model"], c["concurrency"])
        fp32 = peer_at.get((*key[:1], "float32", key[1]), {})
        int8 = peer_at.get((*key[:1], "int8", key[1]), {})
        naive = base_at.get(key, {})
        itl = c["itl_ms"]["p50_ms"] if c["itl_ms"] else None
        lines.append(
            f"| {c['model']} | {c['concurrency']} | {c['tokens_per_s']:.1f} "
            f"| {_ratio(c['tokens_per_s'], fp32.get('tokens_per_s'))} "
            f"| {_ratio(c['tokens_per_s'], int8.get('tokens_per_s'))} "
            f"| {_ratio(c['tokens_per_s'], naive.get('tokens_per_s'))} "
            f"| {'n/a' if itl is None else f'{itl:.1f}'} | {_ratio(itl, fp32.get('step_ms'))} |"
        )
    return lines


def _paired_lines(paired: list[dict[str, Any]]) -> list[str]:
    """Each model's one-client rounds against the peer's batch-1 step, taken in turns."""
    lines: list[str] = []
    for cell in paired:
        lines += ["", f"One client against the peer's batch-1 step, in turns ({cell['model']}):"]
        if cell["skipped"]:
            lines.append(f"not measured: {cell['skipped']}.")
            continue
        rounds = ", ".join(
            f"{r['ours_itl_ms']:.1f}/{r['peer_step_ms']:.1f}" for r in cell["rounds"]
        )
        lines.append(
            f"{len(cell['rounds'])} rounds of our ITL p50 over {cell['requests_per_round']} "
            f"requests against the peer's step (fastest of {cell['peer_processes']} processes), "
            f"ms: {rounds}. Median ratio **{cell['ratio']:.2f}**; medians "
            f"{cell['ours_itl_ms']:.1f} vs {cell['peer_step_ms']:.1f} ms; foreign cores "
            f"{cell['foreign_cpu_cores']:.2f}."
        )
    return lines


def render_plot(document: dict[str, Any], path: Path) -> None:
    """Two panels: aggregate tokens/s and p99 end-to-end latency against concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in document["cells"]:
        if not cell["skipped"] and cell["ok"] > 0:
            series.setdefault((cell["model"], cell["server"]), []).append(cell)
    for (model, server), cells in sorted(series.items()):
        cells.sort(key=lambda c: c["concurrency"])
        xs = [c["concurrency"] for c in cells]
        label = f"{model} - {server}"
        style = MARKERS.get(server, "o-")
        left.plot(xs, [c["tokens_per_s"] for c in cells], style, label=label)
        p99s = [c["e2e_ms"]["p99_ms"] / 1000 if c["e2e_ms"] else float("nan") for c in cells]
        right.plot(xs, p99s, style, label=label)
    peer_series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for peer in document.get("peers", []):
        if not peer["skipped"]:
            peer_series.setdefault((peer["model"], peer["quantization"]), []).append(peer)
    for (model, quantization), peers in sorted(peer_series.items()):
        peers.sort(key=lambda p: p["batch"])
        style = MARKERS.get(f"peer-{quantization}", "^:")
        left.plot([p["batch"] for p in peers], [p["tokens_per_s"] for p in peers], style,
                  label=f"{model} - CTranslate2 {quantization} (batch)")  # fmt: skip
    for axis, title, unit in (
        (left, "Aggregate throughput", "tokens/s"),
        (right, "End-to-end latency p99", "seconds"),
    ):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    noisy = " (NOISY RUN)" if document["noisy"] else ""
    machine = document["machine"]
    fig.suptitle(
        f"mlcicd bench: ours vs naive baseline vs CTranslate2, {machine['nproc']} CPUs, "
        f"{machine.get('isa_forced') or machine.get('isa', '')}{noisy}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
