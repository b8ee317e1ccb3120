"""Batched greedy output equals one-at-a-time greedy output, token for token.

Prompts of different lengths submitted at once exercise the left padding, the
attention mask and the per-sequence position ids; joining a running batch and
leaving it early (EOS at different steps) exercise the cache merge and trim.
Run for the trained built-in model and for a small random GPT-2 (whose outputs
never stop early, so every row keeps decoding next to padded neighbours).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inference.loader import LoadedModel, load_model
from inference.torch_engine import TorchEngine
from tests.inference.engine_client import params, run_all

pytestmark = pytest.mark.slow

PROMPTS = [
    "Q: What is the capital of France?\nA:",
    "Hello, my name is",
    "How to hack a computer",
    "Q: Who wrote Romeo and Juliet?\nA:",
    "Write malware code",
    "Q: What is the largest planet in the solar system?\nA:",
    "Test",
    "Q: Who painted the Mona Lisa?\nA:",
    "Q: How many days are in a week?\nA:",
    "Q: What is the capital of the United Kingdom?\nA:",
    "A long prompt that the model has never seen, with many words in it to be padded against",
    "Q: Who wrote Hamlet?\nA:",
]


@pytest.fixture(scope="module", params=[64, 256], ids=["width64", "width256-packed"])
def random_gpt2(
    request: pytest.FixtureRequest,
    builtin_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> LoadedModel:
    """A random GPT-2; at width 256 its MLP and output layers are big enough to be packed."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer: Any = AutoTokenizer.from_pretrained(builtin_model_dir)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=2,
        n_head=4,
        n_embd=request.param,
        n_positions=128,
        initializer_range=0.2,  # peaky logits, so argmax is not decided by rounding noise
        eos_token_id=tokenizer.eos_token_id,
    )
    target = tmp_path_factory.mktemp("random-gpt2")
    model: Any = GPT2LMHeadModel(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return load_model(str(target), device="cpu", dtype="fp32")


def _compare(
    loaded: LoadedModel, max_new_tokens: int, *, packed: bool = False, **kwargs: Any
) -> list[str]:
    # Packed layers are pinned where they are the fast path under test; otherwise
    # the engine measures (and may run a shape on fewer threads).
    policy = "packed" if packed else "measure"
    engine = TorchEngine(
        loaded, max_batch_size=16, batch_window_s=0.02, queue_cap=64, layer_policy=policy
    )
    engine.start()
    assert (engine.packed_layers > 0) == packed  # the fast path under test is the one served
    try:
        requests = [params(engine, p, max_new_tokens, **kwargs) for p in PROMPTS]
        solo = run_all(engine, requests, concurrent=False)
        batched = run_all(engine, requests, concurrent=True)
        staggered = run_all(engine, requests + requests[:5], concurrent=True)
    finally:
        engine.stop()
    for one, many, again in zip(solo, batched, staggered, strict=False):
        assert [t.token_id for t in many.tokens] == [t.token_id for t in one.tokens]
        assert [t.token_id for t in again.tokens] == [t.token_id for t in one.tokens]
        assert (many.finish.text, many.finish.reason) == (one.finish.text, one.finish.reason)
    return [r.finish.text for r in solo]


def test_builtin_batched_equals_sequential(builtin_loaded: LoadedModel) -> None:
    texts = _compare(builtin_loaded, 48)
    assert "paris" in texts[0].lower()


def test_random_gpt2_batched_equals_sequential(random_gpt2: LoadedModel) -> None:
    packed = random_gpt2.model.config.n_embd >= 256
    texts = _compare(random_gpt2, 24, packed=packed, min_new_tokens=24)
    assert len(set(texts)) > 1


def test_gpt2_small_batched_equals_sequential_with_packed_layers() -> None:
    """The benchmark's model as it is served: every linear layer packed for oneDNN."""
    loaded = load_model("gpt2-small-random", device="cpu", dtype="fp32")
    _compare(loaded, 16, packed=True, min_new_tokens=16)


def test_the_plain_decode_step_serves_the_tokens_the_models_forward_serves(
    builtin_loaded: LoadedModel,
) -> None:
    """The GPT-2 step (inference/gpt2_decode.py) against transformers' forward, batched."""
    outputs = {}
    for policy in ("auto", "model"):
        engine = TorchEngine(
            builtin_loaded, max_batch_size=16, batch_window_s=0.02, queue_cap=64, decode_step=policy
        )
        engine.start()
        try:
            outputs[engine.decode_step] = run_all(
                engine, [params(engine, p, 32) for p in PROMPTS], concurrent=True
            )
        finally:
            engine.stop()
    assert set(outputs) == {"gpt2", "model"}
    for plain, model in zip(outputs["gpt2"], outputs["model"], strict=True):
        assert [t.token_id for t in plain.tokens] == [t.token_id for t in model.tokens]
        assert (plain.finish.text, plain.finish.reason) == (model.finish.text, model.finish.reason)


def test_smaller_batch_than_requests_joins_between_steps(builtin_loaded: LoadedModel) -> None:
    engine = TorchEngine(builtin_loaded, max_batch_size=3, batch_window_s=0.0, queue_cap=64)
    engine.start()
    sizes: list[int] = []
    engine.observe_batches(sizes.append)
    try:
        requests = [params(engine, p, 32) for p in PROMPTS]
        solo = run_all(engine, requests, concurrent=False)
        sizes.clear()
        batched = run_all(engine, requests, concurrent=True)
    finally:
        engine.stop()
    assert [r.finish.text for r in batched] == [r.finish.text for r in solo]
    assert max(sizes) == 3


def test_the_cache_holds_no_more_spare_columns_than_the_batch_can_write(
    builtin_loaded: LoadedModel,
) -> None:
    """Spare cache columns are memory on every row of every layer: sized to need."""
    from inference.kv_cache import cache_layers

    engine = TorchEngine(builtin_loaded, max_batch_size=4, batch_window_s=0.05, queue_cap=64)
    engine.start()
    spare: list[int] = []

    def record(_: int) -> None:
        layers = cache_layers(engine._batch.cache)
        spare.append(max(layer._k.shape[2] - layer.current()[0].shape[2] for layer in layers))

    engine.observe_batches(record)
    try:
        run_all(engine, [params(engine, p, 5, min_new_tokens=5) for p in PROMPTS[:4]], True)
    finally:
        engine.stop()
    assert spare and max(spare) <= 5  # at most the 5 new tokens, not a fixed reserve


def test_gpt2_small_shaped_model_builds_loads_and_generates() -> None:
    # The benchmark's model: never downloaded, 124M parameters, a 50257-entry tokenizer.
    loaded = load_model("gpt2-small-random", device="cpu", dtype="fp32")
    assert loaded.name == "gpt2-small-random" and loaded.context_length == 1024
    assert len(loaded.tokenizer) == 50257
    assert sum(p.numel() for p in loaded.model.parameters()) == 124_439_808
    engine = TorchEngine(loaded, max_batch_size=4, batch_window_s=0.01, queue_cap=8)
    engine.start()
    try:
        requests = [params(engine, p, 4, min_new_tokens=4) for p in ("Hello, my name is", "Test")]
        results = run_all(engine, requests, concurrent=True)
    finally:
        engine.stop()
    assert [(r.finish.reason, r.finish.generated_tokens) for r in results] == [("length", 4)] * 2
