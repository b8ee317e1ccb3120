"""Helm charts the program installs, pinned (chart, repository, version), and one helper.

Why one place: chart upgrades are reviewed together, and the tests check in the
recorded releases that none floats on "latest". OCI charts carry their registry
in the chart reference.

Versions checked on 2026-11-27 against published evidence (no chart repository is
reachable from CI, so not by ``helm pull``): nvidia-device-plugin 0.17.0 (release
v0.17.0, NVIDIA/k8s-device-plugin PR 1029), gha-runner-scale-set(-controller)
0.9.3 (actions/actions-runner-controller release gha-runner-scale-set-0.9.3),
argo-rollouts 2.38.0 (argo-helm chart release, app v1.7.x), kube-prometheus-stack
65.1.1 (prometheus-community release, prometheus-operator v0.77.1), external-secrets
0.16.2 (external-secrets/external-secrets@helm-chart-0.16.2:
deploy/charts/external-secrets/Chart.yaml, repository https://charts.external-secrets.io
per its README). The values each component sets are not checked against the charts'
schemas.

Awaits: every release is ``atomic`` (Helm waits until the chart's Deployments,
StatefulSets and DaemonSets are ready, and rolls back otherwise) with an explicit
Helm ``timeout``; Pulumi's own ``customTimeouts`` on the release are that plus a margin,
so the Helm timeout is the one that fires and its message is the one you read.

Left out: chart values (each component owns its values as data).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s


@dataclass(frozen=True)
class Chart:
    chart: str
    version: str
    repo: str | None = None  # None for oci:// charts


_ARC = "oci://ghcr.io/actions/actions-runner-controller-charts"
NVIDIA_DEVICE_PLUGIN = Chart(
    "nvidia-device-plugin", "0.17.0", "https://nvidia.github.io/k8s-device-plugin"
)
ARC_CONTROLLER = Chart(f"{_ARC}/gha-runner-scale-set-controller", "0.9.3")
ARC_SCALE_SET = Chart(f"{_ARC}/gha-runner-scale-set", "0.9.3")
ARGO_ROLLOUTS = Chart("argo-rollouts", "2.38.0", "https://argoproj.github.io/argo-helm")
KUBE_PROMETHEUS_STACK = Chart(
    "kube-prometheus-stack", "65.1.1", "https://prometheus-community.github.io/helm-charts"
)
EXTERNAL_SECRETS = Chart("external-secrets", "0.16.2", "https://charts.external-secrets.io")

HELM_TIMEOUT_S = 600
# Pulumi's limit on a release: Helm's own timeout plus time for the chart download
# and Helm's rollback of an atomic release.
RELEASE_TIMEOUTS = pulumi.CustomTimeouts(create="15m", update="15m", delete="10m")


def release(
    name: str,
    chart: Chart,
    namespace: pulumi.Input[str],
    values: Mapping[str, Any],
    opts: pulumi.ResourceOptions,
    timeout_s: int = HELM_TIMEOUT_S,
) -> k8s.helm.v3.Release:
    """A Helm release with a fixed release name (so service names are predictable)."""
    return k8s.helm.v3.Release(
        name,
        name=name,
        chart=chart.chart,
        version=chart.version,
        repository_opts=None if chart.repo is None else {"repo": chart.repo},
        namespace=namespace,
        create_namespace=True,
        atomic=True,
        cleanup_on_fail=True,
        timeout=timeout_s,
        values=dict(values),
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(custom_timeouts=RELEASE_TIMEOUTS)
        ),
    )
