"""The AnalysisTemplate and the Rollout's steps, rendered from the definition."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from infra.analysis import (
    ANALYSIS_TEMPLATE_NAME,
    CANARY_SELECTOR,
    analysis_template,
    rollout_steps,
)
from pipeline.canary.promql import CanaryQueries
from pipeline.definition import PipelineDefinition, load_definition

PROM = "http://prometheus:9090"


def _argo_eval(condition: str, result: list[float]) -> bool:
    """Evaluate the subset of Argo's expr language the template uses, as Python."""
    python = condition.replace("&&", " and ").replace("||", " or ").replace("false", "False")
    python = re.sub(r"!(?!=)", " not ", python)
    return bool(
        eval(python, {"__builtins__": {}}, {"len": len, "isNaN": math.isnan, "result": result})
    )


def _outcome(metric: dict[str, Any], result: list[float]) -> str:
    if _argo_eval(metric["failureCondition"], result):
        return "Failed"
    if _argo_eval(metric["successCondition"], result):
        return "Successful"
    return "Inconclusive"


@pytest.fixture(params=["staging", "prod"])
def definition(request: pytest.FixtureRequest) -> PipelineDefinition:
    return load_definition("gpu", request.param)


@pytest.fixture
def canary_definition() -> PipelineDefinition:
    """An environment with canary steps (staging rolls straight to 100%)."""
    return load_definition("gpu", "prod")


def _metrics(definition: PipelineDefinition) -> dict[str, dict[str, Any]]:
    """The Prometheus metrics (the golden-prompt web metrics: tests/infra/test_golden.py)."""
    template = analysis_template(definition, PROM, "ns")
    return {m["name"]: m for m in template["spec"]["metrics"] if "prometheus" in m["provider"]}


def test_limits_come_from_the_environment(definition: PipelineDefinition) -> None:
    gate = definition.canary
    for metric in _metrics(definition).values():
        assert metric["interval"] == gate.interval
        assert metric["count"] == gate.count
        assert metric["failureLimit"] == gate.failure_limit
        assert metric["inconclusiveLimit"] == gate.inconclusive_limit
        assert metric["consecutiveErrorLimit"] == gate.consecutive_error_limit
        assert metric["provider"]["prometheus"]["address"] == PROM


def test_prod_is_stricter_than_staging() -> None:
    prod = _metrics(load_definition("gpu", "prod"))["success-rate"]
    staging = _metrics(load_definition("gpu", "staging"))["success-rate"]
    assert prod["failureLimit"] < staging["failureLimit"]


def test_queries_are_the_shared_promql(definition: PipelineDefinition) -> None:
    queries = CanaryQueries(CANARY_SELECTOR, definition.canary.window)
    metrics = _metrics(definition)
    assert metrics["request-count"]["provider"]["prometheus"]["query"] == queries.request_count
    assert metrics["success-rate"]["provider"]["prometheus"]["query"] == queries.success_rate
    assert metrics["error-rate"]["provider"]["prometheus"]["query"] == queries.error_rate
    assert metrics["p99-latency"]["provider"]["prometheus"]["query"] == queries.p99_latency_seconds
    assert metrics["ttft-p99"]["provider"]["prometheus"]["query"] == queries.ttft_p99_seconds
    assert "{{args.namespace}}" in queries.request_count


def test_thresholds_judge_like_the_definition(definition: PipelineDefinition) -> None:
    gate = definition.canary
    m = _metrics(definition)
    assert _outcome(m["success-rate"], [gate.min_success_rate]) == "Successful"
    assert _outcome(m["success-rate"], [gate.min_success_rate - 0.001]) == "Failed"
    assert _outcome(m["error-rate"], [gate.max_error_rate * 0.99]) == "Successful"
    assert _outcome(m["error-rate"], [gate.max_error_rate]) == "Failed"
    assert _outcome(m["p99-latency"], [gate.max_p99_latency_s * 1.01]) == "Failed"
    assert _outcome(m["ttft-p99"], [gate.max_ttft_p99_s * 0.5]) == "Successful"


def test_empty_and_nan_are_inconclusive_never_success(definition: PipelineDefinition) -> None:
    for name, metric in _metrics(definition).items():
        assert _outcome(metric, []) == "Inconclusive", name
        if name != "request-count":
            assert _outcome(metric, [math.nan]) == "Inconclusive", name


