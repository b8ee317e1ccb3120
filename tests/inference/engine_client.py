"""A tiny asyncio client for driving a real engine in tests (no HTTP involved)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from inference.engine import Engine, FinishEvent, GenerationHandle, GenerationParams, TokenEvent


@dataclass
class Result:
    finish: FinishEvent
    tokens: list[TokenEvent] = field(default_factory=list)

    @property
    def streamed(self) -> str:
        return "".join(event.text for event in self.tokens)


def params(
    engine: Engine, prompt: str, max_new_tokens: int = 48, **kwargs: object
) -> GenerationParams:
    return GenerationParams(
        prompt=prompt,
        prompt_ids=engine.count_tokens(prompt),
        max_new_tokens=max_new_tokens,
        **kwargs,  # type: ignore[arg-type]
    )


async def collect(handle: GenerationHandle) -> Result:
    tokens: list[TokenEvent] = []
    async for event in handle.events():
        if isinstance(event, FinishEvent):
            return Result(event, tokens)
        tokens.append(event)
    raise AssertionError("stream ended without a FinishEvent")


def run_all(engine: Engine, requests: list[GenerationParams], concurrent: bool) -> list[Result]:
    """Submit all at once (concurrent) or one after another; results in request order."""

    async def main() -> list[Result]:
        loop = asyncio.get_running_loop()
        if concurrent:
            handles = [engine.submit(p, loop) for p in requests]
            return list(await asyncio.wait_for(asyncio.gather(*map(collect, handles)), 120))
        return [await asyncio.wait_for(collect(engine.submit(p, loop)), 60) for p in requests]

    return asyncio.run(main())


def generate(engine: Engine, prompt: str, max_new_tokens: int = 48, **kwargs: object) -> Result:
    return run_all(engine, [params(engine, prompt, max_new_tokens, **kwargs)], concurrent=False)[0]
