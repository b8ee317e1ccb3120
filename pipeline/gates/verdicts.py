"""The gates' decisions with the definition's thresholds, and the latency gate's load.

Why a module of its own: ``mlcicd gate quality|latency`` (cli.py), the
calibration (calibrate.py) and the one-definition test all judge through these
functions, so a threshold is applied one way wherever a verdict is taken.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from pipeline.definition import PipelineDefinition
from pipeline.gates.latency import LatencyVerdict, judge_latency
from pipeline.gates.quality import CaseResult, QualityVerdict, judge_quality
from pipeline.load.generator import LoadResult, run_load
from pipeline.load.paired import run_paired
from pipeline.serving import served_model


def quality_verdict(
    definition: PipelineDefinition,
    results: Sequence[CaseResult],
    champion: Mapping[str, bool] | None = None,
) -> QualityVerdict:
    """The quality gate's decision with the definition's thresholds."""
    return judge_quality(
        results,
        min_pass_rate=definition.quality.min_pass_rate,
        max_regression_vs_champion=definition.quality.max_regression_vs_champion,
        champion=champion,
    )


def latency_verdict(
    definition: PipelineDefinition, result: LoadResult, champion: LoadResult | None = None
) -> LatencyVerdict:
    """The latency gate's decision with the definition's thresholds (paired if a champion)."""
    lat = definition.latency
    return judge_latency(
        result,
        max_ttft_p99_ms=lat.max_ttft_p99_ms,
        max_e2e_mean_ms=lat.max_e2e_mean_ms,
        max_error_rate=lat.max_error_rate,
        champion=champion,
        max_slowdown=lat.max_slowdown_vs_champion,
        significance=lat.significance,
        ceiling_headroom=lat.ceiling_headroom_vs_champion,
        slowdown_floor_ms=lat.slowdown_floor_ms.model_dump(),
    )


@dataclass(frozen=True)
class LoadPlan:
    """How the latency gate loads a server: the definition's, with CLI overrides."""

    requests: int
    warmup: int
    concurrency: int | None
    rate: float | None
    fixed_tokens: bool = True
    seed: int = 0


def load_plan(args: argparse.Namespace, definition: PipelineDefinition) -> LoadPlan:
    """The plan from ``args``; ValueError names the bad option."""
    lat = definition.latency
    requests = args.requests if args.requests is not None else lat.requests
    warmup = args.warmup if args.warmup is not None else lat.warmup_requests
    concurrency = None if args.rate is not None else (args.concurrency or lat.concurrency)
    for name, value in (("--requests", requests), ("--concurrency", concurrency or 1)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if warmup < 0 or (args.rate is not None and args.rate <= 0):
        raise ValueError("--warmup must be >= 0 and --rate > 0")
    return LoadPlan(requests, warmup, concurrency, args.rate, args.fixed_tokens, args.seed)


def measure_latency(
    definition: PipelineDefinition, plan: LoadPlan, url: str, champion_url: str | None
) -> tuple[LoadResult, LoadResult | None]:
    """Load the candidate (and the champion, interleaved, when there is one)."""
    load: dict[str, Any] = {
        "max_new_tokens": definition.latency.max_new_tokens,
        "concurrency": plan.concurrency,
        "rate": plan.rate,
        "fixed_tokens": plan.fixed_tokens,
        "request_timeout_s": definition.serving.request_deadline_s + 5.0,
    }
    if champion_url is None:
        result = asyncio.run(
            run_load(url, requests=plan.requests, warmup=plan.warmup, seed=plan.seed, **load)
        )
        return result, None
    paired = run_paired(
        url,
        champion_url,
        requests=plan.requests,
        blocks=definition.latency.paired_blocks,
        warmup=plan.warmup,
        seed=plan.seed,
        **load,
    )
    return paired.candidate, paired.champion


def unequal_threads(url: str, champion_url: str) -> str | None:
    """Why the pair cannot be compared when the two servers compute on different torch
    threads (``/v1/models``), else None.

    Why: on a shared CPU the server with more threads than its share spins at
    barriers whenever a core is busy elsewhere, so a champion on every core beside
    a candidate on its share is slowed by the machine, not by its model, and a
    slower candidate passes (docs/gates.md has the measurement). A server that
    does not report its threads is taken as it is.
    """
    found = {
        name: _threads(address)
        for name, address in (("candidate", url), ("champion", champion_url))
    }
    if None in found.values() or found["candidate"] == found["champion"]:
        return None
    return (
        f"the candidate computes on {found['candidate']} torch threads and the champion on "
        f"{found['champion']}: a paired comparison needs them equal (start both with the "
        "same --threads, or the champion with the share `mlcicd gate latency` gives its own)"
    )


def _threads(url: str) -> int | None:
    try:
        threads = served_model(url).get("threads")
    except (httpx.HTTPError, ValueError, LookupError, AttributeError):
        return None  # the load will say what is wrong with the server
    return threads if isinstance(threads, int) else None
