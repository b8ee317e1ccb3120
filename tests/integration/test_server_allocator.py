"""The server runs on jemalloc where installed: re-executed in place, same PID, said in /v1/models.

Real processes: the server is started the one way the pipeline starts it
(``python -m inference.serve_cli``), so the re-exec under test is the one the
image and ``mlcicd run`` get. ``scripts/setup.sh`` installs ``libjemalloc2``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from inference.allocator import jemalloc_library
from tests.fixtures.inference_server import StartServer

pytestmark = pytest.mark.slow


def _card(url: str) -> dict[str, object]:
    card: dict[str, object] = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]
    return card


def test_auto_runs_the_same_pid_on_jemalloc_and_says_so(inference_server: StartServer) -> None:
    assert jemalloc_library() is not None, "scripts/setup.sh installs libjemalloc2"
    server = inference_server("--max-batch-size", "2")
    try:
        card = _card(server.url)
        assert card["allocator"] == "jemalloc"
        # The engine's other start-up choice shows beside it (inference/gpt2_decode.py).
        assert card["decode_step"] == "gpt2"
        # The PID the caller started is the one serving, now with jemalloc mapped.
        assert "libjemalloc" in Path(f"/proc/{server.process.pid}/maps").read_text()
        log = server.log_tail(200)
        assert "allocator=jemalloc (asked auto)" in log
        # The switch comes before the model is loaded: the imports and the load run once.
        assert log.count("loading model=") == 1, log
        assert "decode step: gpt2 (asked auto)" in log
    finally:
        assert server.stop() == 0


def test_system_keeps_glibc(inference_server: StartServer) -> None:
    server = inference_server("--allocator", "system", "--max-batch-size", "2")
    try:
        assert _card(server.url)["allocator"] == "glibc"
        assert "libjemalloc" not in Path(f"/proc/{server.process.pid}/maps").read_text()
    finally:
        assert server.stop() == 0
