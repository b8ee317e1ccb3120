"""The quality gate: run an eval suite against a model, then judge the results.

Two ways to reach a model, one code path for the checks:

* in-process: ``inference.loader.load_model`` + ``inference.torch_engine.TorchEngine``,
  the very engine the server runs, driven through the ``Engine`` contract;
* over HTTP: ``POST /v1/generate`` on a running server (staging, a canary pod).

Generation is greedy (temperature 0) and one case at a time, so a run is
reproducible and a case's timeout measures that case alone. An error or a timeout
is a result of its own, never a pass: it counts against the pass rate AND fails
the gate by itself, because a suite that could not run says nothing about quality.

The champion comparison takes the per-case results of the registry's current
champion (the ``quality.json`` this gate wrote when the champion was judged; only
``cases[].id`` and ``cases[].passed`` are read) and compares over the ids both
sides ran. Ids on one side only are reported; they never vanish silently.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

from inference.engine import Engine, FinishEvent, GenerationParams
from pipeline.gates.checks import Case, CheckResult, run_checks
from pipeline.gates.stats import Interval, PairedComparison, paired_comparison, wilson_interval

Status = Literal["pass", "fail", "error", "timeout"]


class GenerationError(Exception):
    """The model or server could not produce a completion for one case."""


class ChampionResultsError(ValueError):
    """The champion's results file is missing or malformed; the message names the field."""


class Generator(Protocol):
    """Something that completes a prompt greedily."""

    async def generate(self, prompt: str, max_new_tokens: int, stop: tuple[str, ...]) -> str: ...


class EngineGenerator:
    """Drives an ``inference.engine.Engine`` (already started) from the running loop."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def generate(self, prompt: str, max_new_tokens: int, stop: tuple[str, ...]) -> str:
        params = GenerationParams(
            prompt=prompt,
            prompt_ids=self._engine.count_tokens(prompt),
            max_new_tokens=max_new_tokens,
            temperature=0.0,
            stop=stop,
        )
        handle = self._engine.submit(params, asyncio.get_running_loop())
        try:
            async for event in handle.events():
                if isinstance(event, FinishEvent):
                    if event.reason == "error":
                        raise GenerationError(event.error or "engine error")
                    return event.text
        finally:
            if not handle.finished:
                handle.cancel()
        raise GenerationError("engine ended the stream without a finish event")


class HttpGenerator:
    """Calls ``POST {url}/v1/generate`` on a running inference server."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self._client = client
        self._url = url.rstrip("/") + "/v1/generate"

    async def generate(self, prompt: str, max_new_tokens: int, stop: tuple[str, ...]) -> str:
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_new_tokens": max_new_tokens,
            "temperature": 0.0,
            "stop": list(stop),
        }
        try:
            response = await self._client.post(self._url, json=body)
        except httpx.HTTPError as exc:
            raise GenerationError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise GenerationError(f"HTTP {response.status_code}: {response.text[:300]}")
        try:
            text = response.json()["text"]
        except (ValueError, KeyError, TypeError) as exc:
            raise GenerationError(f"response has no 'text': {response.text[:300]}") from exc
        if not isinstance(text, str):
            raise GenerationError("response field 'text' is not a string")
        return text


@dataclass(frozen=True)
class CaseResult:
    id: str
    tags: tuple[str, ...]
    status: Status
    text: str
    checks: tuple[CheckResult, ...] = ()
    error: str | None = None
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


async def run_case(
    case: Case, generator: Generator, default_max_new_tokens: int, timeout_s: float
) -> CaseResult:
    started = time.perf_counter()
    max_new = case.max_new_tokens or default_max_new_tokens
    try:
        pending = generator.generate(case.prompt, max_new, case.stop)
        text = await asyncio.wait_for(pending, timeout_s)
    except TimeoutError:
        error = f"no completion within {timeout_s:g}s"
        return CaseResult(case.id, case.tags, "timeout", "", error=error, duration_s=timeout_s)
    except GenerationError as exc:
        elapsed = time.perf_counter() - started
        return CaseResult(case.id, case.tags, "error", "", error=str(exc), duration_s=elapsed)
    checks = tuple(run_checks(case, text))
    status: Status = "pass" if all(c.passed for c in checks) else "fail"
    return CaseResult(case.id, case.tags, status, text, checks, None, time.perf_counter() - started)


