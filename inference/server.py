"""The HTTP text-generation server: FastAPI in front of an :class:`~inference.engine.Engine`.

Why this shape (after kserve): :func:`create_app` is wiring only. The steps of
a generation request (admit, read, validate, submit, collect or stream) live
on :class:`~inference.endpoints.GenerationEndpoints`, the lifecycle state on
:class:`~inference.runtime.ServerRuntime`, the OpenAPI document in
:mod:`inference.openapi_doc`. Generation never runs on the event loop: the
engine's worker thread feeds the request's handle and the loop awaits it.

Every outcome is JSON with a 4xx or 5xx status (a catch-all handler turns
anything unexpected into a 500 of kind ``internal``; no HTML, no traceback):
``{"error", "type"}`` on ``/v1/generate`` and outside the API, OpenAI's
``{"error": {"message", "type", "param", "code"}}`` on ``/v1/completions``,
``/v1/models`` and ``/v1/chat/...`` (see :mod:`inference.errors`).

Drain: :meth:`ServerRuntime.begin_drain` (called on SIGTERM by ``serve_cli``)
turns ``/ready`` and new generation requests to 503 (with ``Retry-After``)
while requests in flight finish.

A client that goes away is noticed, streamed or not (a stream on its next write,
a non-streamed request by waiting for ``http.disconnect`` alongside the engine,
a body by the disconnect arriving instead of it): its generation is cancelled
and it is counted with code 499.

Left out on purpose: authentication (the platform's ingress does it), chat
completions (a clear 404), logprobs, ``n > 1``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference import openapi_doc
from inference.api_models import (
    CompletionRequest,
    CompletionResponse,
    GenerateRequest,
    GenerateResponse,
    ModelList,
)
from inference.endpoints import GenerationEndpoints, error_response
from inference.engine import Engine
from inference.errors import ApiError, ErrorType, style_of
from inference.faults import FaultInjector
from inference.metrics import ServerMetrics
from inference.runtime import ServerRuntime
from inference.settings import ServerSettings

__all__ = ["ServerRuntime", "create_app"]

log = logging.getLogger("mlcicd.server")


async def _warm_up(engine: Engine, runtime: ServerRuntime) -> None:
    try:
        await asyncio.to_thread(engine.start)
    except Exception as exc:
        runtime.failed = f"{type(exc).__name__}: {exc}"
        log.error("engine failed to start: %s", runtime.failed)
        for callback in runtime.on_failure:
            callback(runtime.failed)
        return
    # Start-up leaves a large heap of long-lived objects (torch, transformers);
    # without this, the first full GC sweeps it mid-traffic and one early
    # request sees a several-hundred-ms pause (seen as a TTFT p99 spike).
    gc.collect()
    gc.freeze()
    runtime.ready = True
    for ready_callback in runtime.on_ready:
        ready_callback()


def create_app(
    engine: Engine, settings: ServerSettings, faults: FaultInjector | None = None
) -> FastAPI:
    """The app; its lifespan warms the engine in the background and stops it at shutdown."""
    metrics = ServerMetrics()
    runtime = ServerRuntime()
    faults = faults or FaultInjector(
        settings.fault_error_rate,
        settings.fault_latency_ms,
        settings.fault_seed,
        settings.environment.value,
        settings.fault_token_latency_ms,
    )
    metrics.model_info.labels(model=engine.model_name, revision=engine.revision).set(1)
    metrics.build_info.labels(git_sha=settings.git_sha, version=settings.version).set(1)
    metrics.queue_depth.set_function(lambda: float(engine.queue_depth))
    metrics.in_flight.set_function(lambda: float(runtime.in_flight))
    engine.observe_batches(metrics.batch_size.observe)
    metrics.watch_engine(engine)
    endpoints = GenerationEndpoints(engine, settings, metrics, runtime, faults)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warming = asyncio.create_task(_warm_up(engine, runtime))
        try:
            yield
        finally:
            runtime.draining = True
            if not warming.done():
                await asyncio.wait({warming}, timeout=settings.drain_timeout_s)
            await asyncio.to_thread(engine.stop)
            endpoints.close()

    app = FastAPI(
        title="mlcicd inference server",
        version=settings.version,
        lifespan=lifespan,
        description="Text generation with batching, deadlines, drain and Prometheus metrics.",
    )
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.endpoints = endpoints
    _add_routes(app, endpoints)
    _install_error_handlers(app)
    return app


def _add_routes(app: FastAPI, endpoints: GenerationEndpoints) -> None:
    cap = endpoints.settings.max_new_tokens_cap
    defs: dict[str, Any] = {}

    def body_doc(model: type[GenerateRequest] | type[CompletionRequest]) -> dict[str, Any]:
        omit = frozenset(getattr(endpoints.engine, "unsupported_fields", ()))
        return openapi_doc.request_body_doc(model, cap, endpoints.served_names, defs, omit)

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        responses=openapi_doc.error_responses(openai=False),
        openapi_extra=body_doc(GenerateRequest),
    )
    async def generate(request: Request) -> Response:
        """Generate text for one prompt (TGI-like)."""
        return await endpoints.generate(request)

    @app.post(
        "/v1/completions",
        response_model=CompletionResponse,
        responses=openapi_doc.completion_responses(),
        openapi_extra=body_doc(CompletionRequest),
    )
    async def completions(request: Request) -> Response:
        """OpenAI-compatible completions; ``stream: true`` answers server-sent events."""
        return await endpoints.completions(request)

    @app.post("/v1/chat/completions", include_in_schema=False)
    async def chat_completions() -> Response:
        message = "chat completions are not served here; only /v1/completions is"
        return error_response(ApiError(404, "not_found", message), "openai")

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return endpoints.model_list()

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers (also while loading and draining)."""
        return {"status": "alive"}

    @app.get("/ready", responses={503: {"description": "loading, draining or failed"}})
    async def ready() -> JSONResponse:
        """Readiness: 200 once the engine is warm, 503 before and while draining."""
        runtime = endpoints.runtime
        status = 200 if runtime.state == "ready" else 503
        body = {"status": runtime.state, "model": endpoints.engine.model_name}
        return JSONResponse(body, status_code=status)

    @app.get("/metrics", response_class=Response, responses=openapi_doc.METRICS_RESPONSES)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics of this server (see ``inference.metrics``)."""
        body = endpoints.metrics.render()
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    openapi_doc.install(app, defs)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error outside the generation routes answers JSON in the path's shape."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kinds: dict[int, ErrorType] = {404: "not_found", 405: "method_not_allowed"}
        kind = kinds.get(exc.status_code, "validation" if exc.status_code < 500 else "internal")
        error = ApiError(exc.status_code, kind, str(exc.detail), dict(exc.headers or {}))
        return error_response(error, style_of(request.url.path))

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"`{where}` {first.get('msg', 'is invalid')}"
        return error_response(ApiError(422, "validation", message), style_of(request.url.path))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected %s on %s: %s", type(exc).__name__, request.url.path, exc)
        error = ApiError(500, "internal", "internal server error")
        return error_response(error, style_of(request.url.path))

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
