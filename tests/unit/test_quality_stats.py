"""Wilson intervals, paired comparison / McNemar, and percentile math."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from pipeline.gates.stats import mcnemar_exact_p, paired_comparison, wilson_interval
from pipeline.load.stats import percentile, summarise


@pytest.mark.parametrize(
    ("successes", "total", "low", "high"),
    [
        # Reference values from statsmodels.stats.proportion.proportion_confint(method="wilson").
        (29, 29, 0.8830, 1.0),
        (0, 29, 0.0, 0.1170),
        (8, 10, 0.4902, 0.9433),
        (50, 100, 0.4038, 0.5962),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_reference_values(
    successes: int, total: int, low: float, high: float
) -> None:
    interval = wilson_interval(successes, total)
    assert interval.low == pytest.approx(low, abs=5e-4)
    assert interval.high == pytest.approx(high, abs=5e-4)


def test_wilson_contains_the_point_estimate_and_narrows_with_n() -> None:
    for n in (5, 20, 100, 1000):
        for k in (0, n // 3, n):
            ci = wilson_interval(k, n)
            assert 0.0 <= ci.low <= k / n <= ci.high <= 1.0
    assert (wilson_interval(90, 100).high - wilson_interval(90, 100).low) < (
        wilson_interval(9, 10).high - wilson_interval(9, 10).low
    )


def test_wilson_edge_cases() -> None:
    assert wilson_interval(0, 0).low == 0.0 and wilson_interval(0, 0).high == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_paired_comparison_counts_discordant_pairs() -> None:
    champion = {"a": True, "b": True, "c": False, "d": True, "old": True}
    candidate = {"a": True, "b": False, "c": True, "d": False, "new": False}
    cmp = paired_comparison(candidate, champion)
    assert cmp.paired == 4
    assert cmp.both_passed == 1 and cmp.both_failed == 0
    assert cmp.regressions == ("b", "d")
    assert cmp.improvements == ("c",)
    assert cmp.only_candidate == ("new",)
    assert cmp.only_champion == ("old",)
    assert cmp.champion_rate == pytest.approx(3 / 4)
    assert cmp.candidate_rate == pytest.approx(2 / 4)
    assert cmp.regression == pytest.approx(1 / 4)
    assert cmp.regression == pytest.approx(cmp.champion_rate - cmp.candidate_rate)


def test_paired_comparison_better_candidate_is_negative_regression() -> None:
    cmp = paired_comparison({"a": True, "b": True}, {"a": False, "b": True})
    assert cmp.regression == pytest.approx(-0.5)
    assert cmp.regressions == ()


def test_paired_comparison_without_overlap() -> None:
    cmp = paired_comparison({"a": True}, {"b": True})
    assert cmp.paired == 0 and cmp.regression == 0.0
    assert cmp.only_candidate == ("a",) and cmp.only_champion == ("b",)


def test_mcnemar_exact() -> None:
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(3, 3) == 1.0
    # Two-sided binomial test of 0 vs 5: 2 * 0.5**5.
    assert mcnemar_exact_p(5, 0) == pytest.approx(2 * 0.5**5)
    assert mcnemar_exact_p(1, 9) == pytest.approx(2 * (1 + 10) / 2**10)
    assert mcnemar_exact_p(28, 0) < 1e-7


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    rng = random.Random(7)
    for size in (1, 2, 3, 10, 201):
        values = [rng.expovariate(3.0) for _ in range(size)]
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_hand_computed() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([10.0, 0.0], 99) == pytest.approx(9.9)
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarise() -> None:
    assert summarise([]) is None
    summary = summarise([0.1, 0.2, 0.3, 0.4])
    assert summary is not None
    assert summary.count == 4
    assert summary.mean == pytest.approx(0.25)
    assert summary.max == 0.4
    assert summary.p50 == pytest.approx(0.25)
    ms = summary.as_ms()
    assert math.isclose(float(ms["p99_ms"]), summary.p99 * 1000)
