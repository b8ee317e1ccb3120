"""The benchmark's quiet check: load outside it, measured, not its own children's work.

Real processes: a child the span waits for is the benchmark's own CPU; a busy
process it does not own is foreign load.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.bench.host_load import ChildSpan, foreign_cores

BUSY = "import time\nend = time.time() + {s}\nwhile time.time() < end: pass"


def test_foreign_cores_is_busy_less_own_per_second() -> None:
    assert foreign_cores(2.0, busy_s=3.0, own_s=1.0) == pytest.approx(1.0)
    assert foreign_cores(1.0, busy_s=0.5, own_s=0.6) == 0.0  # clock skew is not negative load
    assert foreign_cores(0.0, busy_s=0.0, own_s=0.0) == 0.0


# Serial: a test running beside it on another worker is foreign load to it.
@pytest.mark.serial
@pytest.mark.slow
def test_a_waited_child_is_own_work_and_another_busy_process_is_foreign() -> None:
    span = ChildSpan()
    subprocess.run([sys.executable, "-c", BUSY.format(s=1.0)], check=True)
    own_only = span.cores()
    stranger = subprocess.Popen([sys.executable, "-c", BUSY.format(s=3.0)])
    try:
        span = ChildSpan()
        subprocess.run([sys.executable, "-c", "import time; time.sleep(1.5)"], check=True)
        with_stranger = span.cores()
    finally:
        stranger.wait()
    assert own_only < 0.5, own_only
    assert with_stranger > 0.6, with_stranger
