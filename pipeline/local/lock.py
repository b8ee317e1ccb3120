"""One ``mlcicd run`` per state directory, at a time.

Why: two runs on the same state would share one MLflow sqlite file and one
registry storage, race to promote, and each would stop services the other
uses. The first run takes an exclusive ``flock`` on ``<state-dir>/lock`` and
writes its PID and start time in it; a second run fails at once (exit 2) with a
message naming the first run's PID and start time.

A lock left by a dead process is taken over safely: ``flock`` locks belong to
an open file, so the kernel drops them when their process dies, however it
dies. The PID left in the file is then only a note, reported as stale.

Left out: state directories on network filesystems, where ``flock`` may not
be honoured across machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO


class StateLocked(RuntimeError):
    """Another run holds the state directory; the message names its PID and start time."""


@dataclass
class StateLock:
    path: Path
    handle: IO[str]
    stale_owner: str | None  # what a dead holder had written, when its lock was taken over

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.seek(0)
            self.handle.truncate()
            fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _owner(text: str) -> str:
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return f"PID {fields.get('pid', '?')} (started {fields.get('started', '?')})"


def acquire(state_dir: Path) -> StateLock:
    """Lock ``state_dir`` for this process, or raise :class:`StateLocked` at once."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = _owner(handle.read())
        handle.close()
        raise StateLocked(
            f"state directory {state_dir} is in use by another mlcicd run: {holder}; "
            f"wait for it to end, or pass another --state-dir (lock file {path})"
        ) from None
    handle.seek(0)
    previous = handle.read().strip()
    handle.seek(0)
    handle.truncate()
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    handle.write(f"pid={os.getpid()}\nstarted={started}\n")
    handle.flush()
    return StateLock(path, handle, _owner(previous) if previous else None)


def holder(state_dir: Path) -> str | None:
    """Who holds the state directory now (``PID n (started t)``), or None; changes nothing."""
    path = state_dir / "lock"
    if not path.exists():
        return None
    with path.open() as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _owner(handle.read())
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None
