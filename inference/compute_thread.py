"""Keep torch's CPU thread pools from slowing each other down.

Why this exists: torch on CPU runs its kernels through OpenMP (libgomp). Every
thread that starts a parallel region gets its own pool of helper threads, kept
until that thread exits. Once the helpers of all pools together outnumber the
CPUs, libgomp stops letting idle helpers spin between parallel regions (its
"throttled" spin count) and puts them to sleep instead, so each parallel op of
a decode step (GPT-2-small's 49 linear layers alone are 49) pays a wake-up.
Measured on the project's 2-core runner, GPT-2-small, batch-16 decode step on the
engine's worker thread: 48-49 ms when another live thread had computed before
(it had warmed the engine up, and kept its pool), 38-40 ms when no other thread
held a pool; at concurrency 16 the engine served 16-20% fewer tokens/s with the
second pool (``python -m pipeline.bench.probes``, docs/bench/probes*.txt).

The rule that follows, and what enforces it:

* the engine's worker thread is the only long-lived thread that computes with
  torch: it packs the weights, warms up and decodes (inference/torch_engine.py);
* anything else that may touch torch on the server's way up (loading the model:
  the built-in and GPT-2-small loads start no pool, but a dtype cast or weight
  conversion of another model may) runs in a short-lived thread through
  :func:`run_in_fresh_thread`, whose pool leaves with it.

Left out: pinning threads to cores (the scheduler already keeps two busy threads
on two cores; pinning would fight the server's event loop for a core) and
setting ``OMP_WAIT_POLICY``: with one pool, ACTIVE gained nothing measurable
(and keeps idle helpers spinning) and PASSIVE made the step 28-36% slower.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_in_fresh_thread(fn: Callable[[], T], name: str = "torch-setup") -> T:
    """``fn()`` on a new thread that ends when it returns; its result or its exception."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(fn())
        except BaseException as error:  # re-raised on the calling thread below
            failure.append(error)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
