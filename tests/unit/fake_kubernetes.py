"""A fake of the two ``kubernetes`` client APIs that rollback and deploy use (no cluster here).

It has the real clients' method names and arguments, returns the real model
objects for ReplicaSets, raises the real ``ApiException``, records every call
with its body and content type, and applies patches to its stored Rollout so a
second call sees the first one's effect. A JSON patch supports ``replace`` and
``test`` (a failed test is the API server's 422, and nothing is applied); list
indices in paths work as in RFC 6902. ``statuses`` plays the controller: each
read takes the next status in the list (the last one stays).

Every request is also recorded as an RBAC tuple ``(api group, resource, subresource,
verb)`` in ``access`` (:class:`Access`), as the API server's authorizer sees it, so a
contract test can check the ``rollout-deployer`` Role grants each one
(tests/infra/test_contracts.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import (
    V1LabelSelector,
    V1ObjectMeta,
    V1OwnerReference,
    V1PodSpec,
    V1PodTemplateSpec,
    V1ReplicaSet,
    V1ReplicaSetList,
    V1ReplicaSetSpec,
)
from kubernetes.client.exceptions import ApiException
from kubernetes.client.models import V1Container

ROLLOUT_UID = "0b5c3c1e-rollout"
LABELS = {"app": "inference-server"}


def template(image: str, pod_hash: str | None = None) -> dict[str, Any]:
    labels = dict(LABELS) | ({"rollouts-pod-template-hash": pod_hash} if pod_hash else {})
    return {
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "inference", "image": image}]},
    }


def rollout(
    image: str, status: dict[str, Any] | None = None, generation: int | None = None
) -> dict[str, Any]:
    metadata = {"name": "inference-server", "namespace": "prod", "uid": ROLLOUT_UID}
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": metadata | ({"generation": generation} if generation is not None else {}),
        "spec": {"selector": {"matchLabels": dict(LABELS)}, "template": template(image)},
        "status": status or {},
    }


def replica_set(revision: int | None, image: str, owner_uid: str = ROLLOUT_UID) -> V1ReplicaSet:
    pod_hash = f"hash{revision}"
    annotations = {"rollout.argoproj.io/revision": str(revision)} if revision else {}
    owner = V1OwnerReference(
        api_version="argoproj.io/v1alpha1",
        kind="Rollout",
        name="inference-server",
        uid=owner_uid,
        controller=True,
    )
    return V1ReplicaSet(
        metadata=V1ObjectMeta(
            name=f"inference-server-{pod_hash}",
            namespace="prod",
            annotations=annotations,
            owner_references=[owner],
        ),
        spec=V1ReplicaSetSpec(
            selector=V1LabelSelector(match_labels=dict(LABELS)),
            template=V1PodTemplateSpec(
                metadata=V1ObjectMeta(
                    labels=dict(LABELS) | {"rollouts-pod-template-hash": pod_hash}
                ),
                spec=V1PodSpec(containers=[V1Container(name="inference", image=image)]),
            ),
        ),
    )


@dataclass(frozen=True)
class Access:
    """One request as RBAC sees it: ``("argoproj.io", "rollouts", "status", "patch")``."""

    group: str
    resource: str
    subresource: str
    verb: str


@dataclass
class Call:
    method: str
    args: tuple[Any, ...]
    body: Any = None
    content_type: str | None = None


@dataclass
class FakeCustomObjectsApi:
    stored: dict[str, Any] | None
    status_subresource: bool = True
    fail_patch_with: int | None = None
    fail_get_with: list[int] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    access: list[Access] = field(default_factory=list)

    def _find(self, namespace: str, name: str) -> dict[str, Any]:
        meta = (self.stored or {}).get("metadata", {})
        if self.stored is None or meta.get("namespace") != namespace or meta.get("name") != name:
            raise ApiException(status=404, reason="Not Found")
        return self.stored

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any:
        self.calls.append(Call("get", (group, version, namespace, plural, name)))
        self.access.append(Access(group, plural, "", "get"))
        if self.fail_get_with:
            raise ApiException(status=self.fail_get_with.pop(0), reason="Service Unavailable")
        found = self._find(namespace, name)
        if self.statuses:
            found["status"] = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return copy.deepcopy(found)

    def _patch(
        self, method: str, args: tuple[Any, ...], body: Any, content_type: str | None
    ) -> Any:
        self.calls.append(Call(method, args, copy.deepcopy(body), content_type))
        subresource = "status" if method == "patch_status" else ""
        self.access.append(Access(args[0], args[3], subresource, "patch"))
        if self.fail_patch_with is not None:
            raise ApiException(status=self.fail_patch_with, reason="Forbidden")
        target = self._find(args[2], args[4])
        if isinstance(body, list):  # JSON patch: "test" and "replace"
            patched = copy.deepcopy(target)
            for op in body:
                assert op["op"] in ("test", "replace"), op
                *parents, last = op["path"].strip("/").split("/")
                node: Any = patched
                for part in parents:
                    node = node[int(part)] if isinstance(node, list) else node[part]
                key: Any = int(last) if isinstance(node, list) else last
                if op["op"] == "test" and node[key] != op["value"]:
                    raise ApiException(status=422, reason="Unprocessable Entity")
                if op["op"] == "replace":
                    node[key] = copy.deepcopy(op["value"])
            target.clear()
            target.update(patched)
        else:  # merge patch
            for key, value in body.items():
                target.setdefault(key, {}).update(value)
        return copy.deepcopy(target)

    def patch_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any,
        _content_type: str | None = None,
    ) -> Any:
        return self._patch("patch", (group, version, namespace, plural, name), body, _content_type)

    def patch_namespaced_custom_object_status(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any,
        _content_type: str | None = None,
    ) -> Any:
        if not self.status_subresource:
            self.calls.append(Call("patch_status", (group, version, namespace, plural, name)))
            self.access.append(Access(group, plural, "status", "patch"))
            raise ApiException(status=404, reason="Not Found")
        args = (group, version, namespace, plural, name)
        return self._patch("patch_status", args, body, _content_type)


@dataclass
class FakeAppsV1Api:
    replica_sets: list[V1ReplicaSet]
    selectors: list[tuple[str, str]] = field(default_factory=list)
    access: list[Access] = field(default_factory=list)

    def list_namespaced_replica_set(self, namespace: str, label_selector: str = "") -> Any:
        self.selectors.append((namespace, label_selector))
        self.access.append(Access("apps", "replicasets", "", "list"))
        wanted = dict(pair.split("=", 1) for pair in label_selector.split(",") if pair)
        items = [
            rs
            for rs in self.replica_sets
            if rs.metadata.namespace == namespace
            and wanted.items() <= (rs.spec.selector.match_labels or {}).items()
        ]
        return V1ReplicaSetList(items=items)
