"""Latency statistics of a load run: percentiles and a distribution summary.

Percentiles use linear interpolation between closest ranks (numpy's default),
in plain Python so the unit tests need no numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation; ValueError when empty."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Distribution summary of one latency measure, in seconds."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    def as_ms(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "mean_ms": self.mean * 1000,
            "p50_ms": self.p50 * 1000,
            "p95_ms": self.p95 * 1000,
            "p99_ms": self.p99 * 1000,
            "max_ms": self.max * 1000,
        }


def summarise(values: Iterable[float]) -> Summary | None:
    """None when there are no values (e.g. every request failed)."""
    data = list(values)
    if not data:
        return None
    return Summary(
        count=len(data),
        mean=sum(data) / len(data),
        p50=percentile(data, 50),
        p95=percentile(data, 95),
        p99=percentile(data, 99),
        max=max(data),
    )
