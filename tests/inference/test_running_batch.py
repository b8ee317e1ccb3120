"""The running batch keeps its sequences, cache rows and mask in step.

Real prefills of a tiny random GPT-2 (the shapes matter, not the weights), real
sequence states; no engine around them, so each membership change is checked on
its own: rows joining, finished rows leaving with the columns only they needed,
the next step's mask, and a failure emptying the batch.
"""

from __future__ import annotations

from typing import Any

import torch

from inference.engine import Event, FinishEvent, GenerationParams
from inference.kv_cache import cache_layers
from inference.padded_prefill import padded_prefill
from inference.running_batch import RunningBatch, columns_to_come
from inference.sequence_state import SequenceState
from tests.support import tiny_gpt2

PROMPTS = [[5, 17, 3], [9], [1, 2, 3, 4, 5, 6, 7]]


def _sequence(prompt: list[int], events: list[Event], max_new_tokens: int = 8) -> SequenceState:
    params = GenerationParams(prompt="", prompt_ids=tuple(prompt), max_new_tokens=max_new_tokens)
    return SequenceState(
        params=params,
        sink=events.append,
        handle=None,
        decode=lambda ids: " ".join(map(str, ids)),
        eos_ids=frozenset(),
        context_length=64,
        submitted_at=0.0,
    )


def _joined(
    model: Any, prompts: list[list[int]], events: list[Event], new_tokens: tuple[int, ...] = ()
) -> RunningBatch:
    batch = RunningBatch()
    for row, prompt in enumerate(prompts):  # one prefill each: padded to a common width
        _, cache, mask = padded_prefill(model, [prompt], torch.device("cpu"))
        limit = new_tokens[row] if new_tokens else 8
        batch.append([_sequence(prompt, events, limit)], cache, mask, [0])
    return batch


def test_rows_join_in_order_and_the_mask_marks_each_rows_real_tokens() -> None:
    batch = _joined(tiny_gpt2(), PROMPTS, [])
    width = max(map(len, PROMPTS))
    assert [seq.input_ids for seq in batch.seqs] == PROMPTS
    assert batch.mask is not None
    assert batch.mask.tolist() == [[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS]
    for layer in cache_layers(batch.cache):
        keys, _ = layer.current()
        assert keys.shape[0] == len(PROMPTS) and keys.shape[2] == width
    assert batch.next_mask()[:, -1].tolist() == [1, 1, 1]
    assert batch.next_mask().shape == (len(PROMPTS), width + 1)


def test_a_finished_row_leaves_with_the_columns_only_it_needed() -> None:
    # The longest prompt also has the longest generation ahead: 20 spare columns, not 8.
    batch = _joined(tiny_gpt2(), PROMPTS, [], new_tokens=(8, 8, 20))
    assert {layer.capacity for layer in cache_layers(batch.cache)} == {7 + 20}
    survivors = [batch.seqs[0], batch.seqs[1]]
    batch.seqs[2].finish("length")  # its columns, filled and spare, go with it
    batch.drop_finished()
    assert batch.seqs == survivors
    assert batch.mask is not None and batch.mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    for layer in cache_layers(batch.cache):
        keys, _ = layer.current()
        assert keys.shape[0] == 2 and keys.shape[2] == 3
        assert layer.capacity == 3 + 8  # spare columns for the survivors' 8 tokens


def test_when_every_row_finishes_the_batch_is_empty() -> None:
    batch = _joined(tiny_gpt2(), PROMPTS[:2], [])
    for seq in batch.seqs:
        seq.finish("eos")
    batch.drop_finished()
    assert batch.seqs == [] and batch.cache is None and batch.mask is None


def test_a_failure_finishes_every_sequence_with_the_message_and_empties_the_batch() -> None:
    events: list[Event] = []
    batch = _joined(tiny_gpt2(), PROMPTS, events)
    batch.fail("batched forward failed: boom")
    finishes = [event for event in events if isinstance(event, FinishEvent)]
    assert [event.reason for event in finishes] == ["error"] * len(PROMPTS)
    assert all(event.error == "batched forward failed: boom" for event in finishes)
    assert batch.seqs == [] and batch.cache is None


def test_spare_columns_follow_the_longest_remaining_generation() -> None:
    short, long = _sequence([1], [], max_new_tokens=3), _sequence([1], [], max_new_tokens=20)
    assert columns_to_come([short, long]) == 20
    assert columns_to_come([short]) == 3
    assert columns_to_come([]) == 1
