"""Canary analysis with Argo Rollouts' measurement semantics, as pure logic.

Why copy Argo's rules exactly: the same thresholds judge a canary twice, once
here (``mlcicd canary analyze``, the local pipeline and CI) and once in the
cluster by the rendered AnalysisTemplate. If the two counted failures
differently, a release could pass one and fail the other.

The rules (argo-rollouts ``analysis/analysis.go``, ``assessMetricStatus``):

- every metric is measured ``count`` times, one measurement per ``interval``
  (the first at once); each measurement is Successful, Failed, Inconclusive or
  Error;
- Successful, Failed and Inconclusive count towards ``count`` and reset the
  consecutive-error counter; Error does neither (it only adds to the errors);
- a metric is Failed when failures > failureLimit, else Inconclusive when
  inconclusives > inconclusiveLimit, else Error when consecutive errors >
  consecutiveErrorLimit, else Successful once ``count`` measurements are done;
- once any metric is Failed, Error or Inconclusive the run terminates and
  still-running metrics stop; the run's phase is the worst metric phase, in
  Argo's order Successful < Inconclusive < Error < Failed. A Rollout aborts on
  Error as on Failed, so the verdict for Error is ``failed``.

What is judged: the canary against the stable in the same window of the same
scrape (errors by the Agresti-Caffo bound on the increase, latency and TTFT by
the ratio of p99s), with the definition's absolute limits as ceilings. With no
stable (a first release) the ceilings judge alone.

Our measurement rules (where Argo would leave it to the template): an empty
result or NaN is Inconclusive, never Successful; so is any measurement taken
while the window holds fewer than ``min_requests`` judged requests. A query
that raises (Prometheus down, bad response) is Error.

Left out: Argo's separate error-retry interval (errors are retried at the
measurement interval), dry-run metrics and ``consecutiveSuccessLimit``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pipeline.definition import CanaryGate

# `mlcicd canary analyze --out DIR` writes DIR/canary.json (and `mlcicd canary golden`
# DIR/golden.json: pipeline.canary.golden.GOLDEN_FILE). The local runner gives each
# traffic step its own directory.
VERDICT_FILE = "canary.json"


def step_dir_name(number: int, weight: int) -> str:
    """``canary-step-<n>-w<weight>``: the release report reads the step and weight from it."""
    return f"canary-step-{number}-w{weight}"


class Phase(StrEnum):
    RUNNING = "Running"
    SUCCESSFUL = "Successful"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"
    FAILED = "Failed"


# Argo's analysisStatusOrder: later is worse.
_ORDER = (Phase.RUNNING, Phase.SUCCESSFUL, Phase.INCONCLUSIVE, Phase.ERROR, Phase.FAILED)
VERDICTS: Mapping[Phase, str] = {
    Phase.SUCCESSFUL: "successful",
    Phase.INCONCLUSIVE: "inconclusive",
    Phase.ERROR: "failed",
    Phase.FAILED: "failed",
}


@dataclass(frozen=True)
class Limits:
    count: int
    failure_limit: int
    inconclusive_limit: int
    consecutive_error_limit: int

    @classmethod
    def from_gate(cls, gate: CanaryGate, count: int | None = None) -> Limits:
        return cls(
            count=count if count is not None else gate.count,
            failure_limit=gate.failure_limit,
            inconclusive_limit=gate.inconclusive_limit,
            consecutive_error_limit=gate.consecutive_error_limit,
        )


@dataclass(frozen=True)
class Check:
    """One metric and the condition a measured value must meet (from the definition)."""

    name: str
    op: Literal[">=", "<", "<="]
    threshold: float

    def holds(self, value: float) -> bool:
        if self.op == ">=":
            return value >= self.threshold
        return value < self.threshold if self.op == "<" else value <= self.threshold

    @property
    def converse(self) -> Literal["<", ">=", ">"]:
        """The operator under which a value breaks this check."""
        return {">=": "<", "<": ">=", "<=": ">"}[self.op]  # type: ignore[return-value]

    @property
    def condition(self) -> str:
        return f"result {self.op} {self.threshold}"


RELATIVE_CHECKS = ("error-rate-vs-stable", "latency-vs-stable", "ttft-vs-stable")


def checks_from_gate(gate: CanaryGate, relative: bool = True) -> tuple[Check, ...]:
    """The canary metrics, named as in the rendered AnalysisTemplate.

    ``relative``: also compare with the stable (there is one to compare with).
    """
    ceilings = (
        Check("success-rate", ">=", gate.min_success_rate),
        Check("error-rate", "<", gate.max_error_rate),
        Check("p99-latency", "<", gate.max_p99_latency_s),
        Check("ttft-p99", "<", gate.max_ttft_p99_s),
    )
    if not relative:
        return ceilings
    return (
        Check(RELATIVE_CHECKS[0], "<=", gate.max_error_rate_increase),
        Check(RELATIVE_CHECKS[1], "<", gate.max_latency_ratio),
        Check(RELATIVE_CHECKS[2], "<", gate.max_ttft_ratio),
        *ceilings,
    )


@dataclass(frozen=True)
class Measurement:
    phase: Phase
    value: float | None = None
    message: str = ""
    at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        value = None if self.value is None or not math.isfinite(self.value) else self.value
        return {
            "phase": self.phase.value,
            "value": value,
            "raw": _raw(self.value),
            "message": self.message,
            "at": round(self.at, 3),
        }


def _raw(value: float | None) -> str:
    return "empty" if value is None else repr(value)


def judge(
    check: Check,
    value: float | None,
    requests: float | None,
    min_requests: int,
    at: float = 0.0,
    traffic: str = "",
) -> Measurement:
    """One measurement of one metric: the value, and the judged request count of the window.

    ``traffic`` explains a shortfall (the rates behind it and what to change).
    """
    if requests is None or math.isnan(requests) or requests < min_requests:
        seen = "0" if requests is None or math.isnan(requests) else f"{requests:.1f}"
        why = f"too few requests: {seen} < {min_requests}" + (f" {traffic}" if traffic else "")
        return Measurement(Phase.INCONCLUSIVE, value, why, at)
    if value is None or math.isnan(value):
        return Measurement(Phase.INCONCLUSIVE, value, "no data (empty or NaN)", at)
    if check.holds(value):
        return Measurement(Phase.SUCCESSFUL, value, check.condition, at)
    return Measurement(Phase.FAILED, value, f"not {check.condition}", at)


@dataclass
class MetricResult:
    """Argo's MetricResult counters for one metric."""

    name: str
    measurements: list[Measurement] = field(default_factory=list)
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    error: int = 0
    consecutive_error: int = 0
    count: int = 0
    phase: Phase = Phase.RUNNING

    def record(self, measurement: Measurement) -> None:
        self.measurements.append(measurement)
        if measurement.phase is Phase.ERROR:
            self.error += 1
            self.consecutive_error += 1
            return
        self.count += 1
        self.consecutive_error = 0
        if measurement.phase is Phase.SUCCESSFUL:
            self.successful += 1
        elif measurement.phase is Phase.FAILED:
            self.failed += 1
        elif measurement.phase is Phase.INCONCLUSIVE:
            self.inconclusive += 1

    def assess(self, limits: Limits, terminating: bool = False) -> Phase:
        """argo-rollouts assessMetricStatus, for a metric with a count."""
        if not self.measurements:
            return Phase.SUCCESSFUL if terminating else Phase.RUNNING
        if self.failed > limits.failure_limit:
            return Phase.FAILED
        if self.inconclusive > limits.inconclusive_limit:
            return Phase.INCONCLUSIVE
        if self.consecutive_error > limits.consecutive_error_limit:
            return Phase.ERROR
        if self.count >= limits.count or terminating:
            return Phase.SUCCESSFUL
        return Phase.RUNNING

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phase": self.phase.value,
            "successful": self.successful,
            "failed": self.failed,
            "inconclusive": self.inconclusive,
            "error": self.error,
            "consecutive_error": self.consecutive_error,
            "count": self.count,
            "measurements": [m.to_json() for m in self.measurements],
        }


