"""A load generator for the inference server: streaming requests, per-token timing.

Why streaming: time to first token (TTFT) and inter-token latency (ITL) are what a
user of a text-generation service feels, and only a streamed response shows them.
Each request is ``POST /v1/completions`` with ``stream: true``; the server answers
with server-sent events, one per token, ending in ``data: [DONE]``.

Two arrival modes:

* closed loop, fixed ``concurrency``: that many workers, each sending its next
  request when the previous one finishes (how a fixed pool of users behaves);
* open loop, fixed ``rate``: request start times drawn from a Poisson process
  (exponential gaps, seeded, so a run is reproducible), sent whether or not
  earlier requests have finished -- this is how overload shows up as queueing.

Warm-up requests run first and are excluded from every statistic. With
``fixed_tokens`` the request asks for exactly ``max_new_tokens`` tokens
(``min_tokens`` = ``max_tokens``, vLLM's name for the field), so latency is
comparable across models that stop early at different points (the latency
gate and the benchmark turn it on; it stays off by default here because a server
that does not know the field rejects the request).
Latencies are measured from the moment a request is sent; in open-loop mode
that is its scheduled time give or take event-loop lag.

Left out: prompt-length distributions, multi-turn sessions, client-side
tokenisation (token counts come from the server's usage or the number of events).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import httpx
from tqdm import tqdm

from pipeline.load.stats import Summary, summarise

# Prompts in the built-in model's formats, so it generates real text under load.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "Q: What is the capital of France?\nA:",
    "Q: Who wrote Hamlet?\nA:",
    "Hello, my name is",
    "Q: What is the largest planet in the solar system?\nA:",
    "Q: What is the capital of Japan?\nA:",
    "Q: Who painted the Mona Lisa?\nA:",
    "Q: How many days are in a week?\nA:",
    "Q: What is the fastest land animal?\nA:",
)

Mode = Literal["concurrency", "rate"]


@dataclass(frozen=True)
class RequestRecord:
    """One measured request; times in seconds, ``start_s`` relative to the run's start."""

    index: int
    ok: bool
    start_s: float
    e2e_s: float
    ttft_s: float | None = None
    itl_s: tuple[float, ...] = ()
    tokens: int = 0
    status_code: int | None = None
    error_kind: str | None = None
    error: str | None = None
    block: int = 0  # which block of a paired measurement (pipeline.load.paired)


@dataclass(frozen=True)
class LoadResult:
    url: str
    mode: Mode
    concurrency: int | None
    rate: float | None
    warmup: int
    max_new_tokens: int
    duration_s: float
    records: tuple[RequestRecord, ...]

    @property
    def requests(self) -> int:
        return len(self.records)

    @property
    def ok_records(self) -> list[RequestRecord]:
        return [r for r in self.records if r.ok]

    @property
    def error_count(self) -> int:
        return sum(1 for r in self.records if not r.ok)

    @property
    def error_rate(self) -> float:
        return self.error_count / self.requests if self.requests else 1.0

    @property
    def errors(self) -> dict[str, int]:
        return dict(Counter(r.error_kind or "unknown" for r in self.records if not r.ok))

    @property
    def ttft(self) -> Summary | None:
        return summarise(r.ttft_s for r in self.ok_records if r.ttft_s is not None)

    @property
    def itl(self) -> Summary | None:
        return summarise(gap for r in self.ok_records for gap in r.itl_s)

    @property
    def e2e(self) -> Summary | None:
        return summarise(r.e2e_s for r in self.ok_records)

    @property
    def throughput_rps(self) -> float:
        return len(self.ok_records) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        tokens = sum(r.tokens for r in self.ok_records)
        return tokens / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        def ms(s: Summary | None) -> dict[str, float | int] | None:
            return None if s is None else s.as_ms()

        return {
            "url": self.url,
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "requests": self.requests,
            "warmup": self.warmup,
            "max_new_tokens": self.max_new_tokens,
            "duration_s": self.duration_s,
            "ok": len(self.ok_records),
            "error_count": self.error_count,
            "error_rate": self.error_rate,
            "errors": self.errors,
            "ttft": ms(self.ttft),
            "itl": ms(self.itl),
            "e2e": ms(self.e2e),
            "throughput_rps": self.throughput_rps,
            "tokens_per_s": self.tokens_per_s,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "records": [asdict(r) for r in self.records]}


