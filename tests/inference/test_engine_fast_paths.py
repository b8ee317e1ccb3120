"""The engine's CPU fast paths compute what the plain paths compute.

Packed (oneDNN) linear layers must give the model's own outputs, and a
left-padded prefill of prompts of different lengths must give each prompt's
lone-prefill logits with no NaN or padding leaking into the cache. A tiny random
GPT-2 is enough (built here, no tokenizer): the shapes, not the weights, matter.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from inference.kv_cache import cache_layers
from inference.packed_linear import PackedLinear, pack_linear_layers, packable
from inference.padded_prefill import padded_prefill, prefill_chunks
from tests.support import tiny_gpt2

PROMPTS = [[5, 17, 3], [9], [1, 2, 3, 4, 5, 6, 7], [42, 42, 8, 8, 8]]


@torch.inference_mode()
def _logits(model: Any, ids: list[int]) -> torch.Tensor:
    logits: torch.Tensor = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return logits


def test_prefill_chunks_sort_by_length_and_respect_the_budget() -> None:
    assert prefill_chunks([5, 1, 3]) == [[1, 2, 0]]
    assert prefill_chunks([4, 4, 4, 4], budget=8) == [[0, 1], [2, 3]]
    assert prefill_chunks([100, 1], budget=8) == [[1], [0]]  # too long alone: its own chunk
    assert prefill_chunks([]) == []


def test_padded_prefill_equals_lone_prefills_and_keeps_padding_out_of_the_cache() -> None:
    model = tiny_gpt2()
    logits, cache, mask = padded_prefill(model, PROMPTS, torch.device("cpu"))
    assert mask.tolist()[1] == [0] * 6 + [1]
    for row, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(logits[row], _logits(model, prompt), rtol=1e-4, atol=1e-5)
    for layer in cache_layers(cache):
        keys, values = layer.current()
        assert not keys.isnan().any() and not values.isnan().any()
        assert keys[1, :, :6].abs().sum() == 0 and values[1, :, :6].abs().sum() == 0


def test_packed_layers_give_the_model_its_own_outputs() -> None:
    model = tiny_gpt2()
    if not packable(model):
        pytest.skip("oneDNN is not available in this torch build")
    before = [_logits(model, prompt) for prompt in PROMPTS]
    assert pack_linear_layers(model, min_weights=0) == 2 * 4 + 1  # 4 Conv1D per block, plus lm_head
    assert isinstance(model.lm_head, PackedLinear)
    assert isinstance(model.transformer.h[0].mlp.c_fc, PackedLinear)
    for prompt, expected in zip(PROMPTS, before, strict=True):
        torch.testing.assert_close(_logits(model, prompt), expected, rtol=1e-4, atol=1e-5)
    assert pack_linear_layers(model, min_weights=0) == 0  # already packed: nothing to do


def test_packing_leaves_other_dtypes_alone() -> None:
    model = tiny_gpt2().to(torch.bfloat16)
    assert not packable(model)
    assert pack_linear_layers(model, min_weights=0) == 0


def test_small_layers_stay_dense() -> None:
    model = tiny_gpt2()  # 32-wide layers: far below the default threshold
    assert pack_linear_layers(model) == 0
    assert not isinstance(model.lm_head, PackedLinear)


@pytest.mark.parametrize("spare", [1, 3, None], ids=["spare1", "spare3", "default"])
def test_growing_layer_equals_concatenation_across_regrowths(spare: int | None) -> None:
    from inference.kv_cache import SPARE_COLUMNS, GrowingLayer

    torch.manual_seed(0)
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    layer = GrowingLayer(keys.clone(), values.clone())
    if spare is not None:
        layer.reset_to(keys.clone(), values.clone(), spare)
        assert layer._k.shape[2] == 5 + spare
    all_keys, all_values = [keys], [values]
    steps = [1] * (3 * SPARE_COLUMNS) + [SPARE_COLUMNS + 7]  # regrow often, then a long update
    for length in steps:
        new_keys, new_values = torch.randn(2, 3, length, 4), torch.randn(2, 3, length, 4)
        all_keys.append(new_keys)
        all_values.append(new_values)
        got_keys, got_values = layer.update(new_keys, new_values)
    assert torch.equal(got_keys, torch.cat(all_keys, dim=2))
    assert torch.equal(got_values, torch.cat(all_values, dim=2))


@torch.inference_mode()
def test_appended_rows_join_the_batch_left_padded_and_a_finished_row_is_dropped() -> None:
    from inference.kv_cache import append_rows

    model = tiny_gpt2()
    _, batch_cache, batch_mask = padded_prefill(model, PROMPTS[:2], torch.device("cpu"))
    before = [(k.clone(), v.clone()) for k, v in (x.current() for x in cache_layers(batch_cache))]
    _, cache, mask = padded_prefill(model, PROMPTS[2:], torch.device("cpu"))
    joining = [(k.clone(), v.clone()) for k, v in (x.current() for x in cache_layers(cache))]
    cache, mask = append_rows(batch_cache, batch_mask, cache, mask, rows=[1])  # row 0 finished
    width = len(PROMPTS[2])  # the longest prompt, now the common width
    assert mask.tolist() == [
        [0] * (width - 3) + [1] * 3,
        [0] * (width - 1) + [1],
        [0] * (width - 5) + [1] * 5,
    ]
    for layer, (old_k, _), (new_k, _) in zip(cache_layers(cache), before, joining, strict=True):
        keys, _ = layer.current()
        assert keys.shape[0] == 3 and keys.shape[2] == width
        assert torch.equal(keys[:2, :, width - old_k.shape[2] :], old_k)
        assert torch.equal(keys[2:, :, width - new_k.shape[2] :], new_k[1:2])
        assert not keys[:2, :, : width - old_k.shape[2]].any()  # padding is zeros
