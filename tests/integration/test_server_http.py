"""The real ``mlcicd serve`` process with the built-in model, exercised over HTTP.

Every test runs once per engine: the torch engine on the built-in model, and the
CTranslate2 engine on its conversion (the candidate the pipeline's conversion
step makes), since the server's behaviour must not depend on the engine. One
shared server per engine (small queue and batch so that overload is easy to
cause, small body cap) serves every test here except the drain test, which needs
a server of its own because it ends it.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal

import httpx
import pytest

from tests.fixtures.inference_server import InferenceServer, StartServer

pytestmark = pytest.mark.slow

BODY_CAP = 4096
SHARED_ARGS = ("--queue-cap", "1", "--max-batch-size", "1", "--max-body-bytes", str(BODY_CAP))


@pytest.fixture(scope="module")
def server(inference_server: StartServer, engine_model: str) -> InferenceServer:
    return inference_server(*SHARED_ARGS, model=engine_model, reuse=True)


def served_model(server: InferenceServer) -> dict[str, object]:
    card: dict[str, object] = httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]
    return card


def test_the_model_card_names_the_engine(server: InferenceServer, engine_model: str) -> None:
    card = served_model(server)
    assert card["engine"] == ("torch" if engine_model == "builtin" else "ctranslate2")
    if card["engine"] == "ctranslate2":  # the arrangement it measured at start
        assert str(card["arrangement"]).startswith("one call on ")
    else:
        assert card["arrangement"] is None


def metric_value(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


BAD_INPUTS = [
    ("/v1/generate", b'{"prompt": "hi"', 400, "invalid_json", "not valid JSON"),
    ("/v1/generate", b"{}", 422, "validation", "`prompt` is required"),
    ("/v1/generate", b'{"prompt": ""}', 422, "validation", "`prompt` must not be empty"),
    ("/v1/generate", b'{"prompt": 5}', 422, "validation", "`prompt` must be a string"),
    ("/v1/generate", b'{"prompt": "a", "max_new_tokens": "5"}', 422, "validation", "integer"),
    ("/v1/generate", b'{"prompt": "a", "max_new_tokens": 0}', 422, "validation", ">= 1, got 0"),
    ("/v1/generate", b'{"prompt": "a", "max_new_tokens": 100000}', 422, "validation", "<= "),
    ("/v1/generate", b'{"prompt": "a", "temperature": 2.5}', 422, "validation", "<= 2"),
    ("/v1/generate", b'{"prompt": "a", "top_p": 0}', 422, "validation", "`top_p` must be > 0"),
    ("/v1/generate", b'{"prompt": "a", "bogus": 1}', 422, "validation", "unknown field `bogus`"),
    ("/v1/completions", b'{"prompt": "a", "n": 2}', 422, "validation", "`n` must be 1"),
    ("/v1/completions", b'{"prompt": "a", "logprobs": 1}', 422, "validation", "`logprobs`"),
    ("/v1/completions", b'{"prompt": "a", "model": "gpt-9"}', 404, "model_not_found", "gpt-9"),
    ("/v1/generate", b'{"prompt": "\\ud800 abc"}', 422, "validation", "`prompt` must be valid"),
    ("/v1/completions", b'{"prompt": "\\ud800 abc"}', 422, "validation", "lone surrogate"),
    ("/v1/generate", b"[" * 4000, 400, "invalid_json", "nested too deeply"),
    ("/v1/completions", b'[{"a":' * 600, 400, "invalid_json", "nested too deeply"),
]


@pytest.mark.parametrize(("path", "body", "code", "kind", "says"), BAD_INPUTS)
def test_bad_input_gets_json_error_naming_the_problem(
    server: InferenceServer, path: str, body: bytes, code: int, kind: str, says: str
) -> None:
    response = httpx.post(server.url + path, content=body, timeout=10)
    assert response.status_code == code, response.text
    if path == "/v1/generate":
        assert response.json()["type"] == kind
        assert says in response.json()["error"]
    else:  # OpenAI's shape
        assert response.json()["error"]["code"] == kind
        assert says in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("temperature", "top_p"), [(1e-45, 1.0), (5e-324, 1.0), (1.0, 1e-45), (0.7, 5e-324)]
)
def test_extreme_sampling_values_are_answered(
    server: InferenceServer, temperature: float, top_p: float
) -> None:
    body = {"prompt": "Hello", "temperature": temperature, "top_p": top_p, "max_new_tokens": 4}
    response = httpx.post(server.url + "/v1/generate", json=body, timeout=30)
    assert response.status_code == 200, response.text


def test_a_seed_is_honoured_or_refused_naming_it_and_the_document_says_which(
    server: InferenceServer, engine_model: str
) -> None:
    """The torch engine honours a seed; CTranslate2 cannot (inference/ct2_engine.py): 422,
    and its server's OpenAPI document has no `seed`, so a client can tell before asking."""
    body = {"prompt": "Hello", "max_tokens": 4, "temperature": 0.8, "seed": 7}
    response = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
    document = httpx.get(server.url + "/openapi.json", timeout=10).json()
    bodies = [
        document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        for path in ("/v1/generate", "/v1/completions")
    ]
    documented = {"seed" in schema["properties"] for schema in bodies}
    if engine_model == "builtin":
        assert response.status_code == 200, response.text
        assert documented == {True}
        return
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "seed"
    assert "so no seed can be honoured; omit it" in response.json()["error"]["message"]
    assert documented == {False}


