"""Independent steps of one stage run side by side, up to the machine's cores.

Why a module of its own: the runner's steps are otherwise strictly sequential, and
running several at once changes how an interruption is handled. Python delivers
Ctrl-C, SIGTERM and SIGHUP (all made ``KeyboardInterrupt`` by
:mod:`pipeline.local.lifecycle`) to the main thread only, while the commands wait
in worker threads. So the main thread, on an interruption, sets :attr:`interrupted`
and stops every running command's process group (:class:`LiveGroups`); each
worker then sees its command end, raises ``KeyboardInterrupt`` in its own step, and
that step is recorded ``interrupted``, never ``passed`` or ``failed``.

Which steps are independent is the definition's statement
(``independent_commands`` on a stage), not guessed here. The generated workflow
runs them as sequential steps of one job: a job's steps cannot run at once, and
the result is the same. A failure does not cancel its siblings: each is
reported, then the stage fails with the first failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait

from pipeline.processes import stop_group


class LiveGroups:
    """The process groups of commands now running, so that one thread can stop them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self.interrupted = threading.Event()

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.add(proc)
        if self.interrupted.is_set():  # started just as the run was interrupted
            stop_group(proc, signal.SIGTERM, 10.0)

    def discard(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop_all(self) -> None:
        self.interrupted.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            stop_group(proc, signal.SIGTERM, 10.0)

    def check(self) -> None:
        """In a worker, after its command ended: an interruption is the step's outcome."""
        if self.interrupted.is_set():
            raise KeyboardInterrupt


def workers_for(tasks: int) -> int:
    return max(1, min(tasks, os.cpu_count() or 1))


def run_side_by_side(
    tasks: Sequence[Callable[[], None]], live: LiveGroups, workers: int | None = None
) -> None:
    """Run ``tasks`` at once (up to the cores); re-raise the first failure once all end."""
    workers = workers or workers_for(len(tasks))
    if workers == 1:
        for task in tasks:
            task()
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="step") as pool:
        futures: list[Future[None]] = [pool.submit(task) for task in tasks]
        try:
            wait(futures)
        except KeyboardInterrupt:
            live.stop_all()
            wait(futures)
            raise
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error
