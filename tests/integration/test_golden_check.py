"""``mlcicd canary golden`` against a real server: the revision first, then the answers."""

from __future__ import annotations

import pytest

from inference.builtin_model import ensure_builtin_model
from inference.loader import directory_content_hash
from pipeline.canary.golden import golden_cases, run_golden
from pipeline.definition import load_definition
from tests.fixtures.inference_server import StartServer

pytestmark = pytest.mark.slow


def test_a_server_with_another_revision_fails_and_every_case_is_judged(
    inference_server: StartServer,
) -> None:
    definition = load_definition("builtin", "prod")
    server = inference_server(reuse=True)
    served = directory_content_hash(ensure_builtin_model("default"))
    wrong = run_golden(definition, server.url, "0" * 64)
    assert wrong.revision == served
    assert wrong.failures[0] == f"serves revision {served}, expected {'0' * 64}"
    assert wrong.cases == len(golden_cases(definition))
    right = run_golden(definition, server.url, served)
    assert not any(f.startswith("serves revision") for f in right.failures)
    # The built-in model knows the smoke suite's facts (the staging smoke tests agree).
    assert "capital-france" not in " ".join(f for f in right.failures if "TTFT" not in f)
