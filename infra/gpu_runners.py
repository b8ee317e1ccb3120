"""Self-hosted GitHub Actions runners on Kubernetes: ARC scale sets, one per runner class.

Why ARC scale sets: runners are created per job from a JIT config and exit after it
(ephemeral by construction: no state leaks between jobs or PRs), scale to zero when
idle (``minRunners: 0``), and need no long-lived registration token. The GPU class asks
for ``nvidia.com/gpu`` (served by the NVIDIA device plugin installed here) and lands on
GPU nodes through its node selector and tolerations.

The runner pods carry the environment's in-cluster endpoints (MLflow, Prometheus, the
inference service) as environment variables and run as a service account that may
patch the inference Rollout, so the workflow needs no kubeconfig.

Left out: runner groups, org-level runners, and Docker-in-Docker for the GPU class
(only CPU runners build images).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from infra import charts, kube
from infra.config import ModelCacheSettings, RunnerClass

CONTROLLER_NAMESPACE = "arc-systems"
RUNNER_NAMESPACE = "arc-runners"
CONTROLLER_RELEASE = "arc"
RUNNER_SERVICE_ACCOUNT = "mlcicd-runner"
RUNNER_HF_CACHE = "/home/runner/.cache/huggingface"


@dataclass(frozen=True)
class RunnerFleetArgs:
    runners: tuple[RunnerClass, ...]
    github_url: str
    auth: str  # token | app
    app_id: str
    app_installation_id: str
    github_token: pulumi.Output[str] | None
    github_app_private_key: pulumi.Output[str] | None
    runner_image: pulumi.Input[str]
    app_namespace: pulumi.Input[str]
    runner_env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    runner_secret_env: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    # GPU runners share one ReadWriteMany Hugging Face cache, so a job's weights are
    # downloaded once per cluster, not once per ephemeral runner pod.
    model_cache: ModelCacheSettings | None = None


class RunnerFleet(pulumi.ComponentResource):
    labels: dict[str, list[str]]
    device_plugin: k8s.helm.v3.Release
    controller: k8s.helm.v3.Release

    def __init__(
        self, name: str, args: RunnerFleetArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlcicd:infra:RunnerFleet", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        gpu = [r for r in args.runners if r.name == "gpu"]
        self.device_plugin = charts.release(
            "nvidia-device-plugin",
            charts.NVIDIA_DEVICE_PLUGIN,
            "nvidia-device-plugin",
            {
                "nodeSelector": dict(gpu[0].node_selector) if gpu else {},
                "tolerations": [t.to_k8s() for t in gpu[0].tolerations] if gpu else [],
            },
            child,
        )
        self.controller = charts.release(
            CONTROLLER_RELEASE, charts.ARC_CONTROLLER, CONTROLLER_NAMESPACE, {}, child
        )
        namespace = k8s.core.v1.Namespace(
            "arc-runners", metadata={"name": RUNNER_NAMESPACE}, opts=child
        )
        github_secret = self._github_secret(args, namespace)
        env_secret = k8s.core.v1.Secret(
            "runner-env",
            metadata={"name": "runner-env", "namespace": namespace.metadata["name"]},
            string_data=dict(args.runner_secret_env),
            opts=child,
        )
        account = self._deployer_account(args, namespace)
        cache = self._model_cache(args, namespace) if gpu else None
        self.labels = {}
        for runner in args.runners:
            charts.release(
                runner.scale_set_name,
                charts.ARC_SCALE_SET,
                RUNNER_NAMESPACE,
                _scale_set_values(
                    runner,
                    args,
                    github_secret.metadata["name"],
                    env_secret.metadata["name"],
                    account.metadata["name"],
                    cache.metadata["name"] if cache is not None else None,
                ),
                pulumi.ResourceOptions(
                    parent=self, depends_on=[self.controller, self.device_plugin]
                ),
            )
            self.labels[runner.name] = list(runner.labels)
        self.register_outputs({"labels": self.labels})

    def _model_cache(
        self, args: RunnerFleetArgs, namespace: k8s.core.v1.Namespace
    ) -> k8s.core.v1.PersistentVolumeClaim | None:
        if args.model_cache is None:
            return None
        cache = args.model_cache
        return k8s.core.v1.PersistentVolumeClaim(
            "runner-model-cache",
            metadata={"name": "runner-model-cache", "namespace": namespace.metadata["name"]},
            spec={
                "accessModes": ["ReadWriteMany"],  # runner pods on any GPU node, at once
                "resources": {"requests": {"storage": cache.size}},
                **({"storageClassName": cache.storage_class} if cache.storage_class else {}),
            },
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _github_secret(
        self, args: RunnerFleetArgs, namespace: k8s.core.v1.Namespace
    ) -> k8s.core.v1.Secret:
        if args.auth == "app":
            assert args.github_app_private_key is not None
            data: dict[str, pulumi.Input[str]] = {
                "github_app_id": args.app_id,
                "github_app_installation_id": args.app_installation_id,
                "github_app_private_key": args.github_app_private_key,
            }
        else:
            assert args.github_token is not None
            data = {"github_token": args.github_token}
        return k8s.core.v1.Secret(
            "github-config",
            metadata={"name": "github-config", "namespace": namespace.metadata["name"]},
            string_data=data,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _deployer_account(
        self, args: RunnerFleetArgs, namespace: k8s.core.v1.Namespace
    ) -> k8s.core.v1.ServiceAccount:
        """May update the inference Rollout in the app namespace, and nothing else."""
        child = pulumi.ResourceOptions(parent=self)
        account = k8s.core.v1.ServiceAccount(
            RUNNER_SERVICE_ACCOUNT,
            metadata={"name": RUNNER_SERVICE_ACCOUNT, "namespace": namespace.metadata["name"]},
            opts=child,
        )
        role = k8s.rbac.v1.Role(
            "rollout-deployer",
            metadata={"name": "rollout-deployer", "namespace": args.app_namespace},
            rules=[
                {
                    "apiGroups": ["argoproj.io"],
                    "resources": ["rollouts", "analysisruns"],
                    "verbs": ["get", "list", "watch", "patch", "update"],
                },
                # Rollback (`mlcicd rollback`) reads old ReplicaSets for earlier templates.
                {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list"]},
                {"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["get", "list"]},
            ],
            opts=child,
        )
        k8s.rbac.v1.RoleBinding(
            "rollout-deployer",
            metadata={"name": "rollout-deployer", "namespace": args.app_namespace},
            role_ref={
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": role.metadata["name"],
            },
            subjects=[
                {
                    "kind": "ServiceAccount",
                    "name": account.metadata["name"],
                    "namespace": RUNNER_NAMESPACE,
                }
            ],
            opts=child,
        )
        return account


def _scale_set_values(
    runner: RunnerClass,
    args: RunnerFleetArgs,
    github_secret: pulumi.Input[str],
    env_secret: pulumi.Input[str],
    account: pulumi.Input[str],
    model_cache: pulumi.Input[str] | None = None,
) -> dict[str, object]:
    resources = kube.resources(runner.cpu, runner.memory, runner.gpus)
    values: dict[str, object] = {
        "githubConfigUrl": args.github_url,
        "githubConfigSecret": github_secret,
        "runnerScaleSetName": runner.scale_set_name,
        "minRunners": runner.min_runners,
        "maxRunners": runner.max_runners,
        "controllerServiceAccount": {
            "namespace": CONTROLLER_NAMESPACE,
            "name": f"{CONTROLLER_RELEASE}-gha-rs-controller",
        },
        "template": {
            "spec": {
                "serviceAccountName": account,
                "nodeSelector": dict(runner.node_selector),
                "tolerations": [t.to_k8s() for t in runner.tolerations],
                "containers": [
                    {
                        "name": "runner",
                        "image": args.runner_image,
                        "command": ["/usr/local/bin/runner-entrypoint"],
                        "resources": resources,
                        "env": [
                            {"name": k, "value": v} for k, v in sorted(args.runner_env.items())
                        ],
                        "envFrom": [{"secretRef": {"name": env_secret}}],
                    }
                ],
            }
        },
    }
    if runner.name == "cpu":
        values["containerMode"] = {"type": "dind"}
    if runner.name == "gpu" and model_cache is not None:
        spec = values["template"]["spec"]  # type: ignore[index]
        spec["volumes"] = [
            {"name": "hf-cache", "persistentVolumeClaim": {"claimName": model_cache}}
        ]
        spec["containers"][0]["volumeMounts"] = [{"name": "hf-cache", "mountPath": RUNNER_HF_CACHE}]
    return values
