"""Canary measurements from a real Prometheus, with the queries of ``pipeline.canary.promql``.

Why ``prometheus-api-client``: it is the maintained Prometheus client for Python, and its
``custom_query`` is a plain instant query, which is what Argo's Prometheus
provider runs too. Retries are off and the timeout short: a Prometheus that does
not answer is an Error measurement now, and Argo's consecutiveErrorLimit (not
a hidden retry loop) decides when that fails the canary.

One tick queries the judged request count and the metrics for the canary
selector (with a stable: also the canary-vs-stable comparisons, each one PromQL
expression), and the same plain metrics for the stable selector, which are
reported beside the canary's with the delta. A window with too few canary
requests is inconclusive, and the message says what traffic the window saw and
what it would need.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.canary.analysis import Check, Measurement, Phase, judge
from pipeline.canary.promql import CanaryQueries, RelativeQueries

_LABEL_VALUE = re.compile(r'^[^"\\\n]+$')
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
QUERY_TIMEOUT_S = 10


class SelectorError(ValueError):
    """A label name or value that cannot go into a PromQL matcher; the message names it."""


def selector(labels: Mapping[str, str]) -> str:
    """``job="inference", version="canary"`` from labels, refusing what would break the query."""
    parts = []
    for name, value in labels.items():
        if not _LABEL_NAME.match(name):
            raise SelectorError(f"label name {name!r}: not a Prometheus label name")
        if not _LABEL_VALUE.match(value):
            raise SelectorError(f"label {name}={value!r}: empty or contains a quote or backslash")
        parts.append(f'{name}="{value}"')
    return ", ".join(parts)


def query_map(queries: CanaryQueries, relative: RelativeQueries | None = None) -> dict[str, str]:
    """Metric name -> PromQL; names match :func:`pipeline.canary.checks_from_gate`."""
    plain = {
        "requests": queries.request_count,
        "success-rate": queries.success_rate,
        "error-rate": queries.error_rate,
        "p99-latency": queries.p99_latency_seconds,
        "ttft-p99": queries.ttft_p99_seconds,
    }
    if relative is None:
        return plain
    return {
        **plain,
        "error-rate-vs-stable": relative.error_rate_increase_lower,
        "latency-vs-stable": relative.latency_ratio,
        "ttft-vs-stable": relative.ttft_ratio,
    }


def traffic_note(
    canary: float | None, stable: float | None, window_s: float, min_requests: int
) -> str:
    """Why a window fell short, in rates: what arrived, the canary's share, what it needs."""
    c = 0.0 if canary is None or math.isnan(canary) else canary
    s = 0.0 if stable is None or math.isnan(stable) else stable
    need = f"need {min_requests / window_s:.2g} req/s to the canary"
    fix = "raise the traffic or lengthen the window"
    if stable is None and c == 0:
        return f"in {window_s:g}s: no canary traffic ({need}); is the load running?"
    if stable is None:
        return f"in {window_s:g}s: {c / window_s:.2g} req/s to the canary, {need}: {fix}"
    total = c + s
    if total == 0:
        return f"in {window_s:g}s: no traffic at all ({need}); is the load running?"
    rate, share = total / window_s, c / total
    return (
        f"in {window_s:g}s; traffic {rate:.2g} req/s x {share:.0%} = {rate * share:.2g} req/s "
        f"to the canary, {need}: {fix}"
    )


class QueryError(RuntimeError):
    pass


@dataclass
class PrometheusQuerier:
    """Instant queries returning one number, None (empty result) or raising QueryError."""

    url: str
    _client: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        self._client = PrometheusConnect(
            url=self.url, retry=Retry(total=0), timeout=QUERY_TIMEOUT_S
        )

    def _describe(self, exc: Exception) -> str:
        import requests

        if isinstance(exc, requests.exceptions.ConnectionError):
            return f"Prometheus {self.url} unreachable (ConnectionError)"
        if isinstance(exc, requests.exceptions.Timeout):
            return f"Prometheus {self.url} did not answer within {QUERY_TIMEOUT_S}s"
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        return f"Prometheus {self.url}: {type(exc).__name__}: {first}"

    def __call__(self, promql: str) -> float | None:
        try:
            result = self._client.custom_query(promql)
        except Exception as exc:  # requests errors and PrometheusApiClientException alike
            raise QueryError(self._describe(exc)) from exc
        if not result:
            return None
        if len(result) != 1:
            raise QueryError(f"expected one series, got {len(result)}")
        return float(result[0]["value"][1])  # Prometheus sends "NaN" for NaN


Query = Callable[[str], float | None]


def _value(query: Query, promql: str) -> tuple[float | None, str | None]:
    try:
        return query(promql), None
    except QueryError as exc:
        return None, str(exc)


@dataclass
class TickValues:
    """What one tick saw for one selector: raw values (None = empty) and errors."""

    values: dict[str, float | None]
    errors: dict[str, str]


def read_tick(query: Query, queries: Mapping[str, str]) -> TickValues:
    values: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    for name, promql in queries.items():
        values[name], error = _value(query, promql)
        if error is not None:
            errors[name] = error
    return TickValues(values, errors)


def judge_tick(
    seen: TickValues, checks: tuple[Check, ...], min_requests: int, at: float, traffic: str = ""
) -> dict[str, Measurement]:
    """Measurements for every check: Error if its query or the request count failed."""
    out: dict[str, Measurement] = {}
    for check in checks:
        error = seen.errors.get(check.name) or seen.errors.get("requests")
        if error is not None:
            out[check.name] = Measurement(Phase.ERROR, None, error, at)
        else:
            value, requests = seen.values[check.name], seen.values["requests"]
            out[check.name] = judge(check, value, requests, min_requests, at, traffic)
    return out


def delta(canary: float | None, stable: float | None) -> float | None:
    if canary is None or stable is None or math.isnan(canary) or math.isnan(stable):
        return None
    return canary - stable
