"""Load the Kubernetes client configuration for the commands that talk to the cluster.

Why one function: ``mlcicd deploy`` and ``mlcicd rollback`` must find the cluster the
same way. The CI runners are pods in the cluster they deploy to, with a service
account and no kubeconfig, so the in-cluster config comes first; a developer's
machine falls through to ``$KUBECONFIG`` / ``~/.kube/config``. An explicit
``--kubeconfig`` or ``--context`` means exactly that file/context and nothing else.

Left out: exec/OIDC plugin set-up (the ``kubernetes`` package handles what the
kubeconfig names) and choosing a namespace from the kubeconfig (commands take
``--namespace``).
"""

from __future__ import annotations

from typing import Any


class KubeConfigError(RuntimeError):
    """No usable Kubernetes configuration; the message says what was tried."""


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def api_error_message(exc: Exception) -> str:
    """One line for an ``ApiException`` or a connection error (never a traceback)."""
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    if status is not None:
        return f"Kubernetes API answered {status} {reason or ''}".strip()
    return f"Kubernetes API unreachable or refused: {_first_line(exc)}"


def load_kubernetes_config(kubeconfig: str | None = None, context: str | None = None) -> None:
    """Configure the ``kubernetes`` package's default client, or raise KubeConfigError."""
    from kubernetes import config as kube_config

    config: Any = kube_config  # untyped package
    if kubeconfig or context:
        try:
            config.load_kube_config(config_file=kubeconfig, context=context)
        except Exception as exc:
            where = kubeconfig or "the default kubeconfig"
            raise KubeConfigError(f"cannot load {where}: {_first_line(exc)}") from exc
        return
    try:
        config.load_incluster_config()
        return
    except Exception as in_cluster:
        try:
            config.load_kube_config()
        except Exception as from_file:
            raise KubeConfigError(
                "no Kubernetes configuration found: not in a cluster "
                f"({_first_line(in_cluster)}) and no kubeconfig "
                f"($KUBECONFIG or ~/.kube/config: {_first_line(from_file)})"
            ) from from_file
