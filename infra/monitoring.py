"""Prometheus (kube-prometheus-stack), the inference server's scrape config, rules, dashboard.

Why a PodMonitor with relabelling: Argo Rollouts stamps ``version: canary`` or
``version: stable`` on the pods it manages (``canaryMetadata``/``stableMetadata`` in
the Rollout), and the PodMonitor copies that pod label onto every scraped series, so
``pipeline.canary.promql`` can tell canary from stable by a plain ``version`` label — the same
label the local runner's Prometheus sets.

Recording and alert rules are built from ``pipeline.canary.promql.CanaryQueries`` and the
definition's canary thresholds (never numbers of their own). The PodMonitor and the
PrometheusRule are custom resources whose CRDs the chart installs, so both depend on
the Helm release explicitly.

Left out: Alertmanager routes (receivers are site-specific), remote write, long-term
storage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra import charts, kube
from infra.analysis import SCRAPE_JOB
from pipeline.canary.analysis import checks_from_gate
from pipeline.canary.promql import (
    REQUEST_DURATION,
    REQUESTS_TOTAL,
    TIME_TO_FIRST_TOKEN,
    CanaryQueries,
)
from pipeline.definition import PipelineDefinition

NAMESPACE = "monitoring"
RELEASE = "kube-prometheus"
PROMETHEUS_URL = f"http://{RELEASE}-prometheus.{NAMESPACE}.svc.cluster.local:9090"
MONITORING_API = "monitoring.coreos.com/v1"
# Canary check name -> the recording rule (below) that holds its value.
_RECORDS = {
    "success-rate": "success_rate",
    "error-rate": "error_rate",
    "p99-latency": "latency_p99_seconds",
    "ttft-p99": "ttft_p99_seconds",
}


@dataclass(frozen=True)
class MonitoringArgs:
    definition: PipelineDefinition
    app: str
    app_namespace: pulumi.Input[str]
    retention: str
    grafana: bool
    grafana_admin_password: pulumi.Output[str] | None


def recording_and_alert_rules(definition: PipelineDefinition, app: str) -> list[dict[str, Any]]:
    """Rule groups: one recording group and one alert group per version (stable, canary)."""
    gate = definition.canary
    groups: list[dict[str, Any]] = []
    for version in ("stable", "canary"):
        queries = CanaryQueries(f'app="{app}", version="{version}"', gate.window)
        prefix = f"mlcicd:{version}"
        groups.append(
            {
                "name": f"mlcicd-{version}-recording",
                "interval": gate.interval,
                "rules": [
                    {"record": f"{prefix}:request_count", "expr": queries.request_count},
                    {"record": f"{prefix}:success_rate", "expr": queries.success_rate},
                    {"record": f"{prefix}:error_rate", "expr": queries.error_rate},
                    {
                        "record": f"{prefix}:latency_p99_seconds",
                        "expr": queries.p99_latency_seconds,
                    },
                    {"record": f"{prefix}:ttft_p99_seconds", "expr": queries.ttft_p99_seconds},
                ],
            }
        )
        enough = f"{prefix}:request_count >= {gate.min_requests}"
        # An alert fires where `mlcicd canary analyze` would fail the measurement.
        checks = [
            (
                "".join(part.capitalize() for part in check.name.split("-")),
                f"{prefix}:{_RECORDS[check.name]} {check.converse} {check.threshold!r}",
            )
            for check in checks_from_gate(gate, relative=False)
        ]
        groups.append(
            {
                "name": f"mlcicd-{version}-alerts",
                "rules": [
                    {
                        "alert": f"Inference{version.capitalize()}{alert}Breached",
                        "expr": f"({expr}) and on() ({enough})",
                        "for": gate.interval,
                        "labels": {"severity": "page" if version == "stable" else "ticket"},
                        "annotations": {
                            "summary": f"{app} {version}: {expr} over {gate.window}",
                        },
                    }
                    for alert, expr in checks
                ],
            }
        )
    return groups


def dashboard(app: str) -> dict[str, Any]:
    """A small Grafana dashboard over the server's documented metric names."""
    sel = f'app="{app}"'

    def panel(index: int, title: str, expr: str, unit: str) -> dict[str, Any]:
        return {
            "id": index,
            "type": "timeseries",
            "title": title,
            "gridPos": {"x": (index % 2) * 12, "y": (index // 2) * 8, "w": 12, "h": 8},
            "fieldConfig": {"defaults": {"unit": unit}},
            "targets": [{"expr": expr, "legendFormat": "{{version}}"}],
        }

    def p99(histogram: str) -> str:
        rate = f"rate({histogram}_bucket{{{sel}}}[5m])"
        return f"histogram_quantile(0.99, sum by (le, version) ({rate}))"

    return {
        "title": "mlcicd inference",
        "uid": "mlcicd-inference",
        "schemaVersion": 39,
        "panels": [
            panel(
                0, "Requests/s", f"sum by (version) (rate({REQUESTS_TOTAL}{{{sel}}}[5m]))", "reqps"
            ),
            panel(
                1,
                "Errors/s",
                f'sum by (version) (rate({REQUESTS_TOTAL}{{{sel}, status="error"}}[5m]))',
                "reqps",
            ),
            panel(2, "p99 latency", p99(REQUEST_DURATION), "s"),
            panel(3, "p99 time to first token", p99(TIME_TO_FIRST_TOKEN), "s"),
            panel(
                4,
                "Generated tokens/s",
                f"sum by (version) (rate(inference_generated_tokens_total{{{sel}}}[5m]))",
                "short",
            ),
            panel(5, "Queue depth", f"sum by (version) (inference_queue_depth{{{sel}}})", "short"),
        ],
    }


class Monitoring(pulumi.ComponentResource):
    prometheus_url: str
    release: k8s.helm.v3.Release

    def __init__(
        self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlcicd:infra:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        namespace = k8s.core.v1.Namespace(
            NAMESPACE, metadata={"name": NAMESPACE, "labels": kube.PART_OF}, opts=child
        )
        ns = namespace.metadata["name"]
        spec = {
            "retention": args.retention,
            "ruleSelectorNilUsesHelmValues": False,
            "podMonitorSelectorNilUsesHelmValues": False,
            "serviceMonitorSelectorNilUsesHelmValues": False,
        }
        grafana: dict[str, Any] = {"enabled": args.grafana}
        if args.grafana:
            secret = k8s.core.v1.Secret(
                "grafana-admin",
                metadata={"name": "grafana-admin", "namespace": ns},
                string_data={
                    "admin-user": "admin",
                    "admin-password": args.grafana_admin_password or "",
                },
                opts=child,
            )
            grafana["admin"] = {"existingSecret": secret.metadata["name"]}
            grafana["sidecar"] = {"dashboards": {"enabled": True, "searchNamespace": "ALL"}}
        self.release = charts.release(
            RELEASE,
            charts.KUBE_PROMETHEUS_STACK,
            ns,
            {
                "fullnameOverride": RELEASE,
                "prometheus": {"prometheusSpec": spec},
                "grafana": grafana,
            },
            child,
        )
        after_crds = pulumi.ResourceOptions(parent=self, depends_on=[self.release])
        k8s.apiextensions.CustomResource(
            f"{args.app}-pods",
            api_version=MONITORING_API,
            kind="PodMonitor",
            metadata=kube.meta(args.app, args.app_namespace, args.app),
            spec={
                "selector": {"matchLabels": {"app": args.app}},
                "podMetricsEndpoints": [
                    {
                        "port": "http",
                        "path": "/metrics",
                        "interval": "15s",
                        "relabelings": [
                            {
                                "sourceLabels": ["__meta_kubernetes_pod_label_version"],
                                "targetLabel": "version",
                            },
                            {
                                "sourceLabels": ["__meta_kubernetes_pod_label_app"],
                                "targetLabel": "app",
                            },
                            # The job label `mlcicd canary analyze` selects by default.
                            {"targetLabel": "job", "replacement": SCRAPE_JOB},
                        ],
                    }
                ],
            },
            opts=after_crds,
        )
        k8s.apiextensions.CustomResource(
            f"{args.app}-rules",
            api_version=MONITORING_API,
            kind="PrometheusRule",
            metadata=kube.meta(f"{args.app}-canary", args.app_namespace, args.app),
            spec={"groups": recording_and_alert_rules(args.definition, args.app)},
            opts=after_crds,
        )
        if args.grafana:
            k8s.core.v1.ConfigMap(
                "inference-dashboard",
                metadata={
                    "name": "inference-dashboard",
                    "namespace": ns,
                    "labels": {"grafana_dashboard": "1", **kube.PART_OF},
                },
                data={"inference.json": json.dumps(dashboard(args.app), indent=2)},
                opts=child,
            )
        self.prometheus_url = PROMETHEUS_URL
        self.register_outputs({"prometheusUrl": self.prometheus_url})
