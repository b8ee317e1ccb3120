"""Small builders for Kubernetes manifests shared by the components.

Why: probes, labels and resource blocks look the same everywhere; writing them once
keeps each component about its concern. Plain dicts in Kubernetes' own camelCase, so
what the program declares reads like the manifests ``mlcicd infra render`` writes.
"""

from __future__ import annotations

from typing import Any

PART_OF = {"app.kubernetes.io/part-of": "mlcicd"}


def labels(app: str) -> dict[str, str]:
    return {"app": app, **PART_OF}


def meta(name: str, namespace: Any, app: str) -> dict[str, Any]:
    """``namespace`` is usually the Namespace resource's name Output (an implicit dependency)."""
    return {"name": name, "namespace": namespace, "labels": labels(app)}


def http_probe(path: str, port: int | str, period_s: int = 10, failures: int = 3) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period_s,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


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