def poisson_schedule(count: int, rate: float, seed: int) -> list[float]:
    """Start offsets (seconds) of ``count`` Poisson arrivals at ``rate`` per second."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    rng = random.Random(seed)
    offsets: list[float] = []
    now = 0.0
    for _ in range(count):
        offsets.append(now)
        now += rng.expovariate(rate)
    return offsets


def _classify(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    return "transport"


async def _one_request(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    index: int,
    run_start: float,
) -> RequestRecord:
    sent = time.perf_counter()
    token_times: list[float] = []
    events = 0
    usage_tokens: int | None = None

    def record(ok: bool, **kw: Any) -> RequestRecord:
        end = time.perf_counter()
        ttft = token_times[0] - sent if token_times else None
        gaps = tuple(b - a for a, b in itertools.pairwise(token_times))
        tokens = usage_tokens if usage_tokens is not None else events
        return RequestRecord(index, ok, sent - run_start, end - sent, ttft, gaps, tokens, **kw)

    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:300]
                kind = f"http_{response.status_code}"
                code = response.status_code
                return record(False, status_code=code, error_kind=kind, error=detail)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    if not token_times:
                        return record(False, status_code=200, error_kind="no_tokens")
                    return record(True, status_code=200)
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    return record(False, status_code=200, error_kind="protocol", error=payload)
                if "error" in chunk:
                    # A mid-stream failure event, OpenAI's {"error": {"message", "code", ...}}.
                    found = chunk["error"]
                    error_of: dict[str, Any] = found if isinstance(found, dict) else {}
                    kind = f"stream_{error_of.get('code') or chunk.get('type') or 'error'}"
                    error = str(error_of.get("message") or found)[:300]
                    return record(False, status_code=200, error_kind=kind, error=error)
                usage = chunk.get("usage")
                if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                    usage_tokens = usage["completion_tokens"]
                choices = chunk.get("choices") or []
                if choices and choices[0].get("text"):
                    events += 1
                    token_times.append(time.perf_counter())
            return record(False, status_code=200, error_kind="protocol", error="no [DONE]")
    except httpx.HTTPError as exc:
        return record(False, error_kind=_classify(exc), error=f"{type(exc).__name__}: {exc}")


async def run_load(
    url: str,
    *,
    requests: int,
    max_new_tokens: int,
    concurrency: int | None = None,
    rate: float | None = None,
    warmup: int = 0,
    fixed_tokens: bool = False,
    seed: int = 0,
    request_timeout_s: float = 60.0,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    progress: bool = True,
    on_request: Callable[[RequestRecord], None] | None = None,
    stop: threading.Event | None = None,
) -> LoadResult:
    """Send ``warmup`` then ``requests`` streaming completions; exactly one of concurrency/rate.

    Setting ``stop`` ends the run early: requests not yet sent are not sent.
    """
    if (concurrency is None) == (rate is None):
        raise ValueError("give exactly one of concurrency or rate")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if requests < 1 or warmup < 0 or max_new_tokens < 1 or not prompts:
        raise ValueError("requests and max_new_tokens must be >= 1, warmup >= 0, prompts non-empty")
    endpoint = url.rstrip("/") + "/v1/completions"

    def body(index: int) -> dict[str, Any]:
        data: dict[str, Any] = {
            "prompt": prompts[index % len(prompts)],
            "max_tokens": max_new_tokens,
            "temperature": 0.0,
            "stream": True,
            # OpenAI's way to ask for the usage chunk the token counts come from.
            "stream_options": {"include_usage": True},
        }
        if fixed_tokens:
            data["min_tokens"] = max_new_tokens
        return data

    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    timeout = httpx.Timeout(request_timeout_s, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        warm_start = time.perf_counter()
        for start in range(0, warmup, concurrency or 1):
            batch = range(start, min(warmup, start + (concurrency or 1)))
            await asyncio.gather(
                *(_one_request(client, endpoint, body(i), i, warm_start) for i in batch)
            )

        records: list[RequestRecord] = []
        bar = tqdm(total=requests, desc="load", unit="req", file=sys.stderr, disable=not progress)

        def done(rec: RequestRecord) -> None:
            records.append(rec)
            bar.update(1)
            if on_request is not None:
                on_request(rec)

        run_start = time.perf_counter()
        if concurrency is not None:
            next_index = iter(range(requests))

            async def worker() -> None:
                for i in next_index:
                    if stop is not None and stop.is_set():
                        return
                    done(await _one_request(client, endpoint, body(warmup + i), i, run_start))

            await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))
        else:
            assert rate is not None
            schedule = poisson_schedule(requests, rate, seed)

            async def send(i: int) -> None:
                done(await _one_request(client, endpoint, body(warmup + i), i, run_start))

            # One dispatcher sends each request at its time, so that ``stop`` ends the
            # run at once: requests in flight finish, none later is sent.
            in_flight: list[asyncio.Task[None]] = []
            for i, offset in enumerate(schedule):
                while (wait := run_start + offset - time.perf_counter()) > 0:
                    if stop is not None and stop.is_set():
                        break
                    await asyncio.sleep(min(wait, STOP_POLL_S))
                if stop is not None and stop.is_set():
                    break
                in_flight.append(asyncio.create_task(send(i)))
            await asyncio.gather(*in_flight)
        duration = time.perf_counter() - run_start
        bar.close()
    return LoadResult(
        url=url,
        mode="concurrency" if concurrency is not None else "rate",
        concurrency=concurrency,
        rate=rate,
        warmup=warmup,
        max_new_tokens=max_new_tokens,
        duration_s=duration,
        records=tuple(sorted(records, key=lambda r: r.index)),
    )


# How often an open-loop run waiting for its next send looks at ``stop``.
STOP_POLL_S = 0.1


class BackgroundLoad:
    """Open-loop traffic in a thread for up to ``max_seconds``, until :meth:`stop`.

    Why: the local canary needs users while its steps pause and its analyses run;
    this is :func:`run_load` at a fixed rate, so the canary's traffic and the
    gates' load are one generator. Outcomes are counted by HTTP status (0 for a
    connection error) as they complete.
    """

    def __init__(self, url: str, rate: float, max_seconds: float, max_new_tokens: int = 12) -> None:
        self.outcomes: Counter[int] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        requests = max(1, int(rate * max_seconds))
        self._thread = threading.Thread(
            target=lambda: asyncio.run(
                run_load(url, requests=requests, rate=rate, max_new_tokens=max_new_tokens,
                         progress=False, on_request=self._count, stop=self._stop)
            ),
            daemon=True,
        )  # fmt: skip

    def _count(self, record: RequestRecord) -> None:
        with self._lock:
            self.outcomes[record.status_code or 0] += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 65.0) -> str:
        """Stop sending; wait for requests in flight; the counts as ``code: n, ...``."""
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        with self._lock:
            counts = sorted(self.outcomes.items())
        return ", ".join(f"{code or 'conn-error'}: {n}" for code, n in counts)