def test_prompt_plus_new_tokens_over_context_is_422_naming_both(server: InferenceServer) -> None:
    context = served_model(server)["context_length"]
    body = {"prompt": "The capital of", "max_new_tokens": context}
    response = httpx.post(server.url + "/v1/generate", json=body, timeout=10)
    assert response.status_code == 422, response.text
    message = response.json()["error"]
    assert f"must be <= {context}" in message and f"+ {context} =" in message


def test_body_over_cap_is_413_by_header_and_by_size(server: InferenceServer) -> None:
    big = json.dumps({"prompt": "x" * (BODY_CAP + 10)}).encode()
    response = httpx.post(server.url + "/v1/generate", content=big, timeout=10)
    assert response.status_code == 413
    assert response.json()["type"] == "payload_too_large"

    def chunks():  # no Content-Length: chunked transfer, only the real size can tell
        for start in range(0, len(big), 1024):
            yield big[start : start + 1024]

    response = httpx.post(server.url + "/v1/generate", content=chunks(), timeout=10)
    assert response.status_code == 413
    assert str(BODY_CAP) in response.json()["error"]


def test_generate_completions_and_stream(server: InferenceServer) -> None:
    gen = httpx.post(
        server.url + "/v1/generate", json={"prompt": "The cat", "max_new_tokens": 8}, timeout=30
    )
    assert gen.status_code == 200, gen.text
    body = gen.json()
    assert body["prompt_tokens"] > 0 and 0 < body["generated_tokens"] <= 8
    assert body["finish_reason"] in ("length", "eos", "stop")
    assert 0 <= body["timings"]["ttft_s"] <= body["timings"]["total_s"]

    body = {"model": served_model(server)["id"], "prompt": "The cat", "max_tokens": 6}
    comp = httpx.post(server.url + "/v1/completions", json={**body, "temperature": 0}, timeout=30)
    assert comp.status_code == 200, comp.text
    choice = comp.json()["choices"][0]
    assert comp.json()["object"] == "text_completion"
    assert choice["finish_reason"] in ("length", "stop")

    payload = {"prompt": "The cat", "max_tokens": 6, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=payload, timeout=30) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in stream.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    assert streamed == choice["text"]  # greedy: the same text either way
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]


async def _burst(url: str, count: int, max_new_tokens: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        body = {"prompt": "The capital of", "max_new_tokens": max_new_tokens}
        return list(await asyncio.gather(*(client.post(url, json=body) for _ in range(count))))


def test_overload_answers_429_with_retry_after(server: InferenceServer) -> None:
    before = httpx.get(server.url + "/metrics", timeout=10).text
    responses = asyncio.run(_burst(server.url + "/v1/generate", 24, 64))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    rejected = [r for r in responses if r.status_code == 429]
    assert rejected, f"no 429 in a burst of 24 against a queue of 1: {codes}"
    assert all(r.headers.get("retry-after") for r in rejected)
    assert rejected[0].json()["type"] == "overloaded"
    after = httpx.get(server.url + "/metrics", timeout=10).text
    label = 'code="429",status="error"'
    counted = metric_value(after, "inference_requests_total", label) - metric_value(
        before, "inference_requests_total", label
    )
    assert counted == len(rejected)


def test_sigterm_drains_in_flight_requests_then_exits_0(
    inference_server: StartServer, engine_model: str
) -> None:
    # Injected latency keeps the burst in flight long enough to look at the drain.
    srv = inference_server(
        "--fault-latency-ms", "1500", "--drain-timeout-s", "20", "--request-deadline-s", "20",
        model=engine_model,
    )  # fmt: skip

    async def scenario() -> tuple[list[httpx.Response], int, int, int]:
        async with httpx.AsyncClient(timeout=60) as client:
            body = {"prompt": "The capital of", "max_new_tokens": 16}
            burst = [
                asyncio.create_task(client.post(srv.url + "/v1/generate", json=body))
                for _ in range(6)
            ]
            for _ in range(100):  # until the server holds all six
                text = (await client.get(srv.url + "/metrics")).text
                if metric_value(text, "inference_requests_in_flight") == 6:
                    break
                await asyncio.sleep(0.02)
            srv.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            ready = (await client.get(srv.url + "/ready")).status_code
            health = (await client.get(srv.url + "/health")).status_code
            late = await client.post(srv.url + "/v1/generate", json=body)
            return list(await asyncio.gather(*burst)), ready, health, late.status_code

    responses, ready, health, late = asyncio.run(scenario())
    assert (ready, health, late) == (503, 200, 503)
    assert [r.status_code for r in responses] == [200] * 6
    assert all(r.json()["generated_tokens"] > 0 for r in responses)
    assert srv.process.wait(timeout=30) == 0, srv.log_tail()
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/health", timeout=2)
