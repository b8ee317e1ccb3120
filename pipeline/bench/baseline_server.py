"""The naive baseline that ``mlcicd bench`` measures our server against.

Why it exists: a throughput figure means little without the thing it replaces.
The naive way to serve a model is to call ``transformers.pipeline("text-generation")``
once per request; this module does exactly that behind the same HTTP surface
as our server (``POST /v1/completions``, plain and ``stream: true``, plus
``/health`` and ``/ready``), so the same load generator measures both in one
run on one machine.

What it deliberately does NOT do, because that is the point of the comparison:
no batching (one request runs at a time, later ones wait in line), no streaming
from inside generation (the pipeline returns the whole completion at once, so a
streamed response sends all of it in one chunk after generation ends, and its
time to first token equals its end-to-end latency), no queue bound, no
deadlines, no metrics. The call runs in a worker thread only so the event loop
stays alive for ``/health`` while a request generates; that blocking call
is otherwise unchanged.

Token counts are honest: the pipeline is asked for tensors
(``return_tensors=True``) and the new tokens are the ids after the prompt, so
``usage.completion_tokens`` is what the model produced, not a re-tokenisation.

Run: ``python -m pipeline.bench.baseline_server --model gpt2-small-random --port 8081``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

# The pipeline's own context limit guards the upper end; this one only keeps a
# typo from asking for a million tokens.
_MAX_TOKENS_LIMIT = 4096


class CompletionRequest(BaseModel):
    """The subset of the OpenAI completions body the load generator sends."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1)
    max_tokens: int = Field(default=16, ge=1, le=_MAX_TOKENS_LIMIT)
    # vLLM's name for a floor on new tokens; the benchmark sets min = max so
    # every request does the same amount of work.
    min_tokens: int = Field(default=0, ge=0, le=_MAX_TOKENS_LIMIT)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stream: bool = False
    model: str | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class NaivePipelineGenerator:
    """``transformers.pipeline("text-generation")`` called once per request, one at a time."""

    def __init__(self, model: Any, tokenizer: Any, name: str) -> None:
        from transformers import pipeline

        self.name = name
        self._tokenizer = tokenizer
        self._pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
        # One worker: requests run strictly one after another, as in the naive design.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")

    def generate(self, request: CompletionRequest) -> Completion:
        prompt_ids = self._tokenizer(request.prompt)["input_ids"]
        sampling = request.temperature > 0.0
        kwargs: dict[str, Any] = {
            "max_new_tokens": request.max_tokens,
            "min_new_tokens": min(request.min_tokens, request.max_tokens),
            "do_sample": sampling,
            "return_tensors": True,
            "pad_token_id": self._tokenizer.eos_token_id,
        }
        if sampling:
            kwargs.update(temperature=request.temperature, top_p=request.top_p)
        result = self._pipe(request.prompt, **kwargs)
        sequence = list(result[0]["generated_token_ids"])
        new_ids = sequence[len(prompt_ids) :]
        text = self._tokenizer.decode(new_ids, skip_special_tokens=True)
        reason = "length" if len(new_ids) >= request.max_tokens else "stop"
        return Completion(text, len(prompt_ids), len(new_ids), reason)

    async def run(self, request: CompletionRequest) -> Completion:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self.generate, request)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


def _usage(done: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def create_baseline_app(generator: NaivePipelineGenerator) -> FastAPI:
    """The naive server's HTTP surface; same paths and bodies as ours."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        generator.close()

    app = FastAPI(title="mlcicd naive baseline", docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready", "model": generator.name}

    @app.post("/v1/completions", response_model=None)
    async def completions(request: CompletionRequest) -> JSONResponse | StreamingResponse:
        completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if not request.stream:
            try:
                done = await generator.run(request)
            except Exception as exc:  # one failed request must not take the server down
                return JSONResponse(
                    {"error": {"type": "generation_error", "message": str(exc)}}, status_code=500
                )
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "text_completion",
                    "created": created,
                    "model": generator.name,
                    "choices": [
                        {"index": 0, "text": done.text, "finish_reason": done.finish_reason}
                    ],
                    "usage": _usage(done),
                }
            )

        async def stream() -> AsyncIterator[bytes]:
            try:
                done = await generator.run(request)
            except Exception as exc:
                yield _sse({"error": {"type": "generation_error", "message": str(exc)}})
                return
            # The whole completion in one chunk: the pipeline cannot stream.
            base = {"id": completion_id, "object": "text_completion", "created": created}
            yield _sse(
                {
                    **base,
                    "model": generator.name,
                    "choices": [{"index": 0, "text": done.text, "finish_reason": None}],
                }
            )
            yield _sse(
                {
                    **base,
                    "model": generator.name,
                    "choices": [{"index": 0, "text": "", "finish_reason": done.finish_reason}],
                    "usage": _usage(done),
                }
            )
            yield _sse("[DONE]")

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.bench.baseline_server",
        description="Naive baseline: transformers.pipeline called once per request.",
    )
    parser.add_argument("--model", required=True, help="model ref, as for `mlcicd serve`")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)

    import uvicorn

    from inference.loader import ModelLoadError, load_model

    try:
        loaded = load_model(args.model, device="auto", dtype="auto")
    except ModelLoadError as exc:
        print(f"baseline_server: cannot load model {args.model!r}: {exc}", file=sys.stderr)
        return 2
    generator = NaivePipelineGenerator(loaded.model, loaded.tokenizer, loaded.name)
    uvicorn.run(create_baseline_app(generator), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
