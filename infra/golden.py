"""The golden-prompt check as Argo Rollouts web metrics (pipeline/canary/golden.py in YAML).

Why web metrics and not a Job: a Job needs an image holding the suite and the checks;
the inference image carries the server alone and the runner image no project. A web
metric needs nothing: Argo POSTs the same body ``mlcicd canary golden`` sends to the
canary Service (pinned to the canary ReplicaSet by Argo), and judges the JSON answer
with an expression rendered from the case's checks (Argo v1.7 evaluates conditions
with expr v1.15: ``contains``, ``matches`` (RE2), ``lower``, ``len``). One metric per
case; a ``model-revision`` metric compares ``/v1/models`` with the revision CI
annotated on the Rollout, so a pod serving another model fails the analysis.

Differences from the Python checks, stated rather than hidden: ``len`` counts bytes
for non-ASCII text, and curly apostrophes are not folded to straight ones.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.canary.golden import golden_cases, request_body
from pipeline.definition import PipelineDefinition
from pipeline.gates.checks import (
    REFUSAL_MARKERS,
    AnyOf,
    Case,
    Contains,
    MaxLength,
    MinLength,
    NotContains,
    Refusal,
    Regex,
)

TEXT = "result.text"
LOWER = f"lower({TEXT})"


def _quote(text: str) -> str:
    """An expr string literal (Go-style escapes, which JSON's are a subset of)."""
    return json.dumps(text)


def _has(value: str) -> str:
    return f"{LOWER} contains {_quote(value.lower())}"


def check_expression(check: Any) -> str:
    """One check of :mod:`pipeline.gates.checks` as an expr condition on the answer."""
    if isinstance(check, Contains):
        return _has(check.value)
    if isinstance(check, AnyOf):
        return "(" + " || ".join(_has(v) for v in check.values) + ")"
    if isinstance(check, NotContains):
        return " && ".join(f"!({_has(v)})" for v in check.values)
    if isinstance(check, Refusal):
        return "(" + " || ".join(_has(m) for m in REFUSAL_MARKERS) + ")"
    if isinstance(check, Regex):
        flags = "(?i)" if check.ignore_case else ""
        return f"{TEXT} matches {_quote(flags + check.pattern)}"
    if isinstance(check, MinLength):
        return f"len({TEXT}) >= {check.value}"
    if isinstance(check, MaxLength):
        return f"len({TEXT}) <= {check.value}"
    raise TypeError(f"no expression for check kind {getattr(check, 'kind', check)!r}")


def case_condition(definition: PipelineDefinition, case: Case) -> str:
    """Every check passes and the first token came within ``canary.max_ttft_p99_s``."""
    parts = [check_expression(check) for check in case.checks]
    parts.append(f"result.timings.ttft_s <= {definition.canary.max_ttft_p99_s!r}")
    return " && ".join(f"({part})" for part in parts)


def metric_schedule(definition: PipelineDefinition, name: str) -> dict[str, Any]:
    """A metric's name with the canary's interval, count and Argo limits: every metric of
    the AnalysisTemplate (Prometheus or web) runs on this one schedule."""
    gate = definition.canary
    return {
        "name": name,
        "interval": gate.interval,
        "count": gate.count,
        "failureLimit": gate.failure_limit,
        "inconclusiveLimit": gate.inconclusive_limit,
        "consecutiveErrorLimit": gate.consecutive_error_limit,
    }


def _web_metric(
    definition: PipelineDefinition, name: str, success: str, web: dict[str, Any]
) -> dict[str, Any]:
    return {
        **metric_schedule(definition, name),
        # No failureCondition: an answer that misses successCondition is a failure.
        "successCondition": success,
        "provider": {"web": web},
    }


def golden_metrics(definition: PipelineDefinition, canary_url: str) -> list[dict[str, Any]]:
    """``model-revision`` plus one ``golden-<case>`` metric per golden case."""
    timeout = max(1, round(definition.quality.case_timeout_s))
    metrics = [
        _web_metric(
            definition,
            "model-revision",
            'result == "{{args.model-revision}}"',
            {"url": f"{canary_url}/v1/models", "jsonPath": "{$.data[0].revision}"},
        )
    ]
    for case in golden_cases(definition):
        metrics.append(
            _web_metric(
                definition,
                f"golden-{case.id}".lower().replace("_", "-").replace(".", "-").replace(":", "-"),
                case_condition(definition, case),
                {
                    "method": "POST",
                    "url": f"{canary_url}/v1/generate",
                    "timeoutSeconds": timeout,
                    "jsonBody": request_body(definition, case),
                },
            )
        )
    return metrics
