"""int8 candidates: a marked copy of the fp32 directory, served quantized by the loader.

The built-in tiny model is enough: what matters is that the candidate is a new
model (new content hash) made from the same weights, that every consumer that
loads it through the loader gets int8 linear layers, and that the engine serves it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

from inference.engine import FinishEvent, GenerationParams
from inference.loader import (
    ModelLoadError,
    directory_content_hash,
    load_model,
    model_directory,
)
from inference.quantize import MARKER, quantized_model_dir, read_marker
from inference.torch_engine import TorchEngine
from pipeline.local.run_cli import _quantized_candidate


@pytest.fixture(scope="module")
def builtin_dir() -> Path:
    _, directory = model_directory("builtin")
    assert directory is not None
    return directory


@pytest.fixture(scope="module")
def int8_dir(builtin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantized_model_dir(builtin_dir, "int8", tmp_path_factory.mktemp("candidates"))


def test_the_candidate_is_the_same_weights_marked_and_a_new_revision(
    builtin_dir: Path, int8_dir: Path
) -> None:
    assert read_marker(int8_dir) is not None and read_marker(builtin_dir) is None
    for item in builtin_dir.iterdir():
        if item.is_file() and not item.name.startswith("."):
            assert (int8_dir / item.name).read_bytes() == item.read_bytes()
    assert directory_content_hash(int8_dir) != directory_content_hash(builtin_dir)
    assert quantized_model_dir(builtin_dir, "int8", int8_dir.parent) == int8_dir  # reused
    with pytest.raises(ValueError, match="quantized already"):
        quantized_model_dir(int8_dir, "int8", int8_dir.parent)


def test_the_loader_serves_a_marked_directory_int8(int8_dir: Path) -> None:
    loaded = load_model(str(int8_dir), device="cpu", dtype="fp32")
    assert loaded.quantization == "int8"
    kinds = {type(m) for m in loaded.model.modules()}
    assert torch.nn.Linear not in kinds
    assert "Conv1D" not in {kind.__name__ for kind in kinds}
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in loaded.model.modules())
    assert load_model("builtin").quantization is None


def test_an_int8_candidate_is_refused_in_another_dtype(int8_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="int8 candidate"):
        load_model(str(int8_dir), device="cpu", dtype="bf16")


def test_an_unknown_quantization_marker_is_a_load_error(int8_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in int8_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / MARKER).write_text(json.dumps({"method": "int3-magic"}))
    with pytest.raises(ModelLoadError, match="unknown quantization method"):
        load_model(str(broken))


def test_the_engine_serves_the_int8_candidate(int8_dir: Path) -> None:
    loaded = load_model(str(int8_dir), device="cpu", dtype="fp32")
    engine = TorchEngine(loaded, max_batch_size=4, batch_window_s=0.0, queue_cap=8)
    engine.start()
    loop = asyncio.new_event_loop()
    try:
        prompt = "Q: What is the capital of France?\nA:"
        ids = engine.count_tokens(prompt)
        params = GenerationParams(prompt=prompt, prompt_ids=ids, max_new_tokens=8)
        handle = engine.submit(params, loop)

        async def finish() -> FinishEvent:
            async for event in handle.events():
                if isinstance(event, FinishEvent):
                    return event
            raise AssertionError("no finish event")

        done = loop.run_until_complete(asyncio.wait_for(finish(), 60))
    finally:
        engine.stop()
        loop.close()
    assert done.reason in ("length", "eos", "stop") and done.generated_tokens > 0
    assert engine.layer_choices == ()  # nothing dense left to choose a layout for


def test_mlcicd_run_quantize_makes_the_candidate_under_the_state_dir(tmp_path: Path) -> None:
    candidate = _quantized_candidate("builtin", "int8", tmp_path)
    assert candidate.parent == tmp_path.resolve() / "candidates"
    assert read_marker(candidate) is not None
