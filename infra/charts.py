"""Helm charts the program installs, pinned (chart, repository, version), and one helper.

Why one place: chart upgrades are reviewed together, and the tests check in the
recorded releases that none floats on "latest". OCI charts carry their registry
in the chart reference.

Versions checked on 2026-11-27 against published evidence (no chart repository is
reachable from CI, so not by ``helm pull``): nvidia-device-plugin 0.17.0 (release
v0.17.0, NVIDIA/k8s-device-plugin PR 1029), gha-runner-scale-set(-controller)
0.9.3 (actions/actions-runner-controller release gha-runner-scale-set-0.9.3),
argo-rollouts 2.38.0 (argo-helm chart release, app v1.7.x), kube-prometheus-stack
65.1.1 (prometheus-community release, prometheus-operator v0.77.1). The values
each component sets are not checked against the charts' schemas.

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


def release(
    name: str,
    chart: Chart,
    namespace: pulumi.Input[str],
    values: Mapping[str, Any],
    opts: pulumi.ResourceOptions,
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
        values=dict(values),
        opts=opts,
    )
