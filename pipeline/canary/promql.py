"""PromQL for canary analysis, built once from the server's metric names.

Why here: `mlcicd canary analyze` (against a real Prometheus) and the Argo
Rollouts AnalysisTemplate that infra/ renders must ask the very same questions.
Both call these builders; the thresholds they compare against come from the
pipeline definition, never from this module.

A selector is a PromQL label matcher list without braces, e.g.
``job="inference", version="canary"``. The Argo template passes one with
``{{args.*}}`` placeholders; the local runner passes concrete labels.

Status label values (set by inference/metrics.py): ``success`` (2xx),
``client_error`` (4xx other than 429: the client's mistake, not the release's)
and ``error`` (5xx, 429 and deadline 504s). Rates are over success + error.

Each ratio guards its denominator with ``> 0`` so that no traffic gives an
*empty* result rather than NaN or 0/0; callers must treat empty as
inconclusive, never as success.

:class:`RelativeQueries` compares the canary with the stable in ONE expression
each (Argo's Prometheus provider has no formula over two queries), over the same
window of the same scrape: the Agresti-Caffo lower bound of the error-rate
increase (the formula of :func:`pipeline.gates.stats.error_rate_increase_lower`)
and the ratio of histogram quantiles at the definition's ``relative_quantile``,
not p99: the canary's share of a window holds tens of requests, whose p99 is
their slowest one (the ceilings keep judging p99). Both quantiles get the
definition's ``relative_floor_s`` added before the ratio, so that 24 ms against
15 ms (x1.6, within one histogram bucket) is not a regression while +300 ms is.
Either side without traffic gives an empty result or NaN, so "no stable to
compare with" is inconclusive too.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.metrics import (
    CLIENT_ERROR,
    ERROR,
    REQUEST_DURATION,
    REQUESTS_TOTAL,
    SUCCESS,
    TIME_TO_FIRST_TOKEN,
)
from pipeline.definition import CanaryGate
from pipeline.gates.stats import one_sided_z


@dataclass(frozen=True)
class CanaryQueries:
    """The queries for one selector and one rate window (e.g. ``5m``)."""

    selector: str
    window: str

    def _sel(self, extra: str = "") -> str:
        parts = [p for p in (self.selector, extra) if p]
        return "{" + ", ".join(parts) + "}"

    def _count(self, status_matcher: str = "") -> str:
        return f"sum(increase({REQUESTS_TOTAL}{self._sel(status_matcher)}[{self.window}]))"

    @property
    def request_count(self) -> str:
        """Requests the server judged (client mistakes, status="client_error", excluded)."""
        return self._count(f'status!="{CLIENT_ERROR}"')

    @property
    def success_rate(self) -> str:
        ok = self._count(f'status="{SUCCESS}"')
        return f"({ok} or vector(0)) / ({self.request_count} > 0)"

    @property
    def error_rate(self) -> str:
        return f"{self.error_count} / ({self.request_count} > 0)"

    def quantile(self, histogram: str, q: float) -> str:
        return (
            f"histogram_quantile({q!r}, sum by (le) "
            f"(rate({histogram}_bucket{self._sel()}[{self.window}])))"
        )

    @property
    def p99_latency_seconds(self) -> str:
        return self.quantile(REQUEST_DURATION, 0.99)

    @property
    def ttft_p99_seconds(self) -> str:
        return self.quantile(TIME_TO_FIRST_TOKEN, 0.99)

    @property
    def error_count(self) -> str:
        """Server errors in the window; 0, not empty, when there were none."""
        errors = self._count(f'status="{ERROR}"')
        return f"({errors} or vector(0))"


@dataclass(frozen=True)
class RelativeQueries:
    """Canary against stable, one PromQL expression per comparison."""

    canary: CanaryQueries
    stable: CanaryQueries
    z: float  # the one-sided normal quantile of the definition's confidence
    q: float  # the latency quantile compared (the definition's relative_quantile)
    floor_s: float = 0.0  # added to both sides: differences below it do not count

    @classmethod
    def for_gate(
        cls, canary: CanaryQueries, stable: CanaryQueries, gate: CanaryGate
    ) -> RelativeQueries:
        """The comparison the definition's canary gate asks for."""
        return cls(
            canary,
            stable,
            one_sided_z(gate.confidence),
            gate.relative_quantile,
            gate.relative_floor_s,
        )

    def _adjusted_rate(self, side: CanaryQueries) -> tuple[str, str]:
        """Agresti-Caffo: (errors + 1) / (n + 2), and n + 2."""
        n2 = f"({side.request_count} + 2)"
        return f"(({side.error_count} + 1) / {n2})", n2

    @property
    def error_rate_increase_lower(self) -> str:
        pc, nc = self._adjusted_rate(self.canary)
        ps, ns = self._adjusted_rate(self.stable)
        spread = f"sqrt({pc} * (1 - {pc}) / {nc} + {ps} * (1 - {ps}) / {ns})"
        return f"({pc} - {ps}) - {self.z!r} * {spread}"

    def _ratio(self, histogram: str) -> str:
        canary = self.canary.quantile(histogram, self.q)
        stable = self.stable.quantile(histogram, self.q)
        if not self.floor_s:
            return f"{canary} / {stable}"
        return f"({canary} + {self.floor_s!r}) / ({stable} + {self.floor_s!r})"

    @property
    def latency_ratio(self) -> str:
        return self._ratio(REQUEST_DURATION)

    @property
    def ttft_ratio(self) -> str:
        return self._ratio(TIME_TO_FIRST_TOKEN)
