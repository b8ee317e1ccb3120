"""The small statistics the gates report: Wilson intervals and the paired comparison.

Why Wilson: with 20-30 eval cases a pass rate of 29/29 is not "100 %"; the
Wilson score interval stays inside [0, 1] and is honest at the extremes, where
the normal approximation collapses to a zero-width interval.

Why paired: candidate and champion answer the same cases, so the comparison
counts discordant pairs (champion passed and candidate failed, and the reverse)
rather than comparing two independent rates. We report McNemar's exact
two-sided p-value beside the difference, but gate on the difference, because
with so few cases a significance test would wave almost any regression through.

Latency percentiles live in :mod:`pipeline.load.stats`, beside the load generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def wilson_interval(successes: int, total: int, z: float = Z_95) -> Interval:
    """The Wilson score interval for a binomial proportion (95 % by default)."""
    if total < 0 or successes < 0 or successes > total:
        raise ValueError(f"need 0 <= successes <= total, got {successes}/{total}")
    if total == 0:
        return Interval(0.0, 1.0)
    p = successes / total
    z2 = z * z
    denom = 1 + z2 / total
    centre = (p + z2 / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / denom
    # At 0/n and n/n the bound is exactly 0 or 1; float rounding must not move it off.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return Interval(low, high)


@dataclass(frozen=True)
class PairedComparison:
    """Candidate vs champion over the case ids both ran."""

    paired: int
    both_passed: int
    both_failed: int
    regressions: tuple[str, ...]  # champion passed, candidate failed
    improvements: tuple[str, ...]  # champion failed, candidate passed
    only_candidate: tuple[str, ...] = field(default=())
    only_champion: tuple[str, ...] = field(default=())

    @property
    def candidate_rate(self) -> float:
        return (self.both_passed + len(self.improvements)) / self.paired if self.paired else 0.0

    @property
    def champion_rate(self) -> float:
        return (self.both_passed + len(self.regressions)) / self.paired if self.paired else 0.0

    @property
    def regression(self) -> float:
        """How much lower the candidate's paired pass rate is (negative: it is better)."""
        if not self.paired:
            return 0.0
        return (len(self.regressions) - len(self.improvements)) / self.paired

    @property
    def mcnemar_p(self) -> float:
        return mcnemar_exact_p(len(self.regressions), len(self.improvements))


def paired_comparison(
    candidate: Mapping[str, bool], champion: Mapping[str, bool]
) -> PairedComparison:
    """Compare per-case pass/fail maps; ids on one side only are listed, not dropped."""
    common = sorted(set(candidate) & set(champion))
    return PairedComparison(
        paired=len(common),
        both_passed=sum(1 for i in common if candidate[i] and champion[i]),
        both_failed=sum(1 for i in common if not candidate[i] and not champion[i]),
        regressions=tuple(i for i in common if champion[i] and not candidate[i]),
        improvements=tuple(i for i in common if candidate[i] and not champion[i]),
        only_candidate=tuple(sorted(set(candidate) - set(champion))),
        only_champion=tuple(sorted(set(champion) - set(candidate))),
    )


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of b vs c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * float(tail))


def paired_difference_interval(
    regressions: int, improvements: int, paired: int, z: float = Z_95
) -> Interval:
    """Wald interval for a paired difference of pass rates (champion minus candidate).

    Only discordant pairs carry information: the difference is (b - c) / n and its
    variance (b + c - (b - c)^2 / n) / n^2 (paired proportions, Agresti ch. 10).
    """
    if paired <= 0:
        return Interval(-1.0, 1.0)
    b, c, n = regressions, improvements, paired
    diff = (b - c) / n
    half = z * math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    return Interval(max(-1.0, diff - half), min(1.0, diff + half))
