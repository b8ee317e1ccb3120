"""Fault injection for tests and demos: make a healthy server look like a bad release.

Why: canary analysis, rollback and the Prometheus queries must be shown to
*fail* a bad release, with real traffic through a real server. Two knobs, set
at start-up and off by default:

- ``error_rate``: that fraction of generation requests (after validation, so a
  client mistake stays a client mistake) answers HTTP 500 with type
  ``injected_fault`` without touching the engine; counted as ``status="error"``.
- ``latency_ms``: an async sleep before the request is submitted, so it adds
  to time to first token and end-to-end latency without blocking the loop.
- ``token_latency_ms``: an async sleep before each event of a call is read,
  inside the request deadline, so a stream is slow by a known amount whatever
  the machine's speed (how a test makes a deadline pass mid-stream).

Refused when the environment is ``prod``: production never runs with faults.
Left out: per-endpoint or time-varying faults, and changing them at runtime.
"""

from __future__ import annotations

import asyncio
import random


class FaultConfigError(ValueError):
    """Fault injection asked for where it is not allowed, or out of range."""


def check_faults_allowed(
    environment: str, error_rate: float, latency_ms: float, token_latency_ms: float = 0.0
) -> None:
    if (error_rate > 0 or latency_ms > 0 or token_latency_ms > 0) and environment == "prod":
        raise FaultConfigError(
            "fault injection (`fault_error_rate`, `fault_latency_ms`, "
            "`fault_token_latency_ms`) is refused when `environment` is prod"
        )


class FaultInjector:
    """Decides, per generation request, whether to fail it and how long to delay it."""

    def __init__(
        self,
        error_rate: float = 0.0,
        latency_ms: float = 0.0,
        seed: int | None = None,
        environment: str = "dev",
        token_latency_ms: float = 0.0,
    ) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise FaultConfigError(f"`fault_error_rate` must be in [0, 1], got {error_rate}")
        if latency_ms < 0 or token_latency_ms < 0:
            raise FaultConfigError("`fault_latency_ms` and `fault_token_latency_ms` must be >= 0")
        check_faults_allowed(environment, error_rate, latency_ms, token_latency_ms)
        self.error_rate = error_rate
        self.latency_s = latency_ms / 1000.0
        self.token_latency_s = token_latency_ms / 1000.0
        self._rng = random.Random(seed)

    @property
    def enabled(self) -> bool:
        return self.error_rate > 0 or self.latency_s > 0 or self.token_latency_s > 0

    def should_fail(self) -> bool:
        if self.error_rate <= 0:
            return False
        return self._rng.random() < self.error_rate

    async def delay(self) -> None:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
