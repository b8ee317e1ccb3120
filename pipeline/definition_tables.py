"""The definition's tables: the gates, the deploy budget, the serving limits and the bench.

Why a module of their own: each table is a small typed model with its own bounds
and cross-field checks, and :mod:`pipeline.definition` composes them into the one
resolved object and loads it. Consumers import these names from
:mod:`pipeline.definition`, which re-exports them, so the loader stays the one
entry point.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from inference.settings import ServerSettings

_DURATION = re.compile(r"^(\d+)(s|m|h)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


class DefinitionError(ValueError):
    """The definition file is missing, unparsable or invalid; the message names the key."""


def duration_seconds(text: str) -> int:
    """Seconds in an Argo-style duration such as ``5m``; callers validated it already."""
    match = _DURATION.match(text)
    if match is None:
        raise DefinitionError(f"not a duration (use e.g. 30s, 5m, 1h): {text!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def check_duration(value: str) -> str:
    if _DURATION.match(value) is None:
        raise ValueError(f"must be a duration such as 30s, 5m or 1h, got {value!r}")
    return value


class StrictTable(BaseModel):
    """A table of the definition: unknown keys are errors, and values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class QualityGate(StrictTable):
    suite: str
    min_pass_rate: float = Field(ge=0.0, le=1.0)
    max_regression_vs_champion: float = Field(ge=0.0, le=1.0)
    case_timeout_s: float = Field(gt=0)
    max_new_tokens: int = Field(gt=0)


class SlowdownFloor(StrictTable):
    """Per measure, a difference too small to matter, in ms, added to both sides of the
    paired comparison (as the canary's ``relative_floor_s`` is), so that sub-millisecond
    scheduling noise in a tail is not read as a slowdown."""

    ttft: float = Field(ge=0.0)
    itl: float = Field(ge=0.0)
    e2e: float = Field(ge=0.0)


class LatencyGate(StrictTable):
    max_new_tokens: int = Field(gt=0)
    requests: int = Field(gt=0)
    warmup_requests: int = Field(ge=0)
    concurrency: int = Field(gt=0)
    max_ttft_p99_ms: float = Field(gt=0)
    max_e2e_mean_ms: float = Field(gt=0)
    max_error_rate: float = Field(ge=0.0, le=1.0)
    # Paired with the champion (pipeline/gates/latency.py): same machine, interleaved blocks.
    max_slowdown_vs_champion: float = Field(ge=0.0)
    significance: float = Field(gt=0.0, lt=0.5)
    paired_blocks: int = Field(ge=2)
    ceiling_headroom_vs_champion: float = Field(ge=1.0)
    slowdown_floor_ms: SlowdownFloor


class CanaryStep(StrictTable):
    set_weight: int = Field(ge=0, le=100)
    pause: str | None = None

    @field_validator("pause")
    @classmethod
    def _pause(cls, value: str | None) -> str | None:
        return None if value is None else check_duration(value)


# The canary-vs-stable latency quantile must leave at least this many of a window's
# min_requests above it: a p99 of 50 requests is their single slowest one.
RELATIVE_TAIL_REQUESTS = 5


class CanaryGate(StrictTable):
    min_success_rate: float = Field(ge=0.0, le=1.0)
    max_error_rate: float = Field(ge=0.0, le=1.0)
    max_p99_latency_s: float = Field(gt=0)
    max_ttft_p99_s: float = Field(gt=0)
    # Relative to the stable, same window, same scrape (pipeline/canary/promql.py).
    max_error_rate_increase: float = Field(ge=0.0, le=1.0)
    max_latency_ratio: float = Field(gt=1.0)
    max_ttft_ratio: float = Field(gt=1.0)
    relative_quantile: float = Field(gt=0.0, lt=1.0)
    relative_floor_s: float = Field(ge=0.0)
    confidence: float = Field(ge=0.5, lt=1.0)
    min_requests: int = Field(ge=1)
    window: str
    interval: str
    count: int = Field(ge=1)
    failure_limit: int = Field(ge=0)
    inconclusive_limit: int = Field(ge=0)
    consecutive_error_limit: int = Field(ge=0)
    # Prompts the canary must answer correctly (pipeline/canary/golden.py).
    golden_suite: str
    steps: tuple[CanaryStep, ...] = Field(min_length=1)

    @field_validator("window", "interval")
    @classmethod
    def _durations(cls, value: str) -> str:
        return check_duration(value)

    @model_validator(mode="after")
    def _quantile_has_a_tail(self) -> CanaryGate:
        """A quantile of min_requests requests needs requests above it, or it is their maximum."""
        allowed = 1 - RELATIVE_TAIL_REQUESTS / self.min_requests
        if self.relative_quantile > allowed + 1e-9:
            raise ValueError(
                f"relative_quantile = {self.relative_quantile} leaves fewer than "
                f"{RELATIVE_TAIL_REQUESTS} of min_requests = {self.min_requests} above it; "
                f"at most {max(allowed, 0):.3g} (or raise min_requests)"
            )
        return self

    @field_validator("steps")
    @classmethod
    def _steps_rise_to_full(cls, steps: tuple[CanaryStep, ...]) -> tuple[CanaryStep, ...]:
        weights = [s.set_weight for s in steps]
        if weights != sorted(weights) or weights[-1] != 100:
            raise ValueError(f"weights must rise and end at 100, got {weights}")
        return steps


