"""Self-hosted GitHub Actions runners on Kubernetes: ARC scale sets, one per runner class.

Why ARC scale sets: runners are created per job from a JIT config and exit after it
(ephemeral by construction: no state leaks between jobs or PRs), scale to zero when
idle (``minRunners: 0``), and need no long-lived registration token. The GPU class asks
for ``nvidia.com/gpu`` (served by the NVIDIA device plugin installed here) and lands on
GPU nodes through its node selector and tolerations.

The runner pods carry the environment's in-cluster endpoints (MLflow, Prometheus, the
inference service) as environment variables and run as a service account that may
patch the inference Rollout, so the workflow needs no kubeconfig.

Contracts with upstream (actions/actions-runner-controller@gha-runner-scale-set-0.9.3):

- A scale set registers ONE label, its name (controllers/actions.github.com/
  autoscalingrunnerset_controller.go L441-444), so jobs use ``runs-on: <name>`` alone.
- ``template.spec`` keys other than containers/volumes/initContainers/
  serviceAccountName are copied into the pod (templates/autoscalingrunnerset.yaml
  L110-112): ``imagePullSecrets`` there covers the runner container and dind mode's
  ``init-dind-externals`` init container, which reuses the runner image.
- dind mode runs ``dockerd --group=$(DOCKER_GROUP_GID)`` with ``DOCKER_GROUP_GID``
  "123" (templates/_helpers.tpl L101-106). Our runner image (runner_image/Dockerfile)
  gives its ``docker`` group that GID, as upstream's does (actions/runner@v2.320.0:
  images/Dockerfile L52-55), so uid 1001 can use the socket.

GPU nodes: the device-plugin chart (NVIDIA/k8s-device-plugin@v0.17.0) is installed with
GFD and its NFD subchart on (``gfd.enabled``/``nfd.enabled``; both off by default), so
nodes get ``feature.node.kubernetes.io/pci-10de.present=true`` (NFD) and
``nvidia.com/gpu.*`` (GFD). GFD never sets ``nvidia.com/gpu.present``; config rejects a
selector on a label nothing sets unless ``cluster.nodeLabels`` declares it.

RBAC: :data:`DEPLOYER_RULES` is exactly what ``mlcicd deploy`` and ``mlcicd rollback``
call (abort patches ``rollouts/status``, as argoproj/argo-rollouts@v1.7.2:
pkg/kubectl-argo-rollouts/cmd/abort/abort.go does); tests/infra/test_contracts.py
replays both commands against the fake API and checks each call is allowed.

Left out: runner groups, org-level runners, and Docker-in-Docker for the GPU class
(only CPU runners build images).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import pulumi
import pulumi_kubernetes as k8s

from infra import charts, kube
from infra.cluster_secrets import SecretSource
from infra.config import RunnerClass
from infra.image_registry import ImageRegistry

CONTROLLER_NAMESPACE = "arc-systems"
RUNNER_NAMESPACE = "arc-runners"
CONTROLLER_RELEASE = "arc"
RUNNER_SERVICE_ACCOUNT = "mlcicd-runner"
DEPLOYER_ROLE = "rollout-deployer"
# What ARC 0.9.3's dind sidecar passes to dockerd --group (see module docstring).
ARC_DOCKER_GROUP_GID = 123

DEPLOYER_RULES: tuple[dict[str, list[str]], ...] = (
    # deploy set-image: get + JSON-patch; deploy wait: get; rollback undo: get + patch.
    {
        "apiGroups": ["argoproj.io"],
        "resources": ["rollouts"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    # rollback abort: merge-patch {"status": {"abort": true}} on the status subresource.
    {"apiGroups": ["argoproj.io"], "resources": ["rollouts/status"], "verbs": ["patch"]},
    {"apiGroups": ["argoproj.io"], "resources": ["analysisruns"], "verbs": ["get", "list"]},
    # rollback undo reads the Rollout's old ReplicaSets for earlier templates.
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["get", "list"]},
)


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
    registry: ImageRegistry
    secret_source: SecretSource
    runner_env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    runner_secret_env: Mapping[str, pulumi.Output[str] | None] = field(default_factory=dict)


@dataclass(frozen=True)
class _PodRefs:
    """Names the runner pods refer to."""

    github_secret: pulumi.Input[str]
    env_secret: pulumi.Input[str]
    pull_secret: pulumi.Input[str]
    account: pulumi.Input[str]


class RunnerFleet(pulumi.ComponentResource):
    labels: dict[str, list[str]]
    device_plugin: k8s.helm.v3.Release
    controller: k8s.helm.v3.Release

    def __init__(
        self, name: str, args: RunnerFleetArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlcicd:infra:RunnerFleet", name, None, opts)
        self._prefix = name
        child = pulumi.ResourceOptions(parent=self)
        gpu = [r for r in args.runners if r.name == "gpu"]
        # Cluster singletons: fixed release names on purpose (a second fleet in the same
        # cluster must reuse them, not install a second controller).
        self.device_plugin = charts.release(
            "nvidia-device-plugin",
            charts.NVIDIA_DEVICE_PLUGIN,
            "nvidia-device-plugin",
            _device_plugin_values(gpu[0] if gpu else None),
            child,
        )
        self.controller = charts.release(
            CONTROLLER_RELEASE, charts.ARC_CONTROLLER, CONTROLLER_NAMESPACE, {}, child
        )
        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={"name": RUNNER_NAMESPACE},
            opts=self._renamed(RUNNER_NAMESPACE),
        )
        ns = namespace.metadata["name"]
        refs = _PodRefs(
            github_secret=self._github_secret(args, ns),
            env_secret=args.secret_source.secret(
                f"{name}-env",
                "runner-env",
                ns,
                dict(args.runner_secret_env),
                self._renamed("runner-env"),
            ),
            pull_secret=args.registry.pull_secret(f"{name}-registry-pull", ns, child),
            account=self._deployer_account(args, ns),
        )
        self.labels = {}
        for runner in args.runners:
            charts.release(
                runner.scale_set_name,
                charts.ARC_SCALE_SET,
                RUNNER_NAMESPACE,
                scale_set_values(runner, args, refs),
                pulumi.ResourceOptions(
                    parent=self, depends_on=[self.controller, self.device_plugin]
                ),
            )
            self.labels[runner.name] = list(runner.labels)
        self.register_outputs({"labels": self.labels})

    def _renamed(self, old: str) -> pulumi.ResourceOptions:
        """Child options keeping the child's former fixed Pulumi name as an alias."""
        return pulumi.ResourceOptions(parent=self, aliases=[pulumi.Alias(name=old)])

    def _github_secret(self, args: RunnerFleetArgs, ns: pulumi.Input[str]) -> pulumi.Output[str]:
        """The credentials ARC registers runners with (githubConfigSecret)."""
        values: dict[str, pulumi.Input[str] | None]
        if args.auth == "app":
            values = {
                "github_app_id": args.app_id,
                "github_app_installation_id": args.app_installation_id,
                "github_app_private_key": args.github_app_private_key,
            }
        else:
            values = {"github_token": args.github_token}
        return args.secret_source.secret(
            f"{self._prefix}-github-config",
            "github-config",
            ns,
            values,
            self._renamed("github-config"),
        )

    def _deployer_account(self, args: RunnerFleetArgs, ns: pulumi.Input[str]) -> pulumi.Output[str]:
        """May update the inference Rollout in the app namespace, and nothing else."""
        account = k8s.core.v1.ServiceAccount(
            f"{self._prefix}-service-account",
            metadata={"name": RUNNER_SERVICE_ACCOUNT, "namespace": ns},
            opts=self._renamed(RUNNER_SERVICE_ACCOUNT),
        )
        role = k8s.rbac.v1.Role(
            f"{self._prefix}-{DEPLOYER_ROLE}",
            metadata={"name": DEPLOYER_ROLE, "namespace": args.app_namespace},
            rules=[dict(rule) for rule in DEPLOYER_RULES],
            opts=self._renamed(DEPLOYER_ROLE),
        )
        k8s.rbac.v1.RoleBinding(
            f"{self._prefix}-{DEPLOYER_ROLE}",
            metadata={"name": DEPLOYER_ROLE, "namespace": args.app_namespace},
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
            opts=self._renamed(DEPLOYER_ROLE),
        )
        return cast(pulumi.Output[str], account.metadata["name"])


