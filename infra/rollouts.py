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

Traffic (why no trafficRouting): the basic canary. Argo approximates each step's weight
by replica counts (docs/features/canary.md): with 10 replicas, 10% is 1 canary pod and 9
stable ones. The user-facing Service ``inference-server`` selects every pod of the app,
so users reach canary pods in that ratio. Argo is given two other Services to pin by
pod-template hash (rollout/service.go): ``-canary`` (what the analysis' golden prompts
hit) and ``-stable``. The user-facing Service is never handed to Argo: a Service named
as ``stableService`` gets the stable ReplicaSet's hash in its selector and would reach
stable pods only, leaving the canary without traffic and its analysis Inconclusive.
:func:`weight_errors` refuses replica counts that cannot express a step's weight.
A traffic router (Gateway API plugin, a mesh) would give exact weights independent of
replicas, at the cost of one more controller to install and operate; left out.

The model: the pod serves ``MLCICD_MODEL`` at ``MLCICD_MODEL_REVISION`` (a Hugging Face
commit or a directory's content hash) and refuses to start on anything else. CI sets
both together with the image (``mlcicd deploy set-image``); Pulumi sets them on the
first ``up`` only and ignores them afterwards (:data:`CI_OWNED_FIELDS`), or the next
``up`` would revert CI's release. Weights are cached on a ReadWriteMany volume mounted
as the Hugging Face cache of every inference pod (``inference.modelCache*`` config).

Left out: HPA, and a PodDisruptionBudget (add one with more than two replicas).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from inference.serve_cli import IMAGE_COMMAND
from inference.settings import GRACE_AFTER_DRAIN_S
from infra import analysis, charts, kube
from infra.cluster_secrets import SecretSource
from infra.config import InferenceSettings, ModelCacheSettings
from pipeline.definition import PipelineDefinition
from pipeline.serving import serving_env

NAMESPACE = "argo-rollouts"
APP = analysis.ROLLOUT_NAME
USER_SERVICE = APP
CANARY_SERVICE = analysis.CANARY_SERVICE
STABLE_SERVICE = f"{APP}-stable"
CONTAINER = "inference"
PORT = 8000
PRESTOP_SLEEP_S = 5
GRACE_MARGIN_S = 5
# The model a pod serves: the first two env entries, so their paths below never move.
MODEL_ENV = ("MLCICD_MODEL", "MLCICD_MODEL_REVISION")
# What `mlcicd deploy set-image` owns after the first `pulumi up`.
CI_OWNED_FIELDS = (
    "spec.template.spec.containers[0].image",
    "spec.template.spec.containers[0].env[0].value",
    "spec.template.spec.containers[0].env[1].value",
    f'metadata.annotations["{analysis.MODEL_REVISION_ANNOTATION}"]',
)


def termination_grace_seconds(definition: PipelineDefinition) -> int:
    drain = math.ceil(definition.serving.drain_timeout_s)
    return PRESTOP_SLEEP_S + drain + math.ceil(GRACE_AFTER_DRAIN_S) + GRACE_MARGIN_S


def weight_errors(definition: PipelineDefinition, replicas: int) -> list[str]:
    """Steps whose weight ``replicas`` pods cannot express (weights are pod ratios here)."""
    return [
        f"canary.steps[{i}].set_weight = {s.set_weight}% of inference.replicas = {replicas} "
        f"is {replicas * s.set_weight / 100:g} pods; choose replicas that make it whole"
        for i, s in enumerate(definition.canary.steps)
        if replicas * s.set_weight % 100
    ]


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
        inference = args.inference
        errors = weight_errors(args.definition, inference.replicas)
        if errors:
            raise ValueError("canary weights are pod ratios here: " + "; ".join(errors))
        child = pulumi.ResourceOptions(parent=self)
        ns = args.namespace
        self.controller = charts.release(
            "argo-rollouts",
            charts.ARGO_ROLLOUTS,
            NAMESPACE,
            {"installCRDs": True, "dashboard": {"enabled": False}},
            child,
        )
        self._services(name, ns)
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
        claim = self._model_cache(name, ns, inference.model_cache)
        metadata = kube.skip_await(kube.meta(APP, ns, APP))
        metadata["annotations"] = {
            **metadata.get("annotations", {}),
            analysis.MODEL_REVISION_ANNOTATION: inference.model_revision,
        }
        k8s.apiextensions.CustomResource(
            f"{name}-rollout",
            api_version=analysis.ARGO_API_VERSION,
            kind="Rollout",
            metadata=metadata,
            spec=self._spec(args, secret, claim),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.controller, template, *args.depends_on],
                aliases=[pulumi.Alias(name="rollout")],
                ignore_changes=list(CI_OWNED_FIELDS),
            ),
        )
        self.endpoint = pulumi.Output.concat(f"http://{USER_SERVICE}.", ns, ".svc.cluster.local")
        self.canary_endpoint = pulumi.Output.concat(
            f"http://{CANARY_SERVICE}.", ns, ".svc.cluster.local"
        )
        self.register_outputs({"endpoint": self.endpoint, "canaryEndpoint": self.canary_endpoint})

    def _services(self, name: str, ns: pulumi.Input[str]) -> None:
        """The user-facing Service and the two Argo pins; all select every app pod at first."""
        for suffix, service in (
            ("service", USER_SERVICE),
            ("canary-service", CANARY_SERVICE),
            ("stable-service", STABLE_SERVICE),
        ):
            k8s.core.v1.Service(
                f"{name}-{suffix}",
                metadata=kube.skip_await(kube.meta(service, ns, APP)),
                spec={
                    "selector": {"app": APP},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                },
                opts=pulumi.ResourceOptions(parent=self, aliases=[pulumi.Alias(name=service)]),
            )

    def _model_cache(
        self, name: str, ns: pulumi.Input[str], cache: ModelCacheSettings
    ) -> pulumi.Output[str]:
        claim = k8s.core.v1.PersistentVolumeClaim(
            f"{name}-model-cache",
            metadata=kube.meta("model-cache", ns, APP),
            spec={
                # Every inference pod, on any node, reads the same weights at once.
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": cache.size}},
                **({"storageClassName": cache.storage_class} if cache.storage_class else {}),
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        name_out: pulumi.Output[str] = claim.metadata["name"]
        return name_out

    def _spec(
        self, args: RolloutsArgs, secret_name: pulumi.Input[str], claim: pulumi.Input[str]
    ) -> dict[str, object]:
        return {
            "replicas": args.inference.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": kube.labels(APP)},
                "spec": _pod_spec(args, secret_name, claim),
            },
            "strategy": {
                "canary": {
                    # Never USER_SERVICE: Argo would pin it to the stable pods (see above).
                    "stableService": STABLE_SERVICE,
                    "canaryService": CANARY_SERVICE,
                    "stableMetadata": {"labels": {"version": "stable"}},
                    "canaryMetadata": {"labels": {"version": "canary"}},
                    "steps": analysis.rollout_steps(args.definition, APP, args.namespace),
                }
            },
        }


def _server_env(args: RolloutsArgs) -> dict[str, str]:
    inference = args.inference
    return {
        MODEL_ENV[0]: inference.model,
        MODEL_ENV[1]: inference.model_revision,
        "MLCICD_HOST": "0.0.0.0",
        "MLCICD_PORT": str(PORT),
        "MLCICD_ENVIRONMENT": args.environment,
        # The image carries the server alone; the definition's limits come in as env.
        **serving_env(args.definition.serving),
        "MLCICD_DEVICE": "cuda" if inference.gpus else "cpu",
        # The pod's CPU request, not the node's cores, sizes torch's thread pool.
        "OMP_NUM_THREADS": str(kube.whole_cpus(inference.cpu)),
        # Weights come from the shared cache; offline once it holds the pinned revisions.
        "HF_HOME": inference.model_cache.mount_path,
        "HF_HUB_OFFLINE": "1" if inference.model_cache.offline else "0",
        # Shown as inference_build_info{git_sha}; the image is tagged with it too.
        "MLCICD_GIT_SHA": args.git_sha,
    }


def _pod_spec(
    args: RolloutsArgs, secret_name: pulumi.Input[str], claim: pulumi.Input[str]
) -> dict[str, object]:
    inference = args.inference
    spread = {
        "weight": 100,
        "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app": APP}},
        },
    }
    server = {
        "name": CONTAINER,
        "image": args.image,
        "command": list(IMAGE_COMMAND),
        "ports": [{"name": "http", "containerPort": PORT}],
        "env": [{"name": k, "value": v} for k, v in _server_env(args).items()],
        "envFrom": [{"secretRef": {"name": secret_name}}],
        "resources": kube.resources(inference.cpu, inference.memory, inference.gpus),
        "startupProbe": kube.http_probe("/health", "http", 10, 60),
        "livenessProbe": kube.http_probe("/health", "http", 15, 3),
        "readinessProbe": kube.http_probe("/ready", "http", 5, 2),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_S)]}}},
        "securityContext": kube.RESTRICTED_CONTAINER,
        "volumeMounts": [{"name": "model-cache", "mountPath": inference.model_cache.mount_path}],
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
        "volumes": [{"name": "model-cache", "persistentVolumeClaim": {"claimName": claim}}],
    }


def _split(manifest: dict[str, object]) -> dict[str, object]:
    """A manifest dict as CustomResource keyword arguments."""
    return {
        "api_version": manifest["apiVersion"],
        "kind": manifest["kind"],
        "metadata": manifest["metadata"],
        "spec": manifest["spec"],
    }
