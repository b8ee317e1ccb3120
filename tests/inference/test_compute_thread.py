"""Torch compute stays on the engine's worker thread (inference/compute_thread.py).

A thread that computes with torch on CPU keeps an OpenMP pool of helper threads
until it exits, and a second live pool slowed every decode step by 21-26% on the
2-core runner. The check is done in a fresh interpreter, where the thread count
is not disturbed by other tests: once the engine has started and stopped, no
thread may be left behind, which is exactly what a pool started by ``start()`` on
the calling thread would leave. ``load_model`` relies on
:func:`run_in_fresh_thread`, checked the same way: work that does start a pool
(a 512x512 matmul) leaves no thread behind when run through it. (Loading the
built-in model starts no pool at all, so loading it would prove nothing.)
"""

from __future__ import annotations

import json
import threading

import pytest

from inference.compute_thread import run_in_fresh_thread
from tests.support import run_python

_PROBE = r"""
import json, os, sys, time

import torch

def threads() -> int:
    time.sleep(0.3)  # let exiting threads finish exiting
    return len(os.listdir("/proc/self/task"))

from inference.loader import load_model
from inference.torch_engine import TorchEngine

loaded = load_model(sys.argv[1], "cpu", "fp32")
engine = TorchEngine(loaded, max_batch_size=4, batch_window_s=0.0, queue_cap=4)
engine.count_tokens("warm the tokenizer's own thread pool up")
before = threads()
engine.start()
running = threads()
engine.stop()
after = threads()
def matmul() -> None:
    torch.ones(512, 512) @ torch.ones(512, 512)

from inference.compute_thread import run_in_fresh_thread

run_in_fresh_thread(matmul)
fresh = threads()
matmul()  # on this thread: its pool stays, proof that the probe sees one appear
probe = threads()
print(json.dumps(
    {"before": before, "running": running, "after": after, "fresh": fresh, "probe": probe}
))
"""


def test_run_in_fresh_thread_returns_the_result_from_another_thread() -> None:
    caller = threading.get_ident()
    assert run_in_fresh_thread(threading.get_ident) != caller
    assert run_in_fresh_thread(lambda: 41 + 1) == 42


def test_run_in_fresh_thread_reraises_on_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad model reference")

    with pytest.raises(ValueError, match="bad model reference"):
        run_in_fresh_thread(fail)


@pytest.mark.slow
@pytest.mark.usefixtures("builtin_model_dir")
def test_engine_and_fresh_threads_leave_no_thread_pool_behind() -> None:
    done = run_python("-c", _PROBE, "builtin")
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["running"] > counts["before"]  # the worker and its pool
    assert counts["after"] == counts["before"], counts  # all of it left with the worker
    assert counts["fresh"] == counts["after"], counts  # a fresh thread's pool leaves with it
    assert counts["probe"] > counts["after"], counts  # a computing caller would have a pool
