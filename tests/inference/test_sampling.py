"""``inference.sampling.sample_token`` is safe for every temperature and top_p the API accepts.

Property-based (hypothesis): for any logits a model can produce (finite, with
some masked to ``-inf``), any temperature in [0, 2] and any top_p in (0, 1],
including subnormals such as ``1e-45``, the function returns a token that is
not masked, without raising (torch raises on NaN or negative probabilities).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from inference.engine import GREEDY_BELOW
from inference.sampling import greedy_tokens, sample_token

logit = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)
logit_rows = st.lists(st.one_of(logit, st.just(-math.inf)), min_size=1, max_size=64).filter(
    lambda row: any(math.isfinite(x) for x in row)
)
temperatures = st.one_of(
    st.just(0.0),
    st.floats(min_value=0.0, max_value=2.0, allow_subnormal=True),
    st.sampled_from([5e-324, 1e-45, 1e-38, GREEDY_BELOW, 2.0]),
)
top_ps = st.one_of(
    st.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_subnormal=True),
    st.sampled_from([5e-324, 1e-45, 1e-10, 1.0]),
)


@settings(max_examples=300, deadline=None)
@given(row=logit_rows, temperature=temperatures, top_p=top_ps, seed=st.integers(0, 2**32))
@example(row=[1.0, 2.0, 3.0], temperature=1e-45, top_p=1.0, seed=0)
@example(row=[1.0, 2.0, 3.0], temperature=1.0, top_p=1e-45, seed=0)
@example(row=[1.0, 2.0, 3.0], temperature=1.0, top_p=5e-324, seed=0)
@example(row=[1e4, -1e4, -math.inf], temperature=2.0, top_p=1.0, seed=0)
def test_any_accepted_value_samples_an_unmasked_token(
    row: list[float], temperature: float, top_p: float, seed: int
) -> None:
    logits = torch.tensor(row, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    token = sample_token(logits, temperature, top_p, generator)
    assert 0 <= token < len(row)
    assert math.isfinite(row[token])


@settings(max_examples=200, deadline=None)
@given(row=logit_rows, temperature=st.floats(0.0, GREEDY_BELOW, exclude_max=True))
def test_temperatures_below_the_epsilon_are_greedy(row: list[float], temperature: float) -> None:
    logits = torch.tensor(row, dtype=torch.float32)
    assert sample_token(logits, temperature, 1.0, None) == int(torch.argmax(logits))


@settings(max_examples=200, deadline=None)
@given(row=logit_rows, temperature=st.floats(GREEDY_BELOW, 2.0), seed=st.integers(0, 2**32))
def test_a_tiny_top_p_keeps_only_the_most_likely_token(
    row: list[float], temperature: float, seed: int
) -> None:
    logits = torch.tensor(row, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    token = sample_token(logits, temperature, 1e-45, generator)
    # The most likely as float32 sees it: logits closer than float32 can tell are ties.
    weight = torch.exp((logits[token] - logits.max()) / temperature)
    assert float(weight) == 1.0


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampling_follows_the_distribution(temperature: float) -> None:
    logits = torch.tensor([0.0, math.log(3.0), -math.inf])
    generator = torch.Generator().manual_seed(7)
    draws = [sample_token(logits, temperature, 1.0, generator) for _ in range(2000)]
    expected = 3.0 ** (1 / temperature) / (1 + 3.0 ** (1 / temperature))
    assert 2 not in draws
    assert abs(draws.count(1) / len(draws) - expected) < 0.05


def test_top_p_cuts_the_tail_by_probability_mass() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    generator = torch.Generator().manual_seed(3)
    draws = {sample_token(logits, 1.0, 0.7, generator) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 < 0.7 keeps the second; 0.8 >= 0.7 drops the third


def test_greedy_tokens_choose_what_torch_argmax_chooses() -> None:
    generator = torch.Generator().manual_seed(0)
    wide = torch.randn(4, 3, 50257, generator=generator)[:, -1, :]  # a strided view
    ties = torch.zeros(2, 10)
    ties[0, 3] = ties[0, 7] = 1.0  # the first of equal maxima wins
    nans = torch.randn(2, 10, generator=generator)
    nans[1, 4] = nans[1, 6] = float("nan")
    for logits in (wide, ties, nans, wide[:1]):
        assert greedy_tokens(logits) == logits.argmax(dim=-1).tolist()
