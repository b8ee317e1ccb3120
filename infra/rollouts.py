"""Argo Rollouts and the inference server's canary Rollout.

Why the explicit ``depends_on``: a Rollout and an AnalysisTemplate are custom resources
whose CRDs the argo-rollouts chart installs. Pulumi cannot infer that ordering (a known
pulumi-kubernetes pitfall: the first ``up`` fails with "no matches for kind Rollout"),
so both depend on the Helm release, and the Rollout on the template it references.

Awaits: ``pulumi up`` does not wait for inference pods. Their readiness belongs to the
Rollout (Argo Rollouts' controller, then ``mlcicd deploy wait`` in the workflow): the
pods need two Helm releases, a CUDA image pull and up to a 600 s startup probe, more
than Pulumi's 10-minute Service await. So the two Services and the Rollout carry
``pulumi.com/skipAwait: "true"`` (the Rollout too, in case the provider's generic
await for custom resources is switched on), and a first ``up`` on an empty cluster
finishes once the objects are accepted.

Child names derive from the component's ``name`` (``f"{name}-secrets"``); the old
Pulumi names are kept as aliases so existing stacks are not replaced. The Kubernetes
names of the Rollout and its Services stay ``inference-server``: the workflow and
``mlcicd deploy`` address them by that name.

Shutdown: Kubernetes sends SIGTERM after ``preStop`` (a short sleep, so endpoints are
removed before the server stops accepting), then the server drains for up to the
definition's ``serving.drain_timeout_s`` (which the definition keeps >= the request
deadline, so every admitted request can end), then uvicorn has
``GRACE_AFTER_DRAIN_S`` to write what is left. ``terminationGracePeriodSeconds``
covers all three with a margin, so in-flight generations finish instead of being
killed; tests/infra checks this on the rendered Rollout.

Left out: traffic routing through a mesh or ingress (weights are approximated by pod
counts), HPA, and a PodDisruptionBudget (add one with more than two replicas).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from inference.settings import GRACE_AFTER_DRAIN_S
from infra import analysis, charts, kube
from infra.cluster_secrets import SecretSource
from infra.config import InferenceSettings
from pipeline.definition import PipelineDefinition
from pipeline.serving import serving_env

NAMESPACE = "argo-rollouts"
APP = analysis.ROLLOUT_NAME
PORT = 8000
PRESTOP_SLEEP_S = 5
GRACE_MARGIN_S = 5


def termination_grace_seconds(definition: PipelineDefinition) -> int:
    drain = math.ceil(definition.serving.drain_timeout_s)
    return PRESTOP_SLEEP_S + drain + math.ceil(GRACE_AFTER_DRAIN_S) + GRACE_MARGIN_S


@dataclass(frozen=True)
class RolloutsArgs:
    definition: PipelineDefinition
    inference: InferenceSettings
    environment: str
    namespace: pulumi.Input[str]
    image: pulumi.Input[str]
    pull_secret: pulumi.Input[str]
    prometheus_url: str
    secret_source: SecretSource
    hf_token: pulumi.Output[str] | None
    git_sha: str = "unknown"
    depends_on: tuple[pulumi.Resource, ...] = ()


class InferenceRollout(pulumi.ComponentResource):
    controller: k8s.helm.v3.Release
    endpoint: pulumi.Output[str]
    canary_endpoint: pulumi.Output[str]

    def __init__(
        self, name: str, args: RolloutsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlcicd:infra:InferenceRollout", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns = args.namespace
        self.controller = charts.release(
            "argo-rollouts",
            charts.ARGO_ROLLOUTS,
            NAMESPACE,
            {"installCRDs": True, "dashboard": {"enabled": False}},
            child,
        )
        for suffix, service in (("service", APP), ("canary-service", f"{APP}-canary")):
            k8s.core.v1.Service(
                f"{name}-{suffix}",
                metadata=kube.skip_await(kube.meta(service, ns, APP)),
                spec={
                    "selector": {"app": APP},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                },
                opts=pulumi.ResourceOptions(parent=self, aliases=[pulumi.Alias(name=service)]),
            )
        secret = args.secret_source.secret(
            f"{name}-secrets",
            f"{name}-secrets",
            ns,
            {"HF_TOKEN": args.hf_token},
            child,
            kube.labels(APP),
        )
        template = k8s.apiextensions.CustomResource(
            f"{name}-analysis-template",
            **_split(analysis.analysis_template(args.definition, args.prometheus_url, ns)),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.controller],
                aliases=[pulumi.Alias(name="analysis-template")],
            ),
        )
        k8s.apiextensions.CustomResource(
            f"{name}-rollout",
            api_version=analysis.ARGO_API_VERSION,
            kind="Rollout",
            metadata=kube.skip_await(kube.meta(APP, ns, APP)),
            spec=self._spec(args, secret),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.controller, template, *args.depends_on],
                aliases=[pulumi.Alias(name="rollout")],
            ),
        )
        self.endpoint = pulumi.Output.concat(f"http://{APP}.", ns, ".svc.cluster.local")
        self.canary_endpoint = pulumi.Output.concat(
            f"http://{APP}-canary.", ns, ".svc.cluster.local"
        )
        self.register_outputs({"endpoint": self.endpoint, "canaryEndpoint": self.canary_endpoint})

    def _spec(self, args: RolloutsArgs, secret_name: pulumi.Input[str]) -> dict[str, object]:
        return {
            "replicas": args.inference.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": kube.labels(APP)},
                "spec": _pod_spec(args, secret_name),
            },
            "strategy": {
                "canary": {
                    "stableService": APP,
                    "canaryService": f"{APP}-canary",
                    "stableMetadata": {"labels": {"version": "stable"}},
                    "canaryMetadata": {"labels": {"version": "canary"}},
                    "steps": analysis.rollout_steps(args.definition, APP, args.namespace),
                }
            },
        }


def _server_env(args: RolloutsArgs) -> dict[str, str]:
    inference = args.inference
    return {
        "MLCICD_MODEL": inference.model,
        "MLCICD_HOST": "0.0.0.0",
        "MLCICD_PORT": str(PORT),
        "MLCICD_ENVIRONMENT": args.environment,
        # The image carries the server alone; the definition's limits come in as env.
        **serving_env(args.definition.serving),
        "MLCICD_DEVICE": "cuda" if inference.gpus else "cpu",
        "HF_HUB_OFFLINE": "0",
        # Shown as inference_build_info{git_sha}; the image is tagged with it too.
        "MLCICD_GIT_SHA": args.git_sha,
    }


def _pod_spec(args: RolloutsArgs, secret_name: pulumi.Input[str]) -> dict[str, object]:
    inference = args.inference
    spread = {
        "weight": 100,
        "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app": APP}},
        },
    }
    server = {
        "name": "inference",
        "image": args.image,
        "command": ["mlcicd", "serve"],
        "ports": [{"name": "http", "containerPort": PORT}],
        "env": [{"name": k, "value": v} for k, v in _server_env(args).items()],
        "envFrom": [{"secretRef": {"name": secret_name}}],
        "resources": kube.resources(inference.cpu, inference.memory, inference.gpus),
        "startupProbe": kube.http_probe("/health", "http", 10, 60),
        "livenessProbe": kube.http_probe("/health", "http", 15, 3),
        "readinessProbe": kube.http_probe("/ready", "http", 5, 2),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_S)]}}},
        "securityContext": kube.RESTRICTED_CONTAINER,
    }
    return {
        "terminationGracePeriodSeconds": termination_grace_seconds(args.definition),
        "imagePullSecrets": [{"name": args.pull_secret}],
        "nodeSelector": dict(inference.node_selector),
        "tolerations": [t.to_k8s() for t in inference.tolerations],
        "affinity": {
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [spread]}
        },
        "containers": [server],
    }


def _split(manifest: dict[str, object]) -> dict[str, object]:
    """A manifest dict as CustomResource keyword arguments."""
    return {
        "api_version": manifest["apiVersion"],
        "kind": manifest["kind"],
        "metadata": manifest["metadata"],
        "spec": manifest["spec"],
    }
