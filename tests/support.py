"""Small helpers every test tier shares: free ports, waiting for HTTP, child processes.

Services in tests are real processes on loopback ports; these helpers start
them, wait until they answer, and always stop them (and print their logs when
a test fails to start them), so a fixture never leaks a server.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from pipeline.local_services import ManagedProcess, free_port

__all__ = ["REPO_ROOT", "ServiceProcess", "free_port", "wait_http"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def wait_http(
    url: str,
    timeout_s: float = 60.0,
    proc: subprocess.Popen[bytes] | None = None,
    expect_status: int = 200,
) -> None:
    """Poll ``url`` until it answers ``expect_status``; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout_s
    last: str = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == expect_status:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer {expect_status} within {timeout_s}s (last: {last})")


class ServiceProcess(ManagedProcess):
    """A child process with its output in a log file, stopped on exit (see ManagedProcess)."""
