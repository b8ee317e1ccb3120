"""The official ``openai`` client against the real server: plain, streamed, usage, errors.

Why the official client: OpenAI compatibility means that this client works
and shows our error messages, which only holds if the error bodies have
OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` and the
stream follows OpenAI's chunk and ``stream_options`` rules.

One server per engine (torch, and CTranslate2 on the built-in model's
conversion) with a short deadline serves every test here, so the mid-stream
error (a stream that outlives its deadline) takes about two seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.fixtures.inference_server import InferenceServer, StartServer

pytestmark = pytest.mark.slow

DEADLINE_S = 2.0
ARGS = ("--request-deadline-s", str(DEADLINE_S), "--drain-timeout-s", str(DEADLINE_S))


@pytest.fixture(scope="module")
def server(inference_server: StartServer, engine_model: str) -> InferenceServer:
    return inference_server(*ARGS, model=engine_model, reuse=True)


@pytest.fixture()
def client(server: InferenceServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_plain_and_streamed_completions_agree(client: openai.OpenAI) -> None:
    model = client.models.list().data[0].id
    plain = client.completions.create(model=model, prompt="Hello", max_tokens=8, temperature=0)
    assert plain.choices[0].text and plain.usage is not None
    assert plain.usage.completion_tokens <= 8
    chunks = list(
        client.completions.create(
            model=model, prompt="Hello", max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert all(c.usage is None for c in chunks)  # usage only when asked for


def served(client: openai.OpenAI) -> str:
    """The served model's id: ``builtin``, or the name of its converted candidate."""
    return client.models.list().data[0].id


def test_stream_options_include_usage_is_honoured(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=served(client),
        prompt="Hello",
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert 1 <= last.usage.completion_tokens <= 6
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


def test_extreme_sampling_values_answer_200(client: openai.OpenAI) -> None:
    for temperature, top_p in ((1e-45, 1.0), (1.0, 1e-45), (2.0, 5e-324)):
        answer = client.completions.create(
            model=served(client),
            prompt="Hello",
            max_tokens=4,
            temperature=temperature,
            top_p=top_p,
        )
        assert answer.choices[0].finish_reason in ("length", "stop")


def test_errors_reach_the_client_with_message_param_and_code(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as too_many:
        client.completions.create(model=served(client), prompt="Hello", max_tokens=100_000)
    assert "`max_tokens` must be <=" in too_many.value.message
    assert (too_many.value.param, too_many.value.code) == ("max_tokens", "validation")
    assert too_many.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model="gpt-9", prompt="Hello")
    assert (unknown.value.code, unknown.value.param) == ("model_not_found", "model")
    assert "`gpt-9` is not served here" in unknown.value.message


def test_chat_completions_is_a_clear_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as chat:
        client.chat.completions.create(
            model="builtin", messages=[{"role": "user", "content": "Hello"}]
        )
    assert "only /v1/completions is" in chat.value.message


def test_a_mid_stream_error_reaches_the_client_as_an_api_error(
    inference_server: StartServer, engine_model: str
) -> None:
    # Each token is held 20 ms (a test-only fault), so 200 tokens outlive the 2 s
    # deadline on any machine while the first ones arrive well inside it.
    slow = inference_server(*ARGS, "--fault-token-latency-ms", "20", model=engine_model, reuse=True)
    with openai.OpenAI(base_url=f"{slow.url}/v1", api_key="unused", max_retries=0) as client:
        stream = client.completions.create(
            model=served(client),
            prompt="Hello",
            max_tokens=200,
            temperature=0,
            stream=True,
            extra_body={"min_tokens": 200},  # no early EOS
        )
        received = []
        with pytest.raises(openai.APIError) as error:
            for chunk in stream:
                received.append(chunk.choices[0].text)
    assert received, "the error came before any token: it should have been a status"
    assert f"deadline of {DEADLINE_S:g}s passed" in error.value.message
    assert error.value.code == "timeout"