def _device_plugin_values(gpu: RunnerClass | None) -> dict[str, object]:
    """GFD and NFD on, so GPU nodes get the labels the workloads select on.

    No nodeSelector: the chart's default affinity already matches NFD's
    ``pci-10de.present`` label (values.yaml L63-84 at v0.17.0).
    """
    return {
        "gfd": {"enabled": True},
        "nfd": {"enabled": True},
        "tolerations": [t.to_k8s() for t in gpu.tolerations] if gpu else [],
    }


def scale_set_values(
    runner: RunnerClass, args: RunnerFleetArgs, refs: _PodRefs
) -> dict[str, object]:
    """gha-runner-scale-set 0.9.3 values for one runner class."""
    resources = kube.resources(runner.cpu, runner.memory, runner.gpus)
    values: dict[str, object] = {
        "githubConfigUrl": args.github_url,
        "githubConfigSecret": refs.github_secret,
        "runnerScaleSetName": runner.scale_set_name,
        "minRunners": runner.min_runners,
        "maxRunners": runner.max_runners,
        "controllerServiceAccount": {
            "namespace": CONTROLLER_NAMESPACE,
            "name": f"{CONTROLLER_RELEASE}-gha-rs-controller",
        },
        "template": {
            "spec": {
                "serviceAccountName": refs.account,
                "imagePullSecrets": [{"name": refs.pull_secret}],
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
                        "envFrom": [{"secretRef": {"name": refs.env_secret}}],
                    }
                ],
            }
        },
    }
    if runner.name == "cpu":
        values["containerMode"] = {"type": "dind"}
    return values
