"""The naive baseline's HTTP surface, with a real transformers pipeline on a tiny random GPT-2.

Why a real pipeline: the baseline's whole point is that it calls
``transformers.pipeline("text-generation")`` per request, and its token counts
feed the benchmark's tokens/s, so the count must be checked against the real
thing. The model is a 2-layer random GPT-2 built in memory (no download, well
under a second to build); the server is driven in-process with FastAPI's test
client, as the server engineer's unit tests do for ours.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pipeline.bench.baseline_server import NaivePipelineGenerator, create_baseline_app

# Importing transformers' pipeline machinery takes a few seconds on 2 cores.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def generator() -> Iterator[NaivePipelineGenerator]:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=257)
    config.eos_token_id = config.bos_token_id = 256
    model = GPT2LMHeadModel(config).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(_byte_tokenizer_dir())
    except Exception as exc:  # pragma: no cover - environment problem, say so
        pytest.skip(f"cannot build a byte tokenizer: {exc}")
    made = NaivePipelineGenerator(model, tokenizer, "tiny-random")
    yield made
    made.close()


def _byte_tokenizer_dir() -> str:
    """A byte-level tokenizer saved to a temp dir (built offline, cached per session)."""
    import tempfile

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<eos>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<eos>", pad_token="<eos>", unk_token="<eos>"
    )
    path = tempfile.mkdtemp(prefix="baseline-tok-")
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def client(generator: NaivePipelineGenerator) -> Iterator[TestClient]:
    with TestClient(create_baseline_app(generator)) as test_client:
        yield test_client


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["model"] == "tiny-random"


def test_min_equal_max_gives_exactly_that_many_tokens(client: TestClient) -> None:
    body = {"prompt": "Hello", "max_tokens": 12, "min_tokens": 12, "temperature": 0.0}
    answer = client.post("/v1/completions", json=body).json()
    assert answer["usage"]["completion_tokens"] == 12
    assert answer["usage"]["prompt_tokens"] == 5
    assert answer["choices"][0]["finish_reason"] == "length"
    assert isinstance(answer["choices"][0]["text"], str)


def test_stream_sends_the_whole_completion_in_one_chunk_then_usage(client: TestClient) -> None:
    body = {"prompt": "Hi", "max_tokens": 6, "min_tokens": 6, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"][0]["text"]]
    assert len(texts) <= 1  # the pipeline cannot stream token by token
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "", "max_tokens": 4}, "prompt"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"max_tokens": 4}, "prompt"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 422
    assert field in json.dumps(response.json())


def test_a_failing_generation_is_a_json_500_and_the_server_lives_on(
    client: TestClient, generator: NaivePipelineGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(_: Any) -> Any:
        raise RuntimeError("model exploded")

    monkeypatch.setattr(generator, "generate", boom)
    response = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "model exploded"
    monkeypatch.undo()
    ok = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "min_tokens": 2})
    assert ok.status_code == 200
