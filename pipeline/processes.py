"""One way to start a child process, wait for it to answer HTTP, and stop it.

Why one place: the local runner, the latency gate's servers, the benchmark, the
``hello`` command and the test fixtures all start servers. Each child runs in its
own process group with its output in a log file; ``stop`` ends the whole group
(SIGTERM, then SIGKILL), so no grandchild (uvicorn under mlflow, say) outlives it.

Left out: restarts and health supervision; a child that dies is reported, not revived.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import httpx


class ServiceError(RuntimeError):
    """A service did not start or did not answer; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str,
    timeout_s: float = 60.0,
    proc: subprocess.Popen[bytes] | None = None,
    expect_status: int = 200,
) -> None:
    """Poll ``url`` until it answers ``expect_status``.

    Raises ServiceError at once if ``proc`` exits first, TimeoutError when time runs out.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with {proc.returncode} before {url} answered")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == expect_status:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise TimeoutError(
        f"{url} did not answer {expect_status} within {timeout_s:.0f}s (last: {last})"
    )


def log_file_name(name: str) -> str:
    """``name`` as one file name in the log folder: a model given as a path (the
    benchmark's int8 candidate, say) must not become folders under it."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.") + ".log"


class ManagedProcess:
    """A child process in its own session, with output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / log_file_name(name)
        self._log = self.log_path.open("ab")
        merged = dict(os.environ)
        if env:
            merged.update(env)
        try:
            self.proc = subprocess.Popen(
                list(argv),
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=merged,
                cwd=str(cwd) if cwd else None,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            self._log.close()
            raise ServiceError(f"{name}: cannot start {argv[0]!r}: not installed") from exc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_http(self, url: str, timeout_s: float = 60.0, expect_status: int = 200) -> None:
        try:
            wait_http(url, timeout_s, self.proc, expect_status)
        except ServiceError as exc:
            raise ServiceError(
                f"{self.name}: {exc}; log {self.log_path}:\n{self.log_tail()}"
            ) from exc
        except TimeoutError as exc:
            raise ServiceError(f"{self.name}: {exc}; log {self.log_path}") from exc

    def send_signal(self, sig: int) -> None:
        if self.running():
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        """Signal the child's whole process group, then SIGKILL it if it lingers."""
        code = stop_group(self.proc, sig, timeout_s)
        self._log.close()
        return code


class LiveSet(Protocol):
    """Where a running command is registered while it runs."""

    def add(self, proc: subprocess.Popen[bytes]) -> None: ...
    def discard(self, proc: subprocess.Popen[bytes]) -> None: ...


def run_to_log(
    argv: Sequence[str] | str,
    log_path: Path,
    *,
    env: Mapping[str, str],
    cwd: Path,
    stop_timeout_s: float = 10.0,
    live: LiveSet | None = None,
) -> int:
    """Run a command to its end in its own session, its output in ``log_path``.

    Why its own session: a SIGTERM or Ctrl-C aimed at the caller must stop the
    command's whole tree (pytest and the servers it starts), not just its leader,
    and the caller decides when: any exception while waiting (KeyboardInterrupt
    included) stops the group, SIGTERM then SIGKILL, before it propagates.
    ``live`` holds the process while it runs, so that another thread can stop it
    (:mod:`pipeline.local.side_by_side`).
    """
    with log_path.open("wb") as handle:
        proc = subprocess.Popen(
            argv if isinstance(argv, str) else list(argv),
            shell=isinstance(argv, str),
            cwd=cwd,
            env=dict(env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if live is not None:
            live.add(proc)
        try:
            proc.wait()
        except BaseException:
            stop_group(proc, signal.SIGTERM, stop_timeout_s)
            raise
        finally:
            if live is not None:
                live.discard(proc)
        return stop_group(proc, signal.SIGTERM, stop_timeout_s)


def stop_group(proc: subprocess.Popen[bytes], sig: int, timeout_s: float) -> int:
    """Stop a session leader's group: ``sig``, then SIGKILL if it lingers.

    Grandchildren that outlived the leader (a server's workers) are killed too.
    """
    if proc.poll() is None:
        _signal_group(proc.pid, sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    _signal_group(proc.pid, signal.SIGKILL)
    return int(proc.returncode)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
