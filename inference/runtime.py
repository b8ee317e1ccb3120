"""The server's lifecycle state: loading -> ready -> draining (or failed).

Why its own object: readiness, admission and the drain all read the same
state, and ``serve_cli`` drives the drain from a signal handler; a small
object both sides hold keeps that in one place.

Drain policy: :meth:`begin_drain` refuses new work (503 with ``Retry-After``)
while admitted requests finish; settings guarantee the drain timeout is at
least the request deadline, so every admitted request ends by itself. If the
drain is cut short anyway (a second signal), :meth:`cut_in_flight` cancels the
engine's work for every request still running: each stream then ends with an
error event and ``[DONE]`` instead of being dropped mid-way.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable

from inference.engine import GenerationHandle

log = logging.getLogger("mlcicd.server")


class ServerRuntime:
    """Lifecycle state: warming -> ready -> draining (or failed)."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.failed: str | None = None
        self.in_flight = 0
        self.on_ready: list[Callable[[], None]] = []
        self.on_failure: list[Callable[[str], None]] = []
        self._handles: weakref.WeakValueDictionary[int, GenerationHandle] = (
            weakref.WeakValueDictionary()
        )

    @property
    def state(self) -> str:
        if self.failed is not None:
            return "failed"
        if self.draining:
            return "draining"
        return "ready" if self.ready else "loading"

    def begin_drain(self) -> None:
        if not self.draining:
            log.info("draining: %d request(s) in flight", self.in_flight)
        self.draining = True

    def track(self, handle: GenerationHandle) -> None:
        """Remember a request the engine holds, so a cut drain can cancel it."""
        self._handles[id(handle)] = handle

    def cut_in_flight(self) -> int:
        """Cancel the engine's work for every unfinished request; returns how many."""
        cut = 0
        for handle in list(self._handles.values()):
            if not handle.finished and not handle.cancelled:
                handle.cancel()
                cut += 1
        if cut:
            log.warning("drain cut short: cancelled %d request(s) in flight", cut)
        return cut

    async def wait_drained(self, timeout_s: float) -> bool:
        """True when nothing is in flight; False when ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True