class Deploy(StrictTable):
    """What a deploy may take beyond the canary's own pauses and analyses.

    ``startup_margin`` covers pulling the image and loading the model before the first
    step counts (the pods' startupProbe allows as much); ``job_overhead`` covers a deploy
    job's checkout, install and registry promote. :mod:`pipeline.rollout.budget` adds
    them to the canary's time, so ``deploy wait --timeout`` and the job's
    ``timeout-minutes`` are derived, never written down.
    """

    startup_margin: str
    job_overhead: str
    # How often a failed registry promote is retried after a healthy rollout.
    promote_attempts: int = Field(ge=1)

    @field_validator("startup_margin", "job_overhead")
    @classmethod
    def _durations(cls, value: str) -> str:
        return check_duration(value)


def _server_default(field: str) -> Any:
    return ServerSettings.model_fields[field].default


class Serving(StrictTable):
    """The serving limits a release is judged by.

    The server declares their defaults (:class:`inference.settings.ServerSettings`);
    ``[serving]`` tables override them per profile or environment, and whoever
    starts a server passes the resolved values in (:mod:`pipeline.serving`).
    """

    max_batch_size: int = Field(default=_server_default("max_batch_size"), ge=1)
    max_new_tokens_cap: int = Field(default=_server_default("max_new_tokens_cap"), ge=1)
    drain_timeout_s: float = Field(default=_server_default("drain_timeout_s"), gt=0)
    request_deadline_s: float = Field(default=_server_default("request_deadline_s"), gt=0)

    @model_validator(mode="after")
    def _drain_covers_deadline(self) -> Serving:
        if self.drain_timeout_s < self.request_deadline_s:
            raise ValueError(
                f"serving.drain_timeout_s ({self.drain_timeout_s:g}) must be >= "
                f"serving.request_deadline_s ({self.request_deadline_s:g}): a shorter drain "
                "cuts requests the server admitted"
            )
        return self


BenchMetric = Literal[
    "tokens_per_s",
    "speedup_vs_baseline",
    "itl_p50_ms",
    "e2e_p99_over_p50",
    "rss_over_weights_gib",
    "server_errors",
    "tokens_per_s_vs_peer",
    "itl_p50_vs_peer_step",
    "itl_p50_vs_peer_step_paired",
]
# Metrics taken in turns with the peer at one client (pipeline/bench/paired.py).
PAIRED_METRICS = ("itl_p50_vs_peer_step_paired",)
PeerQuantization = Literal["float32", "int8"]


class BenchTarget(StrictTable):
    """One benchmark target: a metric of our server, for one model at one concurrency."""

    id: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    description: str
    model: str
    concurrency: int = Field(ge=1)
    metric: BenchMetric
    # The peer's batch size a ``*_vs_peer*`` metric compares against (default:
    # ``concurrency``), e.g. our 64 clients against CTranslate2's batch 32.
    peer_batch: int | None = Field(default=None, ge=1)
    min: float | None = None
    max: float | None = None

    @field_validator("max")
    @classmethod
    def _one_bound(cls, value: float | None, info: ValidationInfo) -> float | None:
        if (value is None) == (info.data.get("min") is None):
            raise ValueError("give exactly one of min or max")
        return value

    @model_validator(mode="after")
    def _paired_is_one_client(self) -> BenchTarget:
        """The paired phase times one client against the peer's batch 1, nothing else."""
        if self.metric in PAIRED_METRICS and (self.concurrency, self.peer_batch or 1) != (1, 1):
            raise ValueError(
                f"metric {self.metric!r} is measured at concurrency = 1 against peer_batch = 1; "
                f"got concurrency = {self.concurrency}, peer_batch = {self.peer_batch}"
            )
        return self


class Bench(StrictTable):
    """What ``mlcicd bench`` runs (models x concurrency levels) and the targets it reports."""

    models: tuple[str, ...] = Field(min_length=1)
    concurrency: tuple[int, ...] = Field(min_length=1)
    max_new_tokens: int = Field(gt=0)
    requests_per_client: int = Field(ge=1)
    min_requests: int = Field(ge=1)
    warmup_requests: int = Field(ge=0)
    cell_budget_s: float = Field(gt=0)
    # The CTranslate2 peer (pipeline/bench/peer.py): the conversions timed, how many
    # calls each figure is the median of, and how many fresh processes time each
    # conversion (the fastest counts). The targets compare with float32.
    peer_quantizations: tuple[PeerQuantization, ...]
    peer_repeats: int = Field(ge=1)
    peer_processes: int = Field(ge=1)
    # The one-client comparison taken in turns (pipeline/bench/paired.py): rounds,
    # and our requests per round, for each model with a paired target.
    paired_rounds: int = Field(ge=1)
    paired_requests: int = Field(ge=1)
    targets: tuple[BenchTarget, ...] = ()
