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

from inference.metrics import (
    GENERATED_TOKENS_TOTAL,
    QUEUE_DEPTH,
    REQUEST_DURATION,
    REQUESTS_TOTAL,
    TIME_TO_FIRST_TOKEN,
)
from infra import charts, kube
from infra.analysis import SCRAPE_JOB
from infra.cluster_secrets import SecretSource
from pipeline.canary.analysis import checks_from_gate
from pipeline.canary.promql import CanaryQueries
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
    secret_source: SecretSource


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
                f"sum by (version) (rate({GENERATED_TOKENS_TOTAL}{{{sel}}}[5m]))",
                "short",
            ),
            panel(5, "Queue depth", f"sum by (version) ({QUEUE_DEPTH}{{{sel}}})", "short"),
        ],
    }


def pod_monitor_spec(app: str) -> dict[str, Any]:
    """Scrape ``app``'s pods on their ``http`` port, keeping ``version`` and ``app``."""
    return {
        "selector": {"matchLabels": {"app": app}},
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
    }


class Monitoring(pulumi.ComponentResource):
    prometheus_url: str
    release: k8s.helm.v3.Release

    def __init__(
        self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlcicd:infra:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # The monitoring namespace and the release are cluster singletons: fixed names.
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
        self.release = charts.release(
            RELEASE,
            charts.KUBE_PROMETHEUS_STACK,
            ns,
            {
                "fullnameOverride": RELEASE,
                "prometheus": {"prometheusSpec": spec},
                "grafana": self._grafana(name, args, ns),
            },
            child,
        )
        self._scrape_and_rules(args)
        self.prometheus_url = PROMETHEUS_URL
        self.register_outputs({"prometheusUrl": self.prometheus_url})

    def _grafana(self, name: str, args: MonitoringArgs, ns: pulumi.Input[str]) -> dict[str, Any]:
        """Grafana's chart values; with Grafana on, its admin Secret and the dashboard."""
        if not args.grafana:
            return {"enabled": False}
        secret = args.secret_source.secret(
            f"{name}-grafana-admin",
            "grafana-admin",
            ns,
            {"admin-user": "admin", "admin-password": args.grafana_admin_password},
            pulumi.ResourceOptions(parent=self, aliases=[pulumi.Alias(name="grafana-admin")]),
            kube.PART_OF,
        )
        k8s.core.v1.ConfigMap(
            f"{name}-dashboard",
            metadata={
                "name": "inference-dashboard",
                "namespace": ns,
                "labels": {"grafana_dashboard": "1", **kube.PART_OF},
            },
            data={"inference.json": json.dumps(dashboard(args.app), indent=2)},
            opts=pulumi.ResourceOptions(
                parent=self, aliases=[pulumi.Alias(name="inference-dashboard")]
            ),
        )
        return {
            "enabled": True,
            "admin": {"existingSecret": secret},
            "sidecar": {"dashboards": {"enabled": True, "searchNamespace": "ALL"}},
        }

    def _scrape_and_rules(self, args: MonitoringArgs) -> None:
        """The PodMonitor and PrometheusRule: custom resources, so after the chart's CRDs."""
        after_crds = pulumi.ResourceOptions(parent=self, depends_on=[self.release])
        k8s.apiextensions.CustomResource(
            f"{args.app}-pods",
            api_version=MONITORING_API,
            kind="PodMonitor",
            metadata=kube.meta(args.app, args.app_namespace, args.app),
            spec=pod_monitor_spec(args.app),
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
