"""Prometheus metrics of the inference server (stable names: dashboards and canary read them).

Every app gets its own ``CollectorRegistry`` so tests can build many apps in
one process; ``GET /metrics`` exposes that registry in the text format.

Metrics (only generation endpoints, ``/v1/generate`` and ``/v1/completions``,
are counted; health, readiness, metrics and docs requests are not, except that
a connection whose request head timed out halfway counts as a ``408``, since
its route is not known yet):

- ``inference_requests_total{status, code}`` (counter): finished generation
  requests. ``code`` is the HTTP status answered (``"200"``, ``"422"``, ...;
  a stream that fails after its 200 header counts with the code it would have
  had, e.g. ``"500"``, ``"504"``, or ``"503"`` for one cut by a drain).
  ``status`` is ``success`` for 2xx, ``client_error`` for 4xx other than 429
  (the client's mistake, not the release's: 408 timeouts, 499 hang-ups,
  validation), and ``error`` for 5xx, 429 (overload) and 504 (deadline).
- ``inference_request_duration_seconds`` (histogram): arrival to last byte
  of requests that reached the engine (succeeded, failed or timed out).
  Instant rejections (validation, 413, 429, 503) are left out so that they
  cannot pull the latency quantiles down.
- ``inference_time_to_first_token_seconds`` (histogram): arrival to the first
  generated token (includes queueing and any injected latency).
- ``inference_generated_tokens_total`` (counter): tokens generated, including
  those generated for requests the client left or whose deadline passed.
- ``inference_prompt_tokens_total`` (counter): prompt tokens submitted.
- ``inference_queue_depth`` (gauge): requests waiting in the engine's queue,
  read from the engine at scrape time.
- ``inference_requests_in_flight`` (gauge): generation requests admitted and
  not yet answered (what a drain waits for).
- ``inference_batch_size`` (histogram): requests per forward pass, reported
  by the engine's worker (``Engine.observe_batches``).
- ``inference_engine_layers{shape, layout, threads}`` (gauge): linear layers
  per weight shape ("out x in"), the layout (``weight-first``/``packed``/``onednn``/
  ``dense``) and thread count the engine chose for them by measuring at start
  (inference/layer_tuning.py); read from the engine at scrape time, absent for
  an engine that chooses nothing (GPU, fakes).
- ``inference_model_info{model, revision}`` (gauge, always 1): what is served.
- ``inference_build_info{git_sha, version}`` (gauge, always 1): which build.

The PromQL over these names lives in ``pipeline/canary/promql.py``.
Left out: per-endpoint labels (the canary judges the release, not a route)
and process metrics of the default registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# The stable names, declared once: the canary's PromQL and the dashboards import them.
# A counter's exposed name carries ``_total`` (prometheus_client adds it to the base name).
REQUESTS_TOTAL = "inference_requests_total"
REQUEST_DURATION = "inference_request_duration_seconds"
TIME_TO_FIRST_TOKEN = "inference_time_to_first_token_seconds"
GENERATED_TOKENS_TOTAL = "inference_generated_tokens_total"
PROMPT_TOKENS_TOTAL = "inference_prompt_tokens_total"
QUEUE_DEPTH = "inference_queue_depth"
REQUESTS_IN_FLIGHT = "inference_requests_in_flight"
BATCH_SIZE = "inference_batch_size"
MODEL_INFO = "inference_model_info"
BUILD_INFO = "inference_build_info"

# Values of the ``status`` label of REQUESTS_TOTAL.
SUCCESS = "success"
CLIENT_ERROR = "client_error"
ERROR = "error"


class _EngineLayers:
    """Collects ``inference_engine_layers`` from the engine's choices when scraped.

    Why at scrape time: the engine chooses while it warms up, after the app and
    its metrics exist.
    """

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def describe(self) -> list[Metric]:
        return []  # so registering does not call collect() before the engine starts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "inference_engine_layers",
            "Linear layers per weight shape, with the layout and threads chosen at start.",
            labels=["shape", "layout", "threads"],
        )
        for choice in getattr(self._engine, "layer_choices", ()):
            family.add_metric([choice.shape, choice.layout, str(choice.threads)], choice.layers)
        yield family


def status_label(code: int) -> str:
    """success (2xx), client_error (4xx except 429), error (5xx, 429)."""
    if 200 <= code < 300:
        return SUCCESS
    if 400 <= code < 500 and code != 429:
        return CLIENT_ERROR
    return ERROR


class ServerMetrics:
    """The server's collectors, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            REQUESTS_TOTAL,
            "Finished generation requests by outcome (status) and HTTP code.",
            ["status", "code"],
            registry=r,
        )
        self.duration = Histogram(
            REQUEST_DURATION,
            "Arrival to last byte of generation requests that reached the engine.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            TIME_TO_FIRST_TOKEN,
            "Arrival to the first generated token.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Counter(
            GENERATED_TOKENS_TOTAL.removesuffix("_total"), "Tokens generated.", registry=r
        )
        self.prompt_tokens = Counter(
            PROMPT_TOKENS_TOTAL.removesuffix("_total"),
            "Prompt tokens submitted to the engine.",
            registry=r,
        )
        self.queue_depth = Gauge(QUEUE_DEPTH, "Requests waiting in the engine queue.", registry=r)
        self.in_flight = Gauge(
            REQUESTS_IN_FLIGHT,
            "Generation requests admitted and not yet answered.",
            registry=r,
        )
        self.batch_size = Histogram(
            BATCH_SIZE,
            "Requests per forward pass.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            MODEL_INFO,
            "The model served (always 1).",
            ["model", "revision"],
            registry=r,
        )
        self.build_info = Gauge(
            BUILD_INFO,
            "The server build (always 1).",
            ["git_sha", "version"],
            registry=r,
        )

    def watch_engine(self, engine: Any) -> None:
        """Expose the engine's per-shape layer choices (``inference_engine_layers``)."""
        self.registry.register(_EngineLayers(engine))

    def record(self, code: int) -> None:
        self.requests.labels(status=status_label(code), code=str(code)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
