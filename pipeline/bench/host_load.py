"""CPU the rest of the machine used while the benchmark measured: its quiet check.

Why: on a shared host a measurement is slowed by other processes and by the
hypervisor running someone else on our cores (steal time). The machine's busy
CPU, steal included, minus what the benchmark's own processes used, per second
of the measurement, is the load the measurement shared the cores with. The
report calls a run noisy when any server cell or peer process saw more than
``targets.NOISY_FOREIGN_CORES``: a peer slowed that way flatters every ratio
against it.

Left out: which process or guest the load came from.
"""

from __future__ import annotations

import resource
import time

import psutil

# guest time is already inside user time, so it is not added again.
_BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")


def busy_cpu_s() -> float:
    """Seconds of CPU the whole machine has been busy, steal included, since boot."""
    times = psutil.cpu_times()
    return float(sum(getattr(times, name, 0.0) for name in _BUSY_FIELDS))


def foreign_cores(elapsed_s: float, busy_s: float, own_s: float) -> float:
    """Cores busy outside the benchmark: busy CPU less its own, per second elapsed."""
    return max(0.0, (busy_s - own_s) / max(elapsed_s, 1e-6))


def _self_and_children_cpu_s() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class ChildSpan:
    """Foreign load while this process waits on children it runs to completion.

    Own CPU is this process's and its waited-for children's (``getrusage``), so
    it counts only children that have exited by :meth:`cores`.
    """

    def __init__(self) -> None:
        self._started, self._busy, self._own = (
            time.monotonic(), busy_cpu_s(), _self_and_children_cpu_s()
        )  # fmt: skip

    def cores(self) -> float:
        return foreign_cores(
            time.monotonic() - self._started,
            busy_cpu_s() - self._busy,
            _self_and_children_cpu_s() - self._own,
        )
