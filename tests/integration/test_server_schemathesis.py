"""Schemathesis against the real server: no 5xx, and every answer matches the OpenAPI document.

Every check schemathesis has is enabled (``--checks all``): server errors,
status codes, content types, headers, response schemas (SSE events
included), rejection of invalid data, acceptance of valid data, and the
method checks. The run is bounded in examples per operation and in time, and
continues past a failure so that one run reports them all.

The server caps new tokens at 32 so that schema-valid requests stay within
the builtin model's context of 256 tokens (prompt tokens + new tokens <=
context is the one limit no JSON Schema can state; it answers 422).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.inference_server import StartServer

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 20
MAX_TIME_S = 40


def _schemathesis() -> str:
    candidate = Path(sys.executable).parent / "schemathesis"
    return str(candidate) if candidate.exists() else "schemathesis"


def test_a_bounded_fuzz_finds_no_5xx_and_no_schema_mismatch(
    inference_server: StartServer, tmp_path: Path, engine_model: str
) -> None:
    server = inference_server("--max-new-tokens-cap", "32", model=engine_model)
    argv = [
        _schemathesis(),
        "--no-color",
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--max-time",
        str(MAX_TIME_S),
        "--continue-on-failure",
        "--request-timeout",
        "20",
        "--generation-database",
        "none",
        "--seed",
        "12",
    ]
    try:
        run = subprocess.run(
            argv, cwd=tmp_path, capture_output=True, text=True, timeout=MAX_TIME_S + 60
        )
    finally:
        server.stop()
    report = run.stdout[-8000:] + run.stderr[-2000:]
    print(report[-1500:])
    assert run.returncode == 0, report
    summary = report.split("SUMMARY")[-1]
    assert "Tested: 6" in summary, report  # every operation was fuzzed
