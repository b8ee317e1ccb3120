"""Smoke tests for a deployed endpoint: the staging stage runs these against the server it
just deployed (``MLCICD_ENDPOINT``); in the ordinary suite they run against a real server
started by the ``inference_server`` fixture, so they can never rot unexercised.
"""

from __future__ import annotations

import os

import httpx
import pytest

from tests.fixtures.inference_server import StartServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def endpoint(inference_server: StartServer) -> str:
    deployed = os.environ.get("MLCICD_ENDPOINT", "").strip()
    return deployed.rstrip("/") if deployed else inference_server(reuse=True).url


def test_health_and_ready(endpoint: str) -> None:
    assert httpx.get(f"{endpoint}/health", timeout=10).status_code == 200
    assert httpx.get(f"{endpoint}/ready", timeout=10).status_code == 200


def test_models_lists_the_served_model(endpoint: str) -> None:
    body = httpx.get(f"{endpoint}/v1/models", timeout=10).json()
    assert body["data"] and body["data"][0]["id"]


def test_generate_answers_a_factual_question(endpoint: str) -> None:
    response = httpx.post(
        f"{endpoint}/v1/generate",
        json={"prompt": "Q: What is the capital of France?\nA:", "max_new_tokens": 16},
        timeout=30,
    )
    assert response.status_code == 200
    body = response.json()
    assert "paris" in body["text"].lower()
    assert body["generated_tokens"] > 0 and body["prompt_tokens"] > 0


def test_completions_is_openai_shaped(endpoint: str) -> None:
    response = httpx.post(
        f"{endpoint}/v1/completions",
        json={"prompt": "Hello, my name is", "max_tokens": 16},
        timeout=30,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "text_completion"
    assert len(body["choices"][0]["text"]) > 0


def test_bad_input_is_a_json_4xx(endpoint: str) -> None:
    response = httpx.post(f"{endpoint}/v1/generate", json={"prompt": ""}, timeout=10)
    assert 400 <= response.status_code < 500
    assert response.json()["type"]


def test_metrics_expose_the_canary_metric_names(endpoint: str) -> None:
    text = httpx.get(f"{endpoint}/metrics", timeout=10).text
    for name in (
        "inference_requests_total",
        "inference_request_duration_seconds_bucket",
        "inference_time_to_first_token_seconds_bucket",
    ):
        assert name in text
