"""Peak RSS of a server's process tree, and the foreign CPU of a cell, sampled lightly.

Why light: the sampler runs in the benchmark's own process, beside the load
generator, while the server it measures has every core busy. Listing a
process's descendants (``psutil.Process.children(recursive=True)``) reads every
process's ``/proc/PID/stat``; at every sample, that CPU is taken from the cores
the measured server computes on, a cost the peer, timed without a sampler, does
not carry. So the tree is listed when a cell begins and again at most every
:data:`TREE_REFRESH_S`; each sample in between reads only the known processes'
``statm``, about a hundredth of the cost (docs/performance.md, "3 Dec").

Foreign CPU is the machine's busy CPU time (``psutil.cpu_times``) less what the
server tree and this process used over the same interval, in cores
(pipeline/bench/host_load.py).

Left out: processes that start and exit between two listings (a server that
forks short-lived helpers would have their memory missed; ours forks none).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import psutil

from pipeline.bench.host_load import busy_cpu_s, foreign_cores

# How often the background thread lists the tree again, in seconds.
TREE_REFRESH_S = 1.0


class TreeSampler:
    """Samples a process tree's RSS on a background thread; CPU marks per cell."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self._root = psutil.Process(pid)
        self._self = psutil.Process(os.getpid())
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._cpu_mark = (0.0, 0.0, 0.0)
        self._known: list[psutil.Process] = []
        self._listed_at = -TREE_REFRESH_S

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _known_tree(self, now: float) -> list[psutil.Process]:
        if now - self._listed_at >= TREE_REFRESH_S:
            self._known, self._listed_at = self._tree(), now
        return self._known

    @staticmethod
    def _rss_of(processes: list[psutil.Process]) -> int:
        total = 0
        for proc in processes:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += int(proc.memory_info().rss)
        return total

    def _cpu_s_of(self, tree: list[psutil.Process]) -> float:
        """CPU seconds ``tree`` and this process have used."""
        total = 0.0
        for proc in [*tree, self._self]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            with self._lock:
                rss = self._rss_of(self._known_tree(time.monotonic()))
                self._peak = max(self._peak, rss)

    def start(self) -> None:
        self._thread.start()

    def begin_cell(self) -> None:
        """List the tree afresh, reset the peak and mark the CPU times."""
        with self._lock:
            self._known, self._listed_at = self._tree(), time.monotonic()
            self._peak = self._rss_of(self._known)
            tree = self._known
        self._cpu_mark = (time.monotonic(), busy_cpu_s(), self._cpu_s_of(tree))

    def end_cell(self) -> tuple[int, float]:
        """(peak RSS in bytes, foreign CPU in cores) since :meth:`begin_cell`."""
        started, busy0, own0 = self._cpu_mark
        elapsed = max(time.monotonic() - started, 1e-6)
        tree = self._tree()
        foreign = foreign_cores(elapsed, busy_cpu_s() - busy0, self._cpu_s_of(tree) - own0)
        with self._lock:
            peak = max(self._peak, self._rss_of(tree))
        return peak, foreign

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