def worst(phases: Iterable[Phase]) -> Phase:
    return max(phases, key=_ORDER.index, default=Phase.SUCCESSFUL)


def max_ticks(limits: Limits) -> int:
    """An upper bound on measurements: between two counted ones at most
    consecutive_error_limit errors can occur before the metric is Error."""
    return (limits.count + 1) * (limits.consecutive_error_limit + 1)


@dataclass
class AnalysisRun:
    """Metrics measured together, tick by tick, until the run completes."""

    names: tuple[str, ...]
    limits: Limits
    results: dict[str, MetricResult] = field(init=False)

    def __post_init__(self) -> None:
        self.results = {name: MetricResult(name) for name in self.names}

    def running(self) -> list[str]:
        return [n for n, r in self.results.items() if r.phase is Phase.RUNNING]

    def record(self, measurements: Mapping[str, Measurement]) -> Phase:
        """Record one tick (a measurement per running metric) and assess; returns the run phase."""
        for name in self.running():
            result = self.results[name]
            result.record(measurements[name])
            result.phase = result.assess(self.limits)
        if any(
            r.phase in (Phase.FAILED, Phase.ERROR, Phase.INCONCLUSIVE)
            for r in self.results.values()
        ):
            for result in self.results.values():  # Argo terminates the other metrics
                if result.phase is Phase.RUNNING:
                    result.phase = result.assess(self.limits, terminating=True)
        return self.phase

    @property
    def phase(self) -> Phase:
        phases = [r.phase for r in self.results.values()]
        return Phase.RUNNING if Phase.RUNNING in phases else worst(phases)


def run_analysis(
    run: AnalysisRun,
    measure: Callable[[int], Mapping[str, Measurement]],
    interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Phase:
    """Measure every ``interval_s`` until the run completes (bounded by :func:`max_ticks`)."""
    for tick in range(max_ticks(run.limits)):
        if tick:
            sleep(interval_s)
        phase = run.record(measure(tick))
        if phase is not Phase.RUNNING:
            return phase
    raise AssertionError("analysis did not complete within its bound")  # unreachable by design
