"""The small statistics the gates report: Wilson intervals and the paired comparison.

Why Wilson: with 20-30 eval cases a pass rate of 29/29 is not "100 %"; the
Wilson score interval stays inside [0, 1] and is honest at the extremes, where
the normal approximation collapses to a zero-width interval.

Why paired: candidate and champion answer the same cases, so the comparison
counts discordant pairs (champion passed and candidate failed, and the reverse)
rather than comparing two independent rates. We report McNemar's exact
two-sided p-value beside the difference, but gate on the difference, because
with so few cases a significance test would wave almost any regression through.

Why Mann-Whitney U for latency (as Kayenta's canary judge does, per metric): a
candidate and its champion measured side by side on the same busy machine share
the machine's noise, so the question is whether one distribution sits to the
right of the other, not whether either crosses a fixed number. The test makes no
normality assumption; the practical margin enters by scaling the reference
sample, so "slower" means "slower by more than the margin".

Why Agresti-Caffo for error rates: adding one success and one failure to each
side gives a difference-of-proportions interval that keeps its coverage at 0
errors, where the Wald interval has zero width. The same formula is rendered as
PromQL (:mod:`pipeline.canary.promql`) so Argo and ``mlcicd canary analyze``
compute one number.

Latency percentiles live in :mod:`pipeline.load.stats`, beside the load generator.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

from pipeline.load.stats import percentile

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


def one_sided_z(confidence: float) -> float:
    """The normal quantile for a one-sided bound at ``confidence`` (0.95 -> 1.645)."""
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    return NormalDist().inv_cdf(confidence)


def _ranks(values: Sequence[float]) -> tuple[list[float], float]:
    """Average ranks (1-based) of ``values`` and the tie term sum(t^3 - t)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    return ranks, ties


@dataclass(frozen=True)
class MannWhitney:
    """One-sided test that ``x`` tends to be larger than ``y``."""

    u: float  # U of x: pairs (x_i, y_j) with x_i > y_j, ties counting one half
    z: float
    p: float  # P(U >= observed) under "same distribution", normal approximation


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> MannWhitney:
    """Mann-Whitney U, alternative "x greater", with tie correction and continuity.

    Matches ``scipy.stats.mannwhitneyu(x, y, alternative="greater",
    method="asymptotic")``; plain Python so the gate needs no scipy.
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("Mann-Whitney U needs values on both sides")
    ranks, ties = _ranks([*x, *y])
    u = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:  # every value equal: no evidence either way
        return MannWhitney(u, 0.0, 0.5)
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(variance)
    return MannWhitney(u, z, 1.0 - NormalDist().cdf(z))


def slower_beyond_margin(
    candidate: Sequence[float], reference: Sequence[float], margin: float
) -> MannWhitney:
    """Is ``candidate`` slower than ``reference`` stretched by ``1 + margin``?

    A small p is evidence that the candidate is more than ``margin`` slower;
    a candidate exactly ``margin`` slower gives p near 0.5.
    """
    return mann_whitney_greater(candidate, [v * (1 + margin) for v in reference])


def bootstrap_ratio_lower(
    candidate: Sequence[float],
    reference: Sequence[float],
    q: float,
    confidence: float,
    resamples: int = 1000,
    seed: int = 0,
) -> float:
    """One-sided lower bound of the ratio of q-th percentiles (candidate / reference).

    Percentile bootstrap, seeded so a verdict is reproducible from its data.
    """
    if not candidate or not reference:
        raise ValueError("a percentile ratio needs values on both sides")
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        top = percentile(rng.choices(candidate, k=len(candidate)), q)
        bottom = percentile(rng.choices(reference, k=len(reference)), q)
        ratios.append(top / bottom if bottom > 0 else math.inf)
    return percentile(ratios, (1 - confidence) * 100)


def paired_block_ratio_lower(
    candidate_blocks: Sequence[Sequence[float]],
    reference_blocks: Sequence[Sequence[float]],
    q: float,
    confidence: float,
    resamples: int = 1000,
    seed: int = 0,
) -> float:
    """One-sided lower bound of the q-th percentile ratio, resampling whole paired blocks.

    Why blocks: requests of one block share a stretch of the machine's time, so a
    burst of background work slows a whole block, not random requests; resampling
    single requests takes that burst for a steady slowdown and gives a bound far too
    tight (the calibration's false rejects, docs/gates.md). Block ``i`` of each side
    ran back to back (ABBA), so a resample takes block ``i`` from both sides: the
    time-shared noise stays paired and cancels, a slowdown in every block remains.
    """
    if len(candidate_blocks) != len(reference_blocks) or not candidate_blocks:
        raise ValueError("paired blocks: both sides need the same number of blocks")
    rng = random.Random(seed)
    count = len(candidate_blocks)
    ratios = []
    for _ in range(resamples):
        picks = rng.choices(range(count), k=count)
        top = [v for i in picks for v in candidate_blocks[i]]
        bottom = [v for i in picks for v in reference_blocks[i]]
        if not top or not bottom:
            continue
        low = percentile(bottom, q)
        ratios.append(percentile(top, q) / low if low > 0 else math.inf)
    if not ratios:
        raise ValueError("paired blocks: no values to compare")
    return percentile(ratios, (1 - confidence) * 100)


def error_rate_increase_lower(
    canary_errors: float,
    canary_total: float,
    stable_errors: float,
    stable_total: float,
    confidence: float,
) -> float:
    """One-sided lower bound of (canary rate - stable rate), Agresti-Caffo adjusted.

    Counts may be fractional (Prometheus ``increase()`` extrapolates). The PromQL
    twin is :meth:`pipeline.canary.promql.RelativeQueries.error_rate_increase_lower`.
    """
    if min(canary_errors, canary_total, stable_errors, stable_total) < 0:
        raise ValueError("counts must be >= 0")
    pc = (canary_errors + 1) / (canary_total + 2)
    ps = (stable_errors + 1) / (stable_total + 2)
    se = math.sqrt(pc * (1 - pc) / (canary_total + 2) + ps * (1 - ps) / (stable_total + 2))
    return (pc - ps) - one_sided_z(confidence) * se
