"""Read the pieces of a mock recording that other pieces rely on: pods, Secrets, RBAC.

Pure functions over :func:`infra.mock_runtime.record` output, so each contract in
``test_contracts.py`` is a short comparison. Secret values stay wrapped
(``{"__secret__": ...}``); :func:`unwrap` opens them where a test must look inside.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
STATEFUL_SET = "kubernetes:apps/v1:StatefulSet"
ROLLOUT = "kubernetes:argoproj.io/v1alpha1:Rollout"
RELEASE = "kubernetes:helm.sh/v3:Release"
SECRET = "kubernetes:core/v1:Secret"
EXTERNAL_SECRET = "kubernetes:external-secrets.io/v1:ExternalSecret"
SERVICE = "kubernetes:core/v1:Service"
POD_MONITOR = "kubernetes:monitoring.coreos.com/v1:PodMonitor"
ROLE = "kubernetes:rbac.authorization.k8s.io/v1:Role"
SCALE_SET_CHART = "gha-runner-scale-set"
# gha-runner-scale-set 0.9.3 dind mode adds these to every runner pod
# (templates/_helpers.tpl: dind-init-container reuses the runner image; dind-container).
DIND_IMAGE = "docker:dind"


def unwrap(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__secret__"}:
            return unwrap(value["__secret__"])
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


@dataclass
class Pod:
    """A pod template some resource declares, with where it comes from."""

    source: str
    namespace: str
    labels: dict[str, str]
    spec: dict[str, Any]
    extra_images: list[str] = field(default_factory=list)

    @property
    def images(self) -> list[str]:
        containers = [*self.spec.get("initContainers", []), *self.spec.get("containers", [])]
        return [c["image"] for c in containers] + self.extra_images

    @property
    def pull_secrets(self) -> set[str]:
        return {s["name"] for s in self.spec.get("imagePullSecrets", [])}

    @property
    def port_names(self) -> set[str]:
        return {
            p["name"]
            for c in self.spec.get("containers", [])
            for p in c.get("ports", [])
            if "name" in p
        }


def of_type(recording: dict[str, Any], type_: str) -> list[dict[str, Any]]:
    return [r for r in recording["resources"] if r["type"] == type_]


def scale_sets(recording: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        r["inputs"]
        for r in of_type(recording, RELEASE)
        if r["inputs"]["chart"].endswith(SCALE_SET_CHART)
    ]


def pods(recording: dict[str, Any]) -> list[Pod]:
    found = []
    for type_ in (DEPLOYMENT, STATEFUL_SET, ROLLOUT):
        for res in of_type(recording, type_):
            inputs = unwrap(res["inputs"])
            template = inputs["spec"]["template"]
            found.append(
                Pod(
                    f"{type_.rsplit(':', 1)[1]}/{res['name']}",
                    inputs["metadata"]["namespace"],
                    template["metadata"].get("labels", {}),
                    template["spec"],
                )
            )
    for values in scale_sets(recording):
        spec = values["values"]["template"]["spec"]
        runner = next(c for c in spec["containers"] if c["name"] == "runner")
        dind = values["values"].get("containerMode", {}).get("type") == "dind"
        found.append(
            Pod(
                f"ScaleSet/{values['name']}",
                values["namespace"],
                {},
                spec,
                [runner["image"], DIND_IMAGE] if dind else [],
            )
        )
    return found


@dataclass(frozen=True)
class SecretKeys:
    namespace: str
    name: str
    keys: frozenset[str]
    type: str


def provided_secrets(recording: dict[str, Any]) -> dict[tuple[str, str], SecretKeys]:
    """Every Secret the stack makes exist: declared directly or through an ExternalSecret."""
    out = {}
    for res in of_type(recording, SECRET):
        inputs = unwrap(res["inputs"])
        meta = inputs["metadata"]
        keys = frozenset((inputs.get("stringData") or {}) | (inputs.get("data") or {}))
        kind = inputs.get("type", "Opaque")
        out[meta["namespace"], meta["name"]] = SecretKeys(
            meta["namespace"], meta["name"], keys, kind
        )
    for res in of_type(recording, EXTERNAL_SECRET):
        inputs = res["inputs"]
        target = inputs["spec"]["target"]
        namespace = inputs["metadata"]["namespace"]
        keys = frozenset(d["secretKey"] for d in inputs["spec"]["data"])
        kind = target.get("template", {}).get("type", "Opaque")
        out[namespace, target["name"]] = SecretKeys(namespace, target["name"], keys, kind)
    return out


def referenced_secrets(recording: dict[str, Any]) -> set[tuple[str, str, str | None]]:
    """(namespace, Secret name, key or None for "every key") that something reads."""
    refs: set[tuple[str, str, str | None]] = set()
    for pod in pods(recording):
        ns = pod.namespace
        refs |= {(ns, name, ".dockerconfigjson") for name in pod.pull_secrets}
        for container in pod.spec.get("containers", []):
            for source in container.get("envFrom", []):
                refs.add((ns, source["secretRef"]["name"], None))
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ns, ref["name"], ref["key"]))
        for volume in pod.spec.get("volumes", []):
            secret = volume.get("secret")
            if secret:
                for item in secret.get("items", [{"key": None}]):
                    refs.add((ns, secret["secretName"], item["key"]))
    for values in scale_sets(recording):
        refs.add((values["namespace"], values["values"]["githubConfigSecret"], None))
    for res in of_type(recording, RELEASE):
        admin = res["inputs"]["values"].get("grafana", {}).get("admin", {})
        if "existingSecret" in admin:
            for key in ("admin-user", "admin-password"):
                refs.add((res["inputs"]["namespace"], admin["existingSecret"], key))
    return refs


def registry_hosts(docker_config: str) -> set[str]:
    return set(json.loads(docker_config)["auths"])


def rbac_allows(rules: Iterable[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    """Kubernetes RBAC: a rule matches on group, ``resource[/subresource]`` and verb."""
    return any(
        (group in rule["apiGroups"] or "*" in rule["apiGroups"])
        and (resource in rule["resources"] or "*" in rule["resources"])
        and (verb in rule["verbs"] or "*" in rule["verbs"])
        for rule in rules
    )


def branch_rules(recording: dict[str, Any], branch: str) -> Iterator[dict[str, Any]]:
    """Rulesets and classic protections that apply to ``branch``."""
    for res in recording["resources"]:
        inputs = res["inputs"]
        if res["type"].endswith(":RepositoryRuleset"):
            includes = inputs["conditions"]["refName"]["includes"]
            if any(fnmatch.fnmatch(f"refs/heads/{branch}", p) for p in includes):
                yield {"kind": "ruleset", **inputs}
        elif res["type"].endswith(":BranchProtection") and fnmatch.fnmatch(
            branch, inputs["pattern"]
        ):
            yield {"kind": "protection", **inputs}
