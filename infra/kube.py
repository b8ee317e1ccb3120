"""Small builders for Kubernetes manifests shared by the components.

Why: probes, labels and resource blocks look the same everywhere; writing them once
keeps each component about its concern. Plain dicts in Kubernetes' own camelCase, so
what the program declares reads like the manifests ``mlcicd infra render`` writes.
"""

from __future__ import annotations

import math
from typing import Any

PART_OF = {"app.kubernetes.io/part-of": "mlcicd"}
# Tells pulumi-kubernetes not to wait for the object's readiness: set where readiness
# belongs to another resource that Pulumi does wait for (or, for a Rollout's Services,
# to Argo Rollouts and `mlcicd deploy wait`).
SKIP_AWAIT = "pulumi.com/skipAwait"


def labels(app: str) -> dict[str, str]:
    return {"app": app, **PART_OF}


def meta(name: str, namespace: Any, app: str) -> dict[str, Any]:
    """``namespace`` is usually the Namespace resource's name Output (an implicit dependency)."""
    return {"name": name, "namespace": namespace, "labels": labels(app)}


def skip_await(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` with the ``pulumi.com/skipAwait: "true"`` annotation added."""
    annotations = {**metadata.get("annotations", {}), SKIP_AWAIT: "true"}
    return {**metadata, "annotations": annotations}


def http_probe(path: str, port: int | str, period_s: int = 10, failures: int = 3) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period_s,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity (``4``, ``2.5``, ``500m``) in cores."""
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def whole_cpus(quantity: str) -> int:
    """A CPU quantity (``4``, ``2.5``, ``500m``) as whole cores, at least one.

    Why: torch sizes its thread pool from the node's cores, not the pod's request;
    on a shared node more threads than cores spin at barriers (measured locally:
    p99 4.8 s against 1.1 s), so the pod's ``OMP_NUM_THREADS`` comes from this.
    """
    return max(1, math.floor(cpu_cores(quantity)))


def resources(cpu: str, memory: str, gpus: int = 0) -> dict[str, Any]:
    """Requests with a memory limit equal to the request; GPUs in both (Kubernetes' rule)."""
    requests: dict[str, Any] = {"cpu": cpu, "memory": memory}
    limits: dict[str, Any] = {"memory": memory}
    if gpus:
        requests["nvidia.com/gpu"] = str(gpus)
        limits["nvidia.com/gpu"] = str(gpus)
    return {"requests": requests, "limits": limits}


def pvc_template(name: str, size: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
}
