"""How a local run ends, whatever ends it: signals, and a reaper for what it started.

Why: ``kill -TERM`` on ``mlcicd run`` used to end the runner at once, with no
outcome and no summary, and left MLflow (with its uvicorn), the registry and the
running pytest behind. Two mechanisms close that:

- :func:`signals_interrupt` makes SIGTERM and SIGHUP behave as Ctrl-C: each raises
  :class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread, so the step
  in progress is recorded as ``interrupted``, every service is stopped in reverse
  order and the summary is written. A second signal while the run cleans up is
  reported and ignored, so cleanup is never cut short halfway.
- :class:`Reaper` covers what no handler can: a SIGKILL of the runner, or a
  grandchild that left its parent's process group. Every process the run starts
  inherits ``MLCICD_RUN_MARKER`` in its environment; a small watcher process, in
  its own session, holds the read end of a pipe whose write end only the runner
  holds. When the runner ends, however it ends, the pipe closes, and the watcher
  stops (SIGTERM, then SIGKILL) every process still carrying the marker.

Left out: processes that scrub their environment (none of ours does), and other
users' processes (``/proc/<pid>/environ`` of those cannot be read; a run starts none).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import FrameType

MARKER = "MLCICD_RUN_MARKER"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop by a signal; the message names it."""


class SignalGuard:
    """The signals a run received; while armed, the first one raises :class:`Interrupted`."""

    def __init__(self, notify: Callable[[str], None]) -> None:
        self.notify = notify
        self.received: list[str] = []
        self.armed = True

    def disarm(self) -> None:
        """The run is cleaning up: from now on a signal is noted, never raised."""
        self.armed = False

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        if self.armed:
            self.armed = False
            raise Interrupted(name)
        self.notify(f"{name} received: already stopping, cleaning up first")


@contextlib.contextmanager
def signals_interrupt(notify: Callable[[str], None]) -> Iterator[SignalGuard]:
    """SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` once; later ones are only noted."""
    guard = SignalGuard(notify)
    previous = {sig: signal.signal(sig, guard.handle) for sig in STOP_SIGNALS}
    try:
        yield guard
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Reaper:
    """A watcher that stops every process marked with ``marker`` once this process ends."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        read_end, self._write_end = os.pipe()  # both non-inheritable: children never hold them
        env = {k: v for k, v in os.environ.items() if k != MARKER}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.local.lifecycle", marker, str(os.getpid())],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            pass_fds=(),
        )
        os.close(read_end)
        os.environ[MARKER] = marker

    def close(self, timeout_s: float = 60.0) -> None:
        """The run is over: let the watcher sweep stragglers, and wait for it."""
        os.environ.pop(MARKER, None)
        with contextlib.suppress(OSError):
            os.close(self._write_end)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout_s)


def marked(marker: str, exclude: set[int]) -> list[object]:
    """Processes (psutil) whose environment carries ``MARKER=marker``."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        if proc.pid in exclude:
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(MARKER) == marker:
                found.append(proc)
    return found


def reap(marker: str, exclude: set[int], grace_s: float = 10.0) -> int:
    """Stop every marked process: SIGTERM, then SIGKILL; returns how many were found."""
    import psutil

    total = 0
    for _ in range(3):  # a dying parent may still fork once; look again
        procs = marked(marker, exclude)
        if not procs:
            break
        total += len(procs)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()  # type: ignore[attr-defined]
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
    return total


def main(argv: list[str]) -> int:
    marker, runner_pid = argv[0], int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns when the runner closed the pipe or died
    reap(marker, {os.getpid(), runner_pid})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
