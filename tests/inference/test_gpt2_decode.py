"""The plain GPT-2 decode step computes what the model's own forward computes.

Same state in, same logits and the same cache out, step after step, on a
left-padded batch (the mask must hide the padding) and on one unpadded row (the
fused attention path), with dense and with packed layers (the step calls
whatever layers the engine tuned). Models it does not reproduce keep the model's
forward. A tiny random GPT-2 is enough: the shapes, not the weights, matter.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from inference.gpt2_decode import (
    TANH_GELU,
    Gpt2DecodeStep,
    gpt2_decode_step,
    model_decode_step,
)
from inference.kv_cache import cache_layers
from inference.layer_tuning import tune_linear_layers
from inference.packed_linear import pack_linear_layers, packable
from inference.padded_prefill import padded_prefill
from tests.support import tiny_gpt2

PADDED = [[5, 17, 3], [9], [1, 2, 3, 4, 5, 6, 7], [42, 42, 8, 8, 8]]
STEPS = 6


@torch.inference_mode()
def _run_both(model: Any, prompts: list[list[int]]) -> None:
    """Decode ``STEPS`` tokens both ways from one prefill; compare every step."""
    step = gpt2_decode_step(model)
    assert isinstance(step, Gpt2DecodeStep)
    logits, cache, mask = padded_prefill(model, prompts, torch.device("cpu"))
    cache_layers(cache)  # the engine's growing layers, as after its merge
    plain_cache = copy.deepcopy(cache)
    tokens = logits.argmax(-1, keepdim=True)
    positions = mask.sum(dim=1, keepdim=True)
    for _ in range(STEPS):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        expected = model_decode_step(model, tokens, positions, mask, cache)
        got = step(tokens, positions, mask, plain_cache)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        for theirs, ours in zip(cache_layers(cache), cache_layers(plain_cache), strict=True):
            torch.testing.assert_close(ours.current(), theirs.current(), rtol=1e-5, atol=1e-6)
        tokens, positions = expected.argmax(-1, keepdim=True), positions + 1


def _with_layout(layout: str) -> Any:
    """The tiny model with every linear layer in ``layout``, as the engine's tuning leaves it."""
    model = tiny_gpt2()
    if layout == "dense":
        return model
    if not packable(model):
        pytest.skip("oneDNN is not available in this torch build")
    if layout == "packed":
        assert pack_linear_layers(model, min_weights=0) > 0
    else:
        choices = tune_linear_layers(model, [1, len(PADDED)], layout)
        assert {choice.layout for choice in choices} == {layout}
    return model


@pytest.mark.parametrize("layout", ["dense", "packed", "weight-first", "onednn"])
def test_plain_step_equals_the_models_forward_on_a_padded_batch(layout: str) -> None:
    _run_both(_with_layout(layout), PADDED)


@pytest.mark.parametrize("layout", ["dense", "weight-first", "onednn"])
@torch.inference_mode()
def test_a_batch_attends_with_the_fused_kernel_whatever_the_layout(layout: str) -> None:
    """The unfused math attention costs a batch-16 GPT-2-small step about a tenth
    of its time (docs/performance.md); weight-first layers' transposed outputs
    had sent every batched step there."""
    from torch.profiler import profile

    model = _with_layout(layout)
    step = gpt2_decode_step(model)
    assert step is not None
    logits, cache, mask = padded_prefill(model, PADDED, torch.device("cpu"))
    cache_layers(cache)
    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    with profile() as profiler:
        step(logits.argmax(-1, keepdim=True), mask.sum(dim=1, keepdim=True) - 1, mask, cache)
    kernels = {event.key for event in profiler.key_averages() if "attention" in event.key}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels
    assert "aten::_scaled_dot_product_attention_math" not in kernels


@pytest.mark.parametrize("layout", ["dense", "weight-first", "onednn"])
def test_plain_step_equals_the_models_forward_for_one_unpadded_row(layout: str) -> None:
    """One row is the one-client case. Both sides call the same weight-first layers in
    their one-row path; test_layer_tuning checks that path against the layer."""
    _run_both(_with_layout(layout), [[3, 1, 4, 1, 5, 9, 2, 6]])


@pytest.mark.parametrize(
    "activation", ["gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "relu", "gelu"]
)
def test_the_step_uses_the_fused_gelu_only_for_the_models_own_function(activation: str) -> None:
    """torch's tanh GELU stands in for transformers' only where it is the same function."""
    model = tiny_gpt2(activation_function=activation)
    step = gpt2_decode_step(model)
    assert step is not None
    assert (step._activation is not None) == (activation in TANH_GELU)
    _run_both(model, PADDED)


@pytest.mark.parametrize(
    "overrides",
    [
        {"scale_attn_by_inverse_layer_idx": True},
        {"reorder_and_upcast_attn": True},
        {"scale_attn_weights": False},
    ],
    ids=["scaled-by-layer", "upcast", "unscaled"],
)
def test_gpt2_variants_it_does_not_reproduce_keep_the_models_forward(
    overrides: dict[str, bool],
) -> None:
    assert gpt2_decode_step(tiny_gpt2(**overrides)) is None


def test_other_model_families_keep_the_models_forward() -> None:
    assert gpt2_decode_step(SimpleNamespace(config=SimpleNamespace(model_type="llama"))) is None
    assert gpt2_decode_step(object()) is None


def test_the_decode_step_is_a_server_setting() -> None:
    from inference.settings import DecodeStepPolicy, SettingsError, load_settings

    assert load_settings(env={}).decode_step is DecodeStepPolicy.auto
    chosen = load_settings(env={"MLCICD_DECODE_STEP": "model"}).decode_step
    assert chosen is DecodeStepPolicy.model
    with pytest.raises(SettingsError, match="decode_step"):
        load_settings(env={"MLCICD_DECODE_STEP": "fastest"})
