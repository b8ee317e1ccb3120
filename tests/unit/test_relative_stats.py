"""The relative statistics: Mann-Whitney U, the bootstrap p95 ratio, Agresti-Caffo.

Mann-Whitney is checked against scipy on fixed and generated samples; the
decision properties (a shift beyond the margin is caught, the same distribution
is not, scaling both sides changes nothing) are checked on generated data.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu

from pipeline.gates.stats import (
    bootstrap_ratio_lower,
    error_rate_increase_lower,
    mann_whitney_greater,
    one_sided_z,
    slower_beyond_margin,
)

samples = st.lists(
    st.floats(min_value=0.001, max_value=10.0, allow_nan=False), min_size=2, max_size=60
)


@given(samples, samples)
@settings(max_examples=200, deadline=None)
def test_mann_whitney_matches_scipy(x: list[float], y: list[float]) -> None:
    ours = mann_whitney_greater(x, y)
    if len(set(x + y)) == 1:  # scipy gives NaN when every value ties; we give no evidence
        assert ours.p == 0.5
        return
    theirs = mannwhitneyu(x, y, alternative="greater", method="asymptotic", use_continuity=True)
    assert ours.u == pytest.approx(theirs.statistic)
    assert ours.p == pytest.approx(theirs.pvalue, abs=1e-9)


def test_mann_whitney_with_ties_matches_scipy() -> None:
    x = [1, 2, 2, 3, 3, 3, 5, 8]
    y = [1, 1, 2, 2, 3, 4]
    theirs = mannwhitneyu(x, y, alternative="greater", method="asymptotic")
    assert mann_whitney_greater(x, y).p == pytest.approx(theirs.pvalue)


def _lognormal(n: int, median: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [median * math.exp(rng.gauss(0, 0.3)) for _ in range(n)]


@given(st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_same_distribution_is_not_called_slower(seed: int) -> None:
    a, b = _lognormal(200, 0.1, seed), _lognormal(200, 0.1, seed + 1)
    assert slower_beyond_margin(a, b, 0.10).p > 0.01


@given(st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_a_shift_well_beyond_the_margin_is_caught(seed: int) -> None:
    champion = _lognormal(200, 0.1, seed)
    candidate = [v + 0.3 for v in _lognormal(200, 0.1, seed + 1)]  # +300 ms
    assert slower_beyond_margin(candidate, champion, 0.10).p < 1e-6


@given(st.integers(0, 10_000), st.floats(0.01, 100.0))
@settings(max_examples=30, deadline=None)
def test_the_verdict_does_not_depend_on_units(seed: int, scale: float) -> None:
    a, b = _lognormal(50, 0.1, seed), _lognormal(50, 0.12, seed + 1)
    scaled = slower_beyond_margin([v * scale for v in a], [v * scale for v in b], 0.1)
    assert scaled.p == pytest.approx(slower_beyond_margin(a, b, 0.1).p, abs=1e-9)


def test_the_margin_forgives_a_small_slowdown_and_not_a_large_one() -> None:
    champion = _lognormal(300, 0.1, 1)
    five_percent = [v * 1.05 for v in _lognormal(300, 0.1, 2)]
    thirty_percent = [v * 1.30 for v in _lognormal(300, 0.1, 3)]
    assert slower_beyond_margin(five_percent, champion, 0.10).p > 0.05
    assert mann_whitney_greater(thirty_percent, champion).p < 1e-6
    assert slower_beyond_margin(thirty_percent, champion, 0.10).p < 1e-3


def test_bootstrap_p95_ratio_bounds_the_true_ratio() -> None:
    champion = _lognormal(200, 0.1, 5)
    same = sorted(_lognormal(200, 0.1, 6))
    tail = [*same[:180], *(v * 3 for v in same[180:])]  # the slowest 10 % three times slower
    assert bootstrap_ratio_lower(same, champion, 95, 0.99) < 1.1
    assert bootstrap_ratio_lower(tail, champion, 95, 0.99) > 1.5
    # Seeded: the same data gives the same bound.
    assert bootstrap_ratio_lower(tail, champion, 95, 0.99) == bootstrap_ratio_lower(
        tail, champion, 95, 0.99
    )


def test_one_sided_z() -> None:
    assert one_sided_z(0.95) == pytest.approx(1.6449, abs=1e-4)
    with pytest.raises(ValueError, match="confidence"):
        one_sided_z(1.0)


@pytest.mark.parametrize(
    ("canary", "stable", "worse"),
    [
        ((0, 75), (0, 675), False),  # nothing wrong anywhere
        ((1, 75), (0, 675), False),  # one stray error is not evidence
        ((3, 75), (0, 675), True),  # a 5 % fault seen as 3 in 75
        ((2, 75), (0, 675), True),
        ((5, 100), (45, 900), False),  # both at 5 %: the machine, not the canary
        ((10, 100), (45, 900), True),
    ],
)
def test_error_rate_increase_separates_a_fault_from_noise(
    canary: tuple[int, int], stable: tuple[int, int], worse: bool
) -> None:
    lower = error_rate_increase_lower(*canary, *stable, confidence=0.95)
    assert (lower > 0.0) is worse


@given(st.floats(0, 500), st.floats(0, 5000), st.floats(0, 5000), st.floats(0, 50))
@settings(max_examples=200, deadline=None)
def test_error_rate_bound_is_finite_and_monotone(
    errors: float, total: float, stable_total: float, more_errors: float
) -> None:
    n = total + errors  # errors never exceed the total
    base = error_rate_increase_lower(errors, n, 0, stable_total, 0.95)
    assert math.isfinite(base) and base < 1
    # More canary errors in the same total never lowers the bound.
    worse = error_rate_increase_lower(min(errors + more_errors, n), n, 0, stable_total, 0.95)
    assert worse >= base - 1e-12
