"""`mlcicd run` stopped by SIGTERM, SIGINT or SIGKILL leaves nothing running.

Each test starts a real `mlcicd run` on a fresh state directory, waits for a
given stage by polling the run's log directory, sends the signal, and then looks
with psutil for any process whose command line or environment names that state
directory: there must be none. Short of SIGKILL, the run must also have written
its summary, with the step in progress recorded as ``interrupted``.

To bound the cost, the first test runs a one-stage copy of the definition whose
command starts a grandchild in a session of its own (which only the reaper can
find); the others run the real stages with the code-quality stage skipped, and the
canary test with the model tests skipped too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipeline.source import REPO_ROOT

pytestmark = pytest.mark.slow


def _start(state: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mlcicd", "run", "--state-dir", str(state), *args],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait_for_log(state: Path, pattern: str, proc: subprocess.Popen[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any((state / "runs").glob(f"*/logs/{pattern}")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {pattern}: {proc.stdout.read()}")  # type: ignore[union-attr]
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"no log {pattern} within {timeout_s}s")


def _leftovers(state: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter():
        try:
            text = " ".join(proc.cmdline()) + " " + " ".join(proc.environ().values())
        except psutil.Error:
            continue
        if str(state) in text and proc.status() != psutil.STATUS_ZOMBIE:
            found.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
    return found


def _no_leftovers(state: Path, within_s: float = 45.0) -> None:
    deadline = time.monotonic() + within_s
    while _leftovers(state) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert _leftovers(state) == []


def _report(state: Path) -> dict[str, Any]:
    (run,) = (state / "runs").iterdir()
    assert (run / "summary.md").exists()
    data: dict[str, Any] = json.loads((run / "run.json").read_text())
    return data


SLEEPY = '{ name = "Sleepy %d", run = "setsid sleep 300 & sleep 300" }'


@pytest.mark.parametrize("side_by_side", [False, True], ids=["in-order", "side-by-side"])
def test_sigterm_during_a_command_stops_its_whole_tree(tmp_path: Path, side_by_side: bool) -> None:
    """Side by side (``independent_commands``), both running commands are stopped and
    both steps are recorded interrupted: the signal reaches the main thread only."""
    text = (REPO_ROOT / "pipeline.toml").read_text()
    head = text[: text.index("[[stages]]")]
    definition = tmp_path / "pipeline.toml"
    commands = [SLEEPY % n for n in ((1, 2) if side_by_side else (1,))]
    definition.write_text(
        head + '[[stages]]\nid = "code-quality"\ntitle = "Code quality"\nrunner = "cpu"\n'
        f"independent_commands = {str(side_by_side).lower()}\n"
        f"commands = [{', '.join(commands)}]\n"
    )
    state = tmp_path / "state"
    proc = _start(state, "--definition", str(definition))
    _wait_for_log(state, f"*sleepy-{len(commands)}.log", proc, timeout_s=60)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    report = _report(state)
    assert report["outcome"] == "interrupted (SIGTERM)"
    assert [s["status"] for s in report["steps"]] == ["interrupted"] * len(commands)
    _no_leftovers(state)


def test_sigkill_while_services_run_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = _start(state, "--skip", "code-quality", "--skip-commands")
    _wait_for_log(state, "*quality-gate*.log", proc, timeout_s=180)
    time.sleep(2.0)  # the gate has loaded its model
    assert _leftovers(state), "the run should have started services"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    _no_leftovers(state)


def test_sigint_during_the_canary_is_interrupted_not_passed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # The gates are not what this test is about (their own tests run them), so the run
    # goes straight to the release stages.
    proc = _start(state, "--skip", "code-quality", "--skip", "model-tests", "--skip-commands")
    _wait_for_log(state, "*deploy-production-step-1*.log", proc, timeout_s=600)
    os.kill(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=90)
    assert proc.returncode == 130, output
    report = _report(state)
    assert report["outcome"] == "interrupted (SIGINT)"
    step = report["steps"][-1]
    assert step["name"].startswith("Step 1") and step["status"] == "interrupted", output
    assert "ok Step 1" not in output
    _no_leftovers(state)
