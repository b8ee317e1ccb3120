"""Argo Rollouts canary analysis, rendered from the pipeline definition.

Why a pure module: the AnalysisTemplate and the Rollout's ``strategy.canary.steps`` must
ask exactly what ``mlcicd canary analyze`` asks (same PromQL from ``pipeline.canary.promql``)
and judge by exactly the definition's numbers, including the environment overrides
(prod aborts on the first failed measurement, staging tolerates one). Nothing here has a
threshold of its own, and nothing needs Pulumi, so tests compare it with the definition.

The canary is judged against the stable in the same window of the same scrape: the
Rollout stamps ``version: stable`` / ``version: canary`` on its pods
(``stableMetadata``/``canaryMetadata``), so each comparison is one PromQL expression over
both selectors (``pipeline.canary.promql.RelativeQueries``: the Agresti-Caffo bound on the
error-rate increase, the p99 and TTFT p99 ratios). The absolute limits stay as ceilings.

Empty and NaN results: the queries return an empty vector when there was no traffic
(``pipeline.canary.promql`` guards the denominators) and ``histogram_quantile`` gives NaN on an
empty histogram. Each metric has a success AND a failure condition that both require a
real number, so empty/NaN matches neither and Argo records the measurement as
*Inconclusive* (counted against ``inconclusiveLimit``), never as success.

Golden prompts (:mod:`infra.golden`): web metrics send the golden suite to the canary
Service and check the answers, their TTFT and the served model revision, so the
analysis judges what the canary says, not only how fast it says it.

Left out: job providers and dry-run metrics; the analysis runs inline after each
pause (as in the reference design), not as background analysis.
"""

from __future__ import annotations

from typing import Any

from infra import golden, kube
from pipeline.canary.analysis import Check, checks_from_gate
from pipeline.canary.measure import query_map
from pipeline.canary.promql import CanaryQueries, RelativeQueries
from pipeline.definition import PipelineDefinition

ANALYSIS_TEMPLATE_NAME = "inference-canary"
ROLLOUT_NAME = "inference-server"
# Argo pins this Service to the canary ReplicaSet; the golden prompts go there.
CANARY_SERVICE = f"{ROLLOUT_NAME}-canary"
CANARY_URL = f"http://{CANARY_SERVICE}.{{{{args.namespace}}}}.svc.cluster.local"
# The revision CI's `deploy set-image` pinned; the analysis checks the canary serves it.
MODEL_REVISION_ANNOTATION = "mlcicd.io/model-revision"
# The `job` label Prometheus gives the inference pods (what `mlcicd canary analyze` selects).
SCRAPE_JOB = "inference"
ARGO_API_VERSION = "argoproj.io/v1alpha1"
# The Rollout passes these; the selector matches the labels the PodMonitor attaches.
TEMPLATE_ARGS = ("namespace", "app", "model-revision")
CANARY_SELECTOR = 'namespace="{{args.namespace}}", app="{{args.app}}", version="canary"'
STABLE_SELECTOR = 'namespace="{{args.namespace}}", app="{{args.app}}", version="stable"'

_HAS_NUMBER = "len(result) > 0 && !isNaN(result[0])"


def _metric(
    definition: PipelineDefinition,
    name: str,
    query: str,
    success: str,
    failure: str,
    prometheus_address: str,
) -> dict[str, Any]:
    return {
        **golden.metric_schedule(definition, name),
        "successCondition": success,
        "failureCondition": failure,
        "provider": {"prometheus": {"address": prometheus_address, "query": query}},
    }


def _check_metric(
    definition: PipelineDefinition, check: Check, query: str, address: str
) -> dict[str, Any]:
    """Passes when ``result[0] <op> threshold``, fails on the converse, else inconclusive."""
    return _metric(
        definition,
        check.name,
        query,
        success=f"{_HAS_NUMBER} && result[0] {check.op} {check.threshold!r}",
        failure=f"{_HAS_NUMBER} && result[0] {check.converse} {check.threshold!r}",
        prometheus_address=address,
    )


def analysis_metrics(
    definition: PipelineDefinition, prometheus_address: str
) -> list[dict[str, Any]]:
    """Metric names and operators are ``pipeline.canary.checks_from_gate``'s, so Argo and
    ``mlcicd canary analyze`` judge alike."""
    gate = definition.canary
    queries = CanaryQueries(selector=CANARY_SELECTOR, window=gate.window)
    stable = CanaryQueries(selector=STABLE_SELECTOR, window=gate.window)
    relative = RelativeQueries.for_gate(queries, stable, gate)
    query_for = query_map(queries, relative)  # the queries `mlcicd canary analyze` runs
    return [
        # Too few requests is inconclusive, never a failure of the release. Argo counts
        # an unmet successCondition as a failure unless a failureCondition is given, so
        # this one is given and never matches.
        _metric(
            definition,
            "request-count",
            queries.request_count,
            success=f"{_HAS_NUMBER} && result[0] >= {gate.min_requests}",
            failure="false",
            prometheus_address=prometheus_address,
        ),
        *(
            _check_metric(definition, check, query_for[check.name], prometheus_address)
            for check in checks_from_gate(gate)
        ),
        *golden.golden_metrics(definition, CANARY_URL),
    ]


def analysis_template(
    definition: PipelineDefinition, prometheus_address: str, namespace: Any
) -> dict[str, Any]:
    """The AnalysisTemplate manifest for the definition's canary gate."""
    return {
        "apiVersion": ARGO_API_VERSION,
        "kind": "AnalysisTemplate",
        "metadata": {
            "name": ANALYSIS_TEMPLATE_NAME,
            "namespace": namespace,
            "labels": dict(kube.PART_OF),
            "annotations": {
                "mlcicd/definition": f"{definition.profile}/{definition.environment}",
            },
        },
        "spec": {
            "args": [{"name": arg} for arg in TEMPLATE_ARGS],
            "metrics": analysis_metrics(definition, prometheus_address),
        },
    }


def rollout_steps(definition: PipelineDefinition, app: str, namespace: Any) -> list[dict[str, Any]]:
    """``strategy.canary.steps``: setWeight, pause, then analysis, for each canary step.

    The final step (weight 100) has no analysis: reaching it means every earlier
    analysis passed, and Argo promotes.
    """
    analysis = {
        "templates": [{"templateName": ANALYSIS_TEMPLATE_NAME}],
        "args": [
            {"name": "namespace", "value": namespace},
            {"name": "app", "value": app},
            {
                "name": "model-revision",
                "valueFrom": {
                    "fieldRef": {
                        "fieldPath": f"metadata.annotations['{MODEL_REVISION_ANNOTATION}']"
                    }
                },
            },
        ],
    }
    steps: list[dict[str, Any]] = []
    for step in definition.canary.steps:
        steps.append({"setWeight": step.set_weight})
        if step.pause is not None:
            steps.append({"pause": {"duration": step.pause}})
        if step.set_weight < 100:
            steps.append({"analysis": analysis})
    return steps
