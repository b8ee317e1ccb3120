"""Roll back an Argo Rollout through the Kubernetes API, the way the kubectl plugin does.

Why not shell out to ``kubectl argo rollouts``: the plugin is one more binary
in the runner image, and its two commands are small API calls that we can
test exactly. Both are reimplemented from argo-rollouts
``pkg/kubectl-argo-rollouts/cmd/abort/abort.go`` and ``cmd/undo/undo.go``:

- **abort** (a canary in progress): merge-patch ``{"status": {"abort": true}}``
  on the ``status`` subresource, falling back to the main resource when the
  CRD has no status subresource (404). The controller then sends all traffic
  back to the stable ReplicaSet.
- **undo** (a release already fully promoted): find the Rollout's ReplicaSets
  (same namespace, its selector, owned by its UID), take the one with the
  second-highest ``rollout.argoproj.io/revision`` (or ``--to-revision``), drop
  its ``rollouts-pod-template-hash`` label and JSON-patch it into
  ``/spec/template``. Nothing is sent when the template already matches, so a
  rerun with ``to_revision`` is a no-op.

The clients are the ``kubernetes`` package's ``CustomObjectsApi`` and
``AppsV1Api``; anything with the same methods works (the tests pass fakes,
there being no cluster here). Left out: ``retry``/``promote`` and the
annotation bookkeeping ``undo`` does for ``kubectl apply`` users.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

GROUP = "argoproj.io"
VERSION = "v1alpha1"
PLURAL = "rollouts"
REVISION_ANNOTATION = "rollout.argoproj.io/revision"
HASH_LABEL = "rollouts-pod-template-hash"
ABORT_PATCH: dict[str, Any] = {"status": {"abort": True}}
# The client defaults every custom-object patch to a merge patch; undo's list of
# operations must be sent as a JSON patch, as the plugin does.
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

Action = Literal["abort", "undo"]


class RolloutError(RuntimeError):
    """The rollout could not be found or rolled back; the message says which and why."""


class CustomObjects(Protocol):
    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any: ...

    def patch_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any,
        _content_type: str | None = None,
    ) -> Any: ...

    def patch_namespaced_custom_object_status(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any,
        _content_type: str | None = None,
    ) -> Any: ...


class ReplicaSets(Protocol):
    def list_namespaced_replica_set(self, namespace: str, label_selector: str = "") -> Any: ...


@dataclass(frozen=True)
class RolloutResult:
    action: Action
    name: str
    namespace: str
    detail: str
    changed: bool


def _status_code(exc: Exception) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def get_rollout(api: CustomObjects, namespace: str, name: str) -> dict[str, Any]:
    try:
        rollout = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except Exception as exc:
        if _status_code(exc) == 404:
            raise RolloutError(f"rollout {namespace}/{name} not found") from exc
        raise
    return dict(rollout)


def canary_in_progress(rollout: dict[str, Any]) -> bool:
    """The controller's view: the current pod hash is not yet the stable one."""
    status = rollout.get("status") or {}
    current, stable = status.get("currentPodHash"), status.get("stableRS")
    return bool(current and stable and current != stable)


def abort(api: CustomObjects, namespace: str, name: str) -> RolloutResult:
    try:
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, ABORT_PATCH, _content_type=MERGE_PATCH
        )
    except Exception as exc:
        if _status_code(exc) != 404:
            raise
        api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, ABORT_PATCH, _content_type=MERGE_PATCH
        )
    return RolloutResult("abort", name, namespace, "status.abort=true", changed=True)


def _to_dict(obj: Any) -> dict[str, Any]:
    """kubernetes model objects -> the JSON the API server speaks (camelCase)."""
    if isinstance(obj, dict):
        return obj
    from kubernetes.client import ApiClient

    api_client: Any = ApiClient()  # the client's own camelCase serialiser (untyped)
    serialised: dict[str, Any] = api_client.sanitize_for_serialization(obj)
    return serialised


def _owned_replica_sets(apps: ReplicaSets, rollout: dict[str, Any]) -> list[dict[str, Any]]:
    meta = rollout.get("metadata") or {}
    labels = ((rollout.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    listed = apps.list_namespaced_replica_set(meta.get("namespace", ""), label_selector=selector)
    items = [_to_dict(rs) for rs in (listed.items if hasattr(listed, "items") else listed)]
    uid = meta.get("uid")
    return [
        rs
        for rs in items
        if any(
            ref.get("controller") and ref.get("uid") == uid
            for ref in (rs.get("metadata") or {}).get("ownerReferences") or []
        )
    ]


def _revision(rs: dict[str, Any]) -> int | None:
    value = ((rs.get("metadata") or {}).get("annotations") or {}).get(REVISION_ANNOTATION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def revision_to_restore(
    replica_sets: list[dict[str, Any]], name: str, to_revision: int = 0
) -> dict[str, Any]:
    """undo.go rolloutRevision: the given revision, or the second-newest by revision."""
    numbered = [(rev, rs) for rs in replica_sets if (rev := _revision(rs)) is not None]
    if to_revision:
        for rev, rs in numbered:
            if rev == to_revision:
                return rs
        raise RolloutError(f"rollout {name}: revision {to_revision} not found in history")
    numbered.sort(key=lambda pair: pair[0], reverse=True)
    if len(numbered) < 2:
        raise RolloutError(f"rollout {name}: no previous revision in history")
    return numbered[1][1]


def _without_hash(template: dict[str, Any]) -> dict[str, Any]:
    metadata = dict(template.get("metadata") or {})
    labels = {k: v for k, v in (metadata.get("labels") or {}).items() if k != HASH_LABEL}
    metadata["labels"] = labels
    return {**template, "metadata": metadata}


def undo(
    api: CustomObjects, apps: ReplicaSets, namespace: str, name: str, to_revision: int = 0
) -> RolloutResult:
    rollout = get_rollout(api, namespace, name)
    rollout.setdefault("metadata", {}).setdefault("namespace", namespace)
    target = revision_to_restore(_owned_replica_sets(apps, rollout), name, to_revision)
    revision = _revision(target)
    template = _without_hash((target.get("spec") or {}).get("template") or {})
    current = _without_hash((rollout.get("spec") or {}).get("template") or {})
    if template == current:
        detail = f"skipped rollback (current template already matches revision {revision})"
        return RolloutResult("undo", name, namespace, detail, changed=False)
    patch = [{"op": "replace", "path": "/spec/template", "value": template}]
    api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, patch, _content_type=JSON_PATCH
    )
    return RolloutResult("undo", name, namespace, f"restored revision {revision}", changed=True)


def roll_back(
    api: CustomObjects,
    apps: ReplicaSets,
    namespace: str,
    name: str,
    action: Action | Literal["auto"] = "auto",
    to_revision: int = 0,
) -> RolloutResult:
    """Abort a canary in progress, else undo to the previous revision (``auto``)."""
    if action == "auto":
        action = "abort" if canary_in_progress(get_rollout(api, namespace, name)) else "undo"
    if action == "abort":
        get_rollout(api, namespace, name)  # a clear "not found" before patching
        return abort(api, namespace, name)
    return undo(api, apps, namespace, name, to_revision)
