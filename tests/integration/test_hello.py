"""``mlcicd hello``: the first command a new user runs serves, answers and stops cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_hello_answers_one_request_and_stops_the_server(builtin_model_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mlcicd", "hello", "--max-new-tokens", "8"],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("answer: ") for line in lines), done.stdout
    assert "server stopped (exit 0)" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_hello_says_why_when_the_model_cannot_load(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mlcicd", "hello", "--model", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "error:" in done.stdout and "Traceback" not in done.stdout + done.stderr
