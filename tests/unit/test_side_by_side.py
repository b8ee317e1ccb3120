"""Independent steps side by side: they overlap, a failure waits for its siblings,
and an interruption stops every running command's process group."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pipeline.local.side_by_side import LiveGroups, run_side_by_side
from pipeline.processes import run_to_log


def test_tasks_overlap() -> None:
    both = threading.Barrier(2, timeout=10)  # only passes if both run at once
    run_side_by_side([both.wait, both.wait], LiveGroups(), workers=2)


def test_a_failure_is_raised_after_every_sibling_ended() -> None:
    ended: list[str] = []

    def fails() -> None:
        raise RuntimeError("lint failed")

    def slow() -> None:
        time.sleep(0.3)
        ended.append("slow")

    with pytest.raises(RuntimeError, match="lint failed"):
        run_side_by_side([fails, slow], LiveGroups(), workers=2)
    assert ended == ["slow"]


def test_one_worker_runs_in_order() -> None:
    order: list[int] = []
    run_side_by_side([lambda: order.append(1), lambda: order.append(2)], LiveGroups(), workers=1)
    assert order == [1, 2]


def test_an_interrupt_stops_every_running_command(tmp_path: Path) -> None:
    """Ctrl-C reaches the main thread; both sleeping commands (and a grandchild in its
    own session would be the reaper's) are stopped, and each worker ends interrupted."""
    live = LiveGroups()
    outcomes: dict[str, str] = {}

    def command(name: str) -> None:
        try:
            run_to_log(["sleep", "61.7"], tmp_path / f"{name}.log", env={}, cwd=tmp_path, live=live)
            live.check()
            outcomes[name] = "ended"
        except KeyboardInterrupt:
            outcomes[name] = "interrupted"
            raise

    main = threading.get_ident()
    # Ctrl-C as a terminal delivers it, whatever SIGINT disposition this worker inherited.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.0, lambda: signal.pthread_kill(main, signal.SIGINT))
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_side_by_side([lambda: command("a"), lambda: command("b")], live, workers=2)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 20
    assert outcomes == {"a": "interrupted", "b": "interrupted"}
    leftover = subprocess.run(["pgrep", "-f", "^sleep 61.7$"], capture_output=True, check=False)
    assert leftover.stdout == b""
