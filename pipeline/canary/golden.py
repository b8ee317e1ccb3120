"""The golden-prompt check: the canary answers correctly, fast, as the model it should be.

Why: Prometheus tells how the canary serves (errors, latency) but not what it says,
and staging has no users to make traffic. The golden check sends the suite's prompts
(``canary.golden_suite``, the quality suite's smoke cases) to the canary alone,
judges each answer with the quality gate's checks (:mod:`pipeline.gates.checks`),
bounds each answer's time to first token by ``canary.max_ttft_p99_s``, and first
asks ``/v1/models`` which revision is served, so a pod that loaded another model
fails before any of its numbers count.

Two runners, one check: in the cluster the AnalysisTemplate runs it as Argo web
metrics (:mod:`infra.golden`, one metric per prompt, same request body and bounds);
locally ``mlcicd canary golden`` runs it against the canary process
(:func:`run_golden`). Both read the cases and numbers from here.

Errors: as in Argo, where a web measurement that gets no 2xx answer is an Error, not
a Failure, and fails only after ``consecutiveErrorLimit`` in a row, a case whose request
errors (refused, timed out, 429 while the server is saturated) is retried; one check
retries at most ``canary.consecutive_error_limit`` times in all, so a saturated server
cannot stretch it past its step. How the canary serves under load is Prometheus'
metrics' business (error rate, latency).

Left out: sampling (requests are greedy, temperature 0, as in the quality gate).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pipeline.definition import PipelineDefinition
from pipeline.gates.checks import Case, load_suite, run_checks
from pipeline.serving import served_model
from pipeline.source import REPO_ROOT

# `mlcicd canary golden --out DIR` writes DIR/golden.json.
GOLDEN_FILE = "golden.json"


def golden_cases(definition: PipelineDefinition) -> list[Case]:
    path = Path(definition.canary.golden_suite)
    return load_suite(path if path.is_absolute() else REPO_ROOT / path)


def request_body(definition: PipelineDefinition, case: Case) -> dict[str, Any]:
    """``POST /v1/generate`` body: what the quality gate sends for the same case."""
    return {
        "prompt": case.prompt,
        "max_new_tokens": case.max_new_tokens or definition.quality.max_new_tokens,
        "temperature": 0.0,
        "stop": list(case.stop),
    }


@dataclass
class GoldenResult:
    endpoint: str
    revision: str | None
    expected_revision: str | None
    passed_cases: int = 0
    cases: int = 0
    max_ttft_s: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        ttft = "n/a" if self.max_ttft_s is None else f"{self.max_ttft_s:.3f} s"
        verdict = "passed" if self.passed else "FAILED: " + "; ".join(self.failures)
        return (
            f"golden prompts {self.passed_cases}/{self.cases} answered correctly, "
            f"max TTFT {ttft}, revision {self.revision}: {verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "revision": self.revision,
            "expected_revision": self.expected_revision,
            "passed_cases": self.passed_cases,
            "cases": self.cases,
            "max_ttft_s": self.max_ttft_s,
            "failures": self.failures,
            "passed": self.passed,
        }


def served_revision(endpoint: str, timeout_s: float = 10.0) -> str:
    """The revision ``/v1/models`` reports (what the server loaded)."""
    return str(served_model(endpoint, timeout_s)["revision"])


def _answer(
    definition: PipelineDefinition, endpoint: str, case: Case, retries: list[int]
) -> tuple[str, float]:
    """(text, TTFT) of one case; request errors use up the check's shared ``retries``."""
    while True:
        try:
            response = httpx.post(
                f"{endpoint.rstrip('/')}/v1/generate",
                json=request_body(definition, case),
                timeout=definition.quality.case_timeout_s,
            )
            response.raise_for_status()
            body = response.json()
            return str(body["text"]), float(body["timings"]["ttft_s"])
        except httpx.HTTPError:
            if retries[0] <= 0:
                raise
            retries[0] -= 1
            time.sleep(1.0)


def run_golden(
    definition: PipelineDefinition, endpoint: str, expected_revision: str | None = None
) -> GoldenResult:
    """Check the model's revision, then every golden case; every shortfall is listed."""
    gate = definition.canary
    result = GoldenResult(endpoint, None, expected_revision)
    try:
        result.revision = served_revision(endpoint)
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        result.failures.append(f"/v1/models unreadable: {type(exc).__name__}: {exc}")
        return result
    if expected_revision and result.revision != expected_revision:
        result.failures.append(f"serves revision {result.revision}, expected {expected_revision}")
    retries = [definition.canary.consecutive_error_limit]
    for case in golden_cases(definition):
        result.cases += 1
        try:
            text, ttft = _answer(definition, endpoint, case, retries)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            result.failures.append(f"{case.id}: {type(exc).__name__}: {first}")
            continue
        result.max_ttft_s = max(ttft, result.max_ttft_s or 0.0)
        failed = [c.reason for c in run_checks(case, text) if not c.passed]
        if ttft > gate.max_ttft_p99_s:
            failed.append(f"TTFT {ttft:.3f} s > {gate.max_ttft_p99_s} s")
        if failed:
            result.failures.append(f"{case.id}: {', '.join(failed)}")
        else:
            result.passed_cases += 1
    return result
