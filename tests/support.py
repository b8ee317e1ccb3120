"""Small helpers every test tier shares: free ports, waiting for HTTP, child processes,
and the tiny random GPT-2 that in-process model tests run on.

Services in tests are real processes on loopback ports; these helpers start
them, wait until they answer, and always stop them (and print their logs when
a test fails to start them), so a fixture never leaks a server.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from pipeline.processes import ManagedProcess, free_port, wait_http
from pipeline.source import REPO_ROOT

__all__ = ["REPO_ROOT", "ServiceProcess", "free_port", "run_python", "tiny_gpt2", "wait_http"]


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


def tiny_gpt2(**overrides: Any) -> Any:
    """A seeded 2-layer, 32-wide random GPT-2 (97 tokens), in eval mode.

    Enough where the shapes and the code path matter, not the weights; transformers
    is imported here so that tiers without a model do not pay for it.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=97, n_layer=2, n_head=2, n_embd=32, n_positions=64, **overrides)
    return GPT2LMHeadModel(config).eval()


class ServiceProcess(ManagedProcess):
    """A child process with its output in a log file, stopped on exit (see ManagedProcess)."""
