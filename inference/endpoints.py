"""The generation endpoints as an object over the engine (after kserve's ``OpenAIEndpoints``).

Why a class: every generation request goes through the same small steps, and
each is a method that can be called (and unit-tested) without HTTP:
:meth:`admit` (ready? draining?) -> read the body (size cap, body timeout) ->
:meth:`validate` (schema, caps, context; the prompt is tokenised here) ->
:meth:`start_call` (faults, submit; 429 when the queue is full) -> collect or
stream (deadline) -> respond. :meth:`serve` is the single path both routes
take; it counts every outcome once.

Tokenising a large prompt takes milliseconds of CPU, so prompts longer than
:data:`INLINE_TOKENIZE_CHARS` are tokenised on a thread of their own (one:
large prompts queue behind each other rather than compete with the engine's
worker for the cores) and the event loop stays free for ``/health`` and the
streams. Short prompts are tokenised inline, where a thread hop would cost
more than the work.

Error shapes: ``/v1/generate`` answers ``{"error", "type"}``; the
OpenAI-compatible routes answer OpenAI's shape (see :mod:`inference.errors`).

Left out on purpose: authentication (the platform's ingress does it), chat
templates, logprobs, ``n > 1``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from inference.allocator import active_allocator
from inference.api_models import (
    CompletionRequest,
    GenerateRequest,
    ModelCard,
    ModelList,
    parse_request,
    read_body,
    wait_for_disconnect,
)
from inference.engine import (
    Engine,
    EngineStoppedError,
    GenerationParams,
    QueueFullError,
    UnsupportedRequestError,
)
from inference.errors import ApiError, ErrorStyle
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
from inference.runtime import ServerRuntime
from inference.settings import ServerSettings

log = logging.getLogger("mlcicd.server")

RETRY_AFTER_S = 1
INLINE_TOKENIZE_CHARS = 2048

Respond = Callable[[Request, bytes, float], Awaitable[Response]]


def error_response(error: ApiError, style: ErrorStyle) -> JSONResponse:
    return JSONResponse(error.body(style), status_code=error.status, headers=error.headers)


class GenerationEndpoints:
    """``/v1/generate``, ``/v1/completions`` and ``/v1/models`` over one engine."""

    def __init__(
        self,
        engine: Engine,
        settings: ServerSettings,
        metrics: ServerMetrics,
        runtime: ServerRuntime,
        faults: FaultInjector,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.runtime = runtime
        self.faults = faults
        self.context = min(engine.context_length, settings.context_cap or engine.context_length)
        self.served_names = frozenset({engine.model_name, settings.model})
        self.allocator = active_allocator()  # fixed for the process's life
        self._tokenizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    def close(self) -> None:
        self._tokenizer.shutdown(wait=False, cancel_futures=True)

    # -- the steps -------------------------------------------------------------------
    def admit(self) -> None:
        """503 (with ``Retry-After``) unless the engine is warm and the server not draining."""
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if self.runtime.draining or self.runtime.failed is not None:
            raise ApiError(503, "unavailable", "the server is shutting down", retry)
        if not self.runtime.ready:
            raise ApiError(503, "unavailable", "the model is still loading; retry later", retry)

    def check_model(self, req: CompletionRequest) -> None:
        if req.model is not None and req.model not in self.served_names:
            raise ApiError(
                404,
                "model_not_found",
                f"model `{req.model}` is not served here (serving `{self.engine.model_name}`)",
                param="model",
            )

    async def tokenize(self, prompt: str) -> tuple[int, ...]:
        if len(prompt) <= INLINE_TOKENIZE_CHARS:
            return self.engine.count_tokens(prompt)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizer, self.engine.count_tokens, prompt)

    def params(
        self, req: GenerateRequest | CompletionRequest, prompt_ids: tuple[int, ...]
    ) -> GenerationParams:
        """The limits that depend on settings and model: the new-token cap and the context."""
        new_tokens = req.new_tokens
        name = "max_new_tokens" if isinstance(req, GenerateRequest) else "max_tokens"
        cap = self.settings.max_new_tokens_cap
        if not {"max_new_tokens", "max_tokens"} & req.model_fields_set:
            new_tokens = min(new_tokens, cap)  # a default never fails
        elif new_tokens > cap:
            raise ApiError(
                422, "validation", f"`{name}` must be <= {cap}, got {new_tokens}", param=name
            )
        if len(prompt_ids) + new_tokens > self.context:
            raise ApiError(
                422,
                "validation",
                f"`prompt` tokens + `{name}` must be <= {self.context}, got {len(prompt_ids)} + "
                f"{new_tokens} = {len(prompt_ids) + new_tokens}",
                param="prompt",
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

    async def validate(self, req: GenerateRequest | CompletionRequest) -> GenerationParams:
        if isinstance(req, CompletionRequest):
            self.check_model(req)
        return self.params(req, await self.tokenize(req.prompt))

    async def start_call(self, params: GenerationParams, arrived: float) -> GenerationCall:
        await self.faults.delay()
        if self.faults.should_fail():
            raise ApiError(500, "injected_fault", "injected fault (fault injection is on)")
        try:
            handle = self.engine.submit(params, asyncio.get_running_loop())
        except QueueFullError as exc:
            raise ApiError(
                429,
                "overloaded",
                f"the request queue is full ({self.settings.queue_cap} waiting); retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from exc
        except UnsupportedRequestError as exc:
            raise ApiError(422, "validation", str(exc), param=exc.field) from exc
        except EngineStoppedError as exc:
            raise ApiError(
                503,
                "unavailable",
                "the server is shutting down",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from exc
        self.runtime.track(handle)
        self.metrics.prompt_tokens.inc(len(params.prompt_ids))
        return GenerationCall(
            handle,
            arrived,
            self.settings.request_deadline_s,
            self.metrics,
            event_delay_s=self.faults.token_latency_s,
        )

    def finish(self, code: int, arrived: float) -> None:
        self.metrics.record(code)
        if 200 <= code < 300 or code in (500, 504):
            self.metrics.duration.observe(time.monotonic() - arrived)

    # -- the single path ---------------------------------------------------------------
    async def serve(self, request: Request, respond: Respond, style: ErrorStyle) -> Response:
        """Admit, read, respond; count the outcome unless a stream took the request over."""
        arrived = time.monotonic()
        code = 500
        admitted = False
        streaming = False
        try:
            self.admit()
            admitted = True
            self.runtime.in_flight += 1
            limits = self.settings
            body_timeout = min(limits.body_timeout_s, limits.request_deadline_s)
            body = await read_body(request, limits.max_body_bytes, body_timeout)
            response = await respond(request, body, arrived)
            streaming = isinstance(response, TrackedStream)
            code = response.status_code
            return response
        except ApiError as exc:
            code = exc.status
            return error_response(exc, style)
        except Exception:
            log.exception("unexpected error while serving %s", request.url.path)
            code = 500
            return error_response(ApiError(500, "internal", "internal server error"), style)
        finally:
            if not streaming:
                if admitted:
                    self.runtime.in_flight -= 1
                self.finish(code, arrived)

    async def generate(self, request: Request) -> Response:
        return await self.serve(request, self._respond_generate, "generate")

    async def completions(self, request: Request) -> Response:
        return await self.serve(request, self._respond_completion, "openai")

    def model_list(self) -> ModelList:
        card = ModelCard(
            id=self.engine.model_name,
            created=int(time.time()),
            revision=self.engine.revision,
            context_length=self.context,
            threads=getattr(self.engine, "threads", None),
            allocator=self.allocator,
            decode_step=getattr(self.engine, "decode_step", None),
            engine=getattr(self.engine, "engine_name", None),
            arrangement=getattr(self.engine, "arrangement", None),
        )
        return ModelList(data=[card])

    async def _respond_generate(self, request: Request, body: bytes, arrived: float) -> Response:
        req = parse_request(body, GenerateRequest)
        call = await self.start_call(await self.validate(req), arrived)
        done = await collect_unless_client_leaves(call, lambda: wait_for_disconnect(request))
        return JSONResponse(generate_body(done).model_dump())

    async def _respond_completion(self, request: Request, body: bytes, arrived: float) -> Response:
        req = parse_request(body, CompletionRequest)
        call = await self.start_call(await self.validate(req), arrived)
        model = self.engine.model_name
        if not req.stream:
            done = await collect_unless_client_leaves(call, lambda: wait_for_disconnect(request))
            return JSONResponse(to_completion(done, model).model_dump())
        first = await call.first_event()
        outcome = StreamOutcome()

        def on_end(code: int) -> None:
            self.runtime.in_flight -= 1
            self.finish(code, arrived)

        stream = completion_stream(call, first, model, outcome, req.include_usage)
        return TrackedStream(stream, outcome, on_end)
