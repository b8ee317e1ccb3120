"""Small helpers every test tier shares: free ports, waiting for HTTP, child processes.

Services in tests are real processes on loopback ports; these helpers start
them, wait until they answer, and always stop them (and print their logs when
a test fails to start them), so a fixture never leaks a server.
"""

from __future__ import annotations

import subprocess
import sys

from pipeline.processes import ManagedProcess, free_port, wait_http
from pipeline.source import REPO_ROOT

__all__ = ["REPO_ROOT", "ServiceProcess", "free_port", "run_python", "wait_http"]


def run_python(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a fresh interpreter at the repository root, output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


class ServiceProcess(ManagedProcess):
    """A child process with its output in a log file, stopped on exit (see ManagedProcess)."""