async def run_suite(
    cases: Sequence[Case],
    generator: Generator,
    *,
    max_new_tokens: int,
    case_timeout_s: float,
    on_result: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Run every case in order; one case's failure never stops the others."""
    results: list[CaseResult] = []
    for case in cases:
        result = await run_case(case, generator, max_new_tokens, case_timeout_s)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


@dataclass(frozen=True)
class Rate:
    passed: int
    total: int
    interval: Interval

    @property
    def rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


def _rate(results: Sequence[CaseResult]) -> Rate:
    passed = sum(1 for r in results if r.passed)
    return Rate(passed, len(results), wilson_interval(passed, len(results)))


@dataclass(frozen=True)
class QualityVerdict:
    passed: bool
    overall: Rate
    by_tag: dict[str, Rate]
    errored: tuple[str, ...]
    timed_out: tuple[str, ...]
    comparison: PairedComparison | None
    reasons: tuple[str, ...]
    thresholds: dict[str, float] = field(default_factory=dict)


def judge_quality(
    results: Sequence[CaseResult],
    *,
    min_pass_rate: float,
    max_regression_vs_champion: float,
    champion: Mapping[str, bool] | None = None,
) -> QualityVerdict:
    """The gate's decision; ``reasons`` lists every threshold that was broken."""
    overall = _rate(results)
    tags = sorted({tag for r in results for tag in r.tags})
    by_tag = {tag: _rate([r for r in results if tag in r.tags]) for tag in tags}
    errored = tuple(r.id for r in results if r.status == "error")
    timed_out = tuple(r.id for r in results if r.status == "timeout")
    reasons: list[str] = []
    if overall.rate < min_pass_rate:
        reasons.append(f"pass rate {overall.rate:.3f} < min_pass_rate {min_pass_rate:g}")
    if errored:
        reasons.append(f"{len(errored)} case(s) errored: {', '.join(errored)}")
    if timed_out:
        reasons.append(f"{len(timed_out)} case(s) timed out: {', '.join(timed_out)}")
    comparison = None
    if champion is not None:
        comparison = paired_comparison({r.id: r.passed for r in results}, champion)
        if comparison.regression > max_regression_vs_champion:
            reasons.append(
                f"regression vs champion {comparison.regression:.3f} > "
                f"max_regression_vs_champion {max_regression_vs_champion:g} "
                f"({len(comparison.regressions)} newly failing, "
                f"{len(comparison.improvements)} newly passing)"
            )
    return QualityVerdict(
        passed=not reasons,
        overall=overall,
        by_tag=by_tag,
        errored=errored,
        timed_out=timed_out,
        comparison=comparison,
        reasons=tuple(reasons),
        thresholds={
            "min_pass_rate": min_pass_rate,
            "max_regression_vs_champion": max_regression_vs_champion,
        },
    )


def load_champion_results(path: Path) -> dict[str, bool]:
    """Read ``{"cases": [{"id": str, "passed": bool}, ...]}`` (a previous quality.json)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ChampionResultsError(f"{path}: champion results not found") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ChampionResultsError(f"{path}: not valid JSON: {exc}") from exc
    cases = data.get("cases") if isinstance(data, dict) else None
    if not isinstance(cases, list):
        raise ChampionResultsError(f"{path}: cases: expected a list of case results")
    found: dict[str, bool] = {}
    for index, item in enumerate(cases):
        where = f"{path}: cases[{index}]"
        if not isinstance(item, dict):
            raise ChampionResultsError(f"{where}: expected an object")
        case_id, passed = item.get("id"), item.get("passed")
        if not isinstance(case_id, str) or not case_id:
            raise ChampionResultsError(f"{where}.id: expected a non-empty string")
        if not isinstance(passed, bool):
            raise ChampionResultsError(f"{where}.passed: expected true or false")
        if case_id in found:
            raise ChampionResultsError(f"{where}.id: duplicate {case_id!r}")
        found[case_id] = passed
    if not found:
        raise ChampionResultsError(f"{path}: cases: the champion has no case results")
    return found
