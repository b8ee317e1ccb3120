"""The benchmark's RSS sampler, over real processes (no service involved).

What matters: it finds memory anywhere in the server's tree, children that start
after the cell began included, and it does not list every process on the machine
at each sample (that listing slowed the server it measures).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from pipeline.bench import tree_sampler
from pipeline.bench.tree_sampler import TreeSampler

MIB = 1 << 20
# A parent that, after a pause, starts a child holding 300 MiB, then waits.
PARENT = """
import subprocess, sys, time
time.sleep(0.3)
child = subprocess.Popen([sys.executable, "-c",
    "import time; block = bytearray(300 << 20); block[::4096] = b'x' * len(block[::4096]); "
    "time.sleep(30)"])
child.wait()
"""


@pytest.fixture()
def parent() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", PARENT])
    yield proc
    for child in psutil.Process(proc.pid).children(recursive=True):
        child.kill()
    proc.kill()
    proc.wait()


def test_a_child_started_during_the_cell_counts_in_the_peak(
    parent: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tree_sampler, "TREE_REFRESH_S", 0.2)
    sampler = TreeSampler(parent.pid, interval_s=0.02)
    sampler.start()
    sampler.begin_cell()
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            time.sleep(0.2)
            with sampler._lock:  # the background thread's own peak, not end_cell's
                if sampler._peak > 300 * MIB:
                    break
        peak, foreign = sampler.end_cell()
    finally:
        sampler.stop()
    assert peak > 300 * MIB, f"peak {peak / MIB:.0f} MiB missed the child's 300 MiB"
    assert foreign >= 0.0


def test_samples_between_listings_do_not_list_the_processes_again(
    parent: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    listings = 0
    real_children = psutil.Process.children

    def counted(self: psutil.Process, recursive: bool = False) -> list[psutil.Process]:
        nonlocal listings
        listings += 1
        return real_children(self, recursive=recursive)

    monkeypatch.setattr(psutil.Process, "children", counted)
    sampler = TreeSampler(parent.pid, interval_s=0.01)
    sampler.start()
    sampler.begin_cell()
    time.sleep(0.5)  # about 50 samples
    sampler.stop()
    # One listing at begin_cell, at most one more per TREE_REFRESH_S (1 s).
    assert listings <= 2, f"{listings} listings of the process tree for about 50 samples"
