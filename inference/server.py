"""The HTTP text-generation server: FastAPI in front of an :class:`~inference.engine.Engine`.

Why this shape (after kserve): every generation request goes through the same
small steps, each of which may answer with a typed :class:`ApiError`:
admit (ready? draining?) -> read body (size cap) -> validate (schema, caps,
context) -> inject faults -> submit (429 when the queue is full) -> collect or
stream (deadline) -> respond. Generation never runs on the event loop: the
engine's worker thread feeds the request's handle and the loop awaits it.

Every outcome is one JSON body ``{"error": ..., "type": ...}`` with a 4xx or
5xx status (a catch-all handler turns anything unexpected into a 500 of type
``internal``; no HTML, no traceback). Drain: :meth:`ServerRuntime.begin_drain`
(called on SIGTERM by ``serve_cli``) turns ``/ready`` and new generation
requests to 503 while requests in flight finish.

A client that goes away is noticed, streamed or not (a stream on its next write,
a non-streamed request by waiting for ``http.disconnect`` alongside the engine):
its generation is cancelled and it is counted with code 499.

Left out on purpose: authentication (the platform's ingress does it), chat
templates, logprobs, ``n > 1``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference.api_models import (
    ApiError,
    CompletionRequest,
    CompletionResponse,
    ErrorBody,
    ErrorType,
    GenerateRequest,
    GenerateResponse,
    ModelCard,
    ModelList,
    parse_request,
    read_body,
    wait_for_disconnect,
)
from inference.engine import Engine, EngineStoppedError, GenerationParams, QueueFullError
from inference.faults import FaultInjector
from inference.generation import (
    GenerationCall,
    StreamOutcome,
    TrackedStream,
    collect_unless_client_leaves,
    completion_stream,
    generate_body,
    to_completion,
)
from inference.metrics import ServerMetrics
from inference.settings import ServerSettings

log = logging.getLogger("mlcicd.server")

RETRY_AFTER_S = 1
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 413, 422, 429, 500, 503, 504)
}


class ServerRuntime:
    """Lifecycle state: warming -> ready -> draining (or failed)."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.failed: str | None = None
        self.in_flight = 0
        self.on_ready: list[Callable[[], None]] = []
        self.on_failure: list[Callable[[str], None]] = []

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

    async def wait_drained(self, timeout_s: float) -> bool:
        """True when nothing is in flight; False when ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True


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
    )
    metrics.model_info.labels(model=engine.model_name, revision=engine.revision).set(1)
    metrics.build_info.labels(git_sha=settings.git_sha, version=settings.version).set(1)
    metrics.queue_depth.set_function(lambda: float(engine.queue_depth))
    metrics.in_flight.set_function(lambda: float(runtime.in_flight))
    engine.observe_batches(metrics.batch_size.observe)
    metrics.watch_engine(engine)
    context = min(engine.context_length, settings.context_cap or engine.context_length)
    served_names = {engine.model_name, settings.model}

    async def warm_up() -> None:
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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warming = asyncio.create_task(warm_up())
        try:
            yield
        finally:
            runtime.draining = True
            if not warming.done():
                await asyncio.wait({warming}, timeout=settings.drain_timeout_s)
            await asyncio.to_thread(engine.stop)

    app = FastAPI(
        title="mlcicd inference server",
        version=settings.version,
        lifespan=lifespan,
        description="Text generation with batching, deadlines, drain and Prometheus metrics.",
    )
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.state.settings = settings

    def validate(req: GenerateRequest | CompletionRequest) -> GenerationParams:
        new_tokens = req.new_tokens
        name = "max_new_tokens" if isinstance(req, GenerateRequest) else "max_tokens"
        if not {"max_new_tokens", "max_tokens"} & req.model_fields_set:
            new_tokens = min(new_tokens, settings.max_new_tokens_cap)  # a default never fails
        elif new_tokens > settings.max_new_tokens_cap:
            raise ApiError(
                422,
                "validation",
                f"`{name}` must be <= {settings.max_new_tokens_cap}, got {new_tokens}",
            )
        prompt_ids = engine.count_tokens(req.prompt)
        if len(prompt_ids) + new_tokens > context:
            raise ApiError(
                422,
                "validation",
                f"`prompt` tokens + `{name}` must be <= {context}, got {len(prompt_ids)} + "
                f"{new_tokens} = {len(prompt_ids) + new_tokens}",
            )
        return GenerationParams(
            prompt=req.prompt,
            prompt_ids=prompt_ids,
            max_new_tokens=new_tokens,
            min_new_tokens=(
                min(req.min_tokens, new_tokens) if isinstance(req, CompletionRequest) else 0
            ),
            temperature=req.temperature,
            top_p=req.top_p,
            stop=req.stop_sequences(),
            seed=req.seed,
        )

    async def start_call(params: GenerationParams, arrived: float) -> GenerationCall:
        await faults.delay()
        if faults.should_fail():
            raise ApiError(500, "injected_fault", "injected fault (fault injection is on)")
        try:
            handle = engine.submit(params, asyncio.get_running_loop())
        except QueueFullError as exc:
            raise ApiError(
                429,
                "overloaded",
                f"the request queue is full ({settings.queue_cap} waiting); retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from exc
        except EngineStoppedError as exc:
            raise ApiError(503, "unavailable", "the server is shutting down") from exc
        metrics.prompt_tokens.inc(len(params.prompt_ids))
        return GenerationCall(handle, arrived, settings.request_deadline_s, metrics)

    def finish(code: int, arrived: float) -> None:
        metrics.record(code)
        if 200 <= code < 300 or code in (500, 504):
            metrics.duration.observe(time.monotonic() - arrived)

    def admit() -> None:
        if runtime.draining or runtime.failed is not None:
            raise ApiError(503, "unavailable", "the server is shutting down")
        if not runtime.ready:
            raise ApiError(503, "unavailable", "the model is still loading; retry later")

    async def serve_generation(
        request: Request, respond: Callable[[Request, bytes, float], Awaitable[Response]]
    ) -> Response:
        """Admit, read, respond; count the outcome unless a stream took the request over."""
        arrived = time.monotonic()
        code = 500
        admitted = False
        streaming = False
        try:
            admit()
            admitted = True
            runtime.in_flight += 1
            body = await read_body(request, settings.max_body_bytes)
            response = await respond(request, body, arrived)
            streaming = isinstance(response, TrackedStream)
            code = response.status_code
            return response
        except ApiError as exc:
            code = exc.status
            return _error_response(exc)
        except Exception:
            log.exception("unexpected error while serving %s", request.url.path)
            code = 500
            return _error_response(ApiError(500, "internal", "internal server error"))
        finally:
            if not streaming:
                if admitted:
                    runtime.in_flight -= 1
                finish(code, arrived)

    async def respond_generate(request: Request, body: bytes, arrived: float) -> Response:
        req = parse_request(body, GenerateRequest)
        call = await start_call(validate(req), arrived)
        done = await collect_unless_client_leaves(call, lambda: wait_for_disconnect(request))
        return JSONResponse(generate_body(done).model_dump())

    async def respond_completion(request: Request, body: bytes, arrived: float) -> Response:
        req = parse_request(body, CompletionRequest)
        if req.model is not None and req.model not in served_names:
            raise ApiError(
                404,
                "model_not_found",
                f"model `{req.model}` is not served here (serving `{engine.model_name}`)",
            )
        call = await start_call(validate(req), arrived)
        if not req.stream:
            done = await collect_unless_client_leaves(call, lambda: wait_for_disconnect(request))
            return JSONResponse(to_completion(done, engine.model_name).model_dump())
        first = await call.first_event()
        outcome = StreamOutcome()

        def on_end(code: int) -> None:
            runtime.in_flight -= 1
            finish(code, arrived)

        stream = completion_stream(call, first, engine.model_name, outcome)
        return TrackedStream(stream, outcome, on_end)

    body_doc = _request_body_doc

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        responses=_ERROR_RESPONSES,
        openapi_extra=body_doc(GenerateRequest),
    )
    async def generate(request: Request) -> Response:
        """Generate text for one prompt (TGI-like)."""
        return await serve_generation(request, respond_generate)

    @app.post(
        "/v1/completions",
        response_model=CompletionResponse,
        responses=_ERROR_RESPONSES,
        openapi_extra=body_doc(CompletionRequest),
    )
    async def completions(request: Request) -> Response:
        """OpenAI-compatible completions; ``stream: true`` answers server-sent events."""
        return await serve_generation(request, respond_completion)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        card = ModelCard(
            id=engine.model_name,
            created=int(time.time()),
            revision=engine.revision,
            context_length=context,
        )
        return ModelList(data=[card])

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers (also while loading and draining)."""
        return {"status": "alive"}

    @app.get("/ready", responses={503: {"description": "loading, draining or failed"}})
    async def ready() -> JSONResponse:
        """Readiness: 200 once the engine is warm, 503 before and while draining."""
        status = 200 if runtime.state == "ready" else 503
        body = {"status": runtime.state, "model": engine.model_name}
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    _install_error_handlers(app)
    return app


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _request_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body the route reads itself (to enforce size and strictness first)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


def _install_error_handlers(app: FastAPI) -> None:
    """Every error outside the generation routes answers the same JSON shape."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kinds: dict[int, ErrorType] = {404: "not_found", 405: "method_not_allowed"}
        kind = kinds.get(exc.status_code, "validation" if exc.status_code < 500 else "internal")
        error = ApiError(exc.status_code, kind, str(exc.detail), dict(exc.headers or {}))
        return _error_response(error)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"`{where}` {first.get('msg', 'is invalid')}"
        return _error_response(ApiError(422, "validation", message))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected %s on %s: %s", type(exc).__name__, request.url.path, exc)
        return _error_response(ApiError(500, "internal", "internal server error"))

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
