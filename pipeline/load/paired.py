"""The same load against two servers, interleaved in blocks: a paired measurement.

Why interleave: on a machine busy with other work, two runs one after the other
see different background load, and the later one is judged by the earlier one's
luck. Alternating blocks (in ABBA order, so neither side always goes first)
spread the background over both sides alike; sending to both at once would make
them compete for the same cores instead. Each block is one :func:`run_load` call
with the same seed offset on both sides, so both get the same prompts at the
same pace.

Left out: running the two servers on separate cores (the comparison is meant to
share the machine's noise, not escape it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from pipeline.load.generator import LoadResult, RequestRecord, run_load


@dataclass(frozen=True)
class PairedResult:
    candidate: LoadResult
    champion: LoadResult
    blocks: int


def merge(parts: list[LoadResult]) -> LoadResult:
    """One result from consecutive blocks against the same server; records renumbered
    and labelled with their block, so the gate can resample whole blocks."""
    records: list[RequestRecord] = []
    offset = 0.0
    for block, part in enumerate(parts):
        start = len(records)
        records += [
            replace(r, index=start + i, start_s=r.start_s + offset, block=block)
            for i, r in enumerate(part.records)
        ]
        offset += part.duration_s
    first = parts[0]
    return replace(first, duration_s=offset, records=tuple(records))


def block_sizes(requests: int, blocks: int) -> list[int]:
    """``requests`` split into ``blocks`` near-equal blocks (fewer if requests < blocks)."""
    blocks = max(1, min(blocks, requests))
    base, extra = divmod(requests, blocks)
    return [base + (1 if i < extra else 0) for i in range(blocks)]


def run_paired(
    candidate_url: str,
    champion_url: str,
    *,
    requests: int,
    blocks: int,
    warmup: int = 0,
    seed: int = 0,
    **load: Any,
) -> PairedResult:
    """``requests`` measured requests to each server, alternating blocks ABBA."""
    urls = {"candidate": candidate_url, "champion": champion_url}
    parts: dict[str, list[LoadResult]] = {"candidate": [], "champion": []}
    sizes = block_sizes(requests, blocks)
    for number, size in enumerate(sizes):
        order = ("candidate", "champion") if number % 4 in (0, 3) else ("champion", "candidate")
        for side in order:
            result = asyncio.run(
                run_load(
                    urls[side],
                    requests=size,
                    warmup=warmup if number == 0 else 0,
                    seed=seed + number,
                    progress=False,
                    **load,
                )
            )
            parts[side].append(result)
    return PairedResult(merge(parts["candidate"]), merge(parts["champion"]), len(sizes))
