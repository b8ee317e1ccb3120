"""The local canary sizes its traffic so that every analysed step reaches its minimum sample."""

from __future__ import annotations

import pytest

from pipeline.definition import load_definition
from pipeline.local.canary import TRAFFIC_HEADROOM, canary_seconds, traffic_rate


def test_the_window_reaches_back_over_earlier_steps_at_their_weights() -> None:
    gate = load_definition("builtin", "prod").canary  # window 60s; steps 10%/60s, 30%/10s ...
    assert canary_seconds(gate, 0) == pytest.approx(60 * 0.10)
    assert canary_seconds(gate, 1) == pytest.approx(10 * 0.30 + 50 * 0.10)


@pytest.mark.parametrize("profile", ["builtin", "gpu"])
def test_every_analysed_step_gets_min_requests_with_headroom(profile: str) -> None:
    gate = load_definition(profile, "prod").canary
    rate = traffic_rate(gate)
    for index, step in enumerate(gate.steps):
        if step.set_weight < 100:
            expected = rate * canary_seconds(gate, index)
            assert expected >= TRAFFIC_HEADROOM * gate.min_requests - 1e-9, (index, expected)