def test_too_few_requests_is_inconclusive(definition: PipelineDefinition) -> None:
    metric = _metrics(definition)["request-count"]
    minimum = definition.canary.min_requests
    assert _outcome(metric, [minimum - 1]) == "Inconclusive"
    assert _outcome(metric, [minimum]) == "Successful"
    assert _outcome(metric, [math.nan]) == "Inconclusive"


def test_argo_and_mlcicd_canary_analyze_judge_alike(definition: PipelineDefinition) -> None:
    from pipeline.canary.analysis import checks_from_gate

    metrics = _metrics(definition)
    for check in checks_from_gate(definition.canary):
        for value in (check.threshold * 0.5, check.threshold, check.threshold * 1.5):
            expected = "Successful" if check.holds(value) else "Failed"
            assert _outcome(metrics[check.name], [value]) == expected, (check, value)


def test_the_canary_is_judged_against_the_stable_in_one_query(
    definition: PipelineDefinition,
) -> None:
    """Each comparison is one PromQL expression over both versions, the one
    `mlcicd canary analyze --canary canary --stable stable` runs."""
    from infra.analysis import STABLE_SELECTOR
    from pipeline.canary.promql import RelativeQueries

    gate = definition.canary
    relative = RelativeQueries.for_gate(
        CanaryQueries(CANARY_SELECTOR, gate.window),
        CanaryQueries(STABLE_SELECTOR, gate.window),
        gate,
    )
    m = _metrics(definition)
    query = {name: metric["provider"]["prometheus"]["query"] for name, metric in m.items()}
    assert query["error-rate-vs-stable"] == relative.error_rate_increase_lower
    assert query["latency-vs-stable"] == relative.latency_ratio
    assert query["ttft-vs-stable"] == relative.ttft_ratio
    for name in ("error-rate-vs-stable", "latency-vs-stable", "ttft-vs-stable"):
        assert 'version="stable"' in query[name] and 'version="canary"' in query[name]
    # A stable as slow as the canary passes; a canary past the ratio fails.
    assert _outcome(m["latency-vs-stable"], [1.0]) == "Successful"
    assert _outcome(m["latency-vs-stable"], [gate.max_latency_ratio]) == "Failed"
    assert _outcome(m["ttft-vs-stable"], [gate.max_ttft_ratio * 2]) == "Failed"
    # Errors: a lower bound at or under the allowed increase passes; above it fails.
    bound = gate.max_error_rate_increase
    assert _outcome(m["error-rate-vs-stable"], [bound - 0.01]) == "Successful"
    assert _outcome(m["error-rate-vs-stable"], [bound]) == "Successful"
    assert _outcome(m["error-rate-vs-stable"], [bound + 0.001]) == "Failed"


def test_rollout_steps_walk_the_definition(canary_definition: PipelineDefinition) -> None:
    definition = canary_definition
    steps = rollout_steps(definition, "inference-server", "ns")
    expected: list[dict[str, Any]] = []
    for step in definition.canary.steps:
        expected.append({"setWeight": step.set_weight})
        if step.pause:
            expected.append({"pause": {"duration": step.pause}})
        if step.set_weight < 100:
            expected.append({"analysis": steps[len(expected)]["analysis"]})
    assert steps == expected
    analyses = [s["analysis"] for s in steps if "analysis" in s]
    assert all(a["templates"] == [{"templateName": ANALYSIS_TEMPLATE_NAME}] for a in analyses)
    assert {"name": "app", "value": "inference-server"} in analyses[0]["args"]


def test_prometheus_rules_use_the_shared_queries_and_thresholds(
    definition: PipelineDefinition,
) -> None:
    from infra.monitoring import recording_and_alert_rules

    groups = {g["name"]: g for g in recording_and_alert_rules(definition, "inference-server")}
    canary = CanaryQueries('app="inference-server", version="canary"', definition.canary.window)
    records = {r["record"]: r["expr"] for r in groups["mlcicd-canary-recording"]["rules"]}
    assert records["mlcicd:canary:success_rate"] == canary.success_rate
    assert records["mlcicd:canary:ttft_p99_seconds"] == canary.ttft_p99_seconds
    alerts = " ".join(r["expr"] for r in groups["mlcicd-canary-alerts"]["rules"])
    gate = definition.canary
    assert f"success_rate < {gate.min_success_rate!r}" in alerts
    assert f"error_rate >= {gate.max_error_rate!r}" in alerts
    assert f"request_count >= {gate.min_requests}" in alerts
