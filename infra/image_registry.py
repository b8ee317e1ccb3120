"""Where images live (GHCR or an in-cluster registry) and, optionally, building them.

Why both: GHCR needs nothing in the cluster; an in-cluster ``distribution`` registry
(PVC-backed, htpasswd auth) keeps images next to air-gapped GPU nodes. The inference
image (root ``Dockerfile``) and the runner image (``runner_image/``) are tagged with the
git sha; when ``images.build`` is on, ``pulumi_docker.Image`` builds them and their
digests become stack outputs (``images.push`` off = build only, ``skip_push``).

Pull secrets: every pod that runs one of these images names a ``dockerconfigjson``
Secret for the registry host in its own namespace: ``registry-pull`` here (the app
namespace) and, through :meth:`ImageRegistry.pull_secret`, one in ``arc-runners`` for
the runner pods (whose dind init container reuses the runner image).

Left out: TLS for the in-cluster registry (terminate it at your ingress), garbage
collection, and image signing.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pulumi
import pulumi_docker as docker
import pulumi_kubernetes as k8s

from infra import kube
from infra.cluster_secrets import SecretSource
from infra.config import ImageSettings, RegistrySettings

REGISTRY_IMAGE = "registry:2.8.3"
PULL_SECRET = "registry-pull"
WORKLOAD_TIMEOUTS = pulumi.CustomTimeouts(create="10m", update="10m")


@dataclass(frozen=True)
class ImageRegistryArgs:
    registry: RegistrySettings
    images: ImageSettings
    tag: str
    namespace: pulumi.Input[str]
    repository_path: str  # owner/repo, lower case
    repo_root: Path
    password: pulumi.Output[str]
    htpasswd: pulumi.Output[str] | None
    secret_source: SecretSource


def _docker_config(server: str, username: str, password: pulumi.Output[str]) -> pulumi.Output[str]:
    def _encode(secret: str) -> str:
        auth = base64.b64encode(f"{username}:{secret}".encode()).decode()
        return json.dumps({"auths": {server: {"username": username, "auth": auth}}})

    return pulumi.Output.secret(password.apply(_encode))


class ImageRegistry(pulumi.ComponentResource):
    host: str
    inference_image: pulumi.Output[str]
    runner_image: pulumi.Output[str]
    pull_secret_name: pulumi.Output[str]

    def __init__(
        self, name: str, args: ImageRegistryArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlcicd:infra:ImageRegistry", name, None, opts)
        self._prefix = name
        self._args = args
        self.host = args.registry.host
        if args.registry.kind == "in-cluster":
            self._in_cluster(name, args)
        self.pull_secret_name = self.pull_secret(
            f"{name}-pull", args.namespace, pulumi.ResourceOptions(parent=self)
        )
        base = f"{self.host}/{args.repository_path}"
        self.inference_image = self._image(args, "inference-server", base, args.repo_root)
        self.runner_image = self._image(
            args, "actions-runner", base, args.repo_root / "runner_image"
        )
        self.register_outputs(
            {
                "host": self.host,
                "inferenceImage": self.inference_image,
                "runnerImage": self.runner_image,
            }
        )

    def pull_secret(
        self, resource_name: str, namespace: pulumi.Input[str], opts: pulumi.ResourceOptions
    ) -> pulumi.Output[str]:
        """A ``registry-pull`` dockerconfigjson Secret for this registry in ``namespace``."""
        args = self._args
        config = (
            None
            if args.secret_source.external
            else _docker_config(self.host, args.registry.username, args.password)
        )
        return args.secret_source.secret(
            resource_name,
            PULL_SECRET,
            namespace,
            {".dockerconfigjson": config},
            opts,
            secret_type="kubernetes.io/dockerconfigjson",
            remote=PULL_SECRET,
        )

    def _image(
        self, args: ImageRegistryArgs, name: str, base: str, context: Path
    ) -> pulumi.Output[str]:
        """The image reference to deploy: ``name@digest`` once pushed, else ``name:tag``."""
        reference = f"{base}/{name}:{args.tag}"
        if not args.images.build:
            return pulumi.Output.from_input(reference)
        image = docker.Image(
            name,
            image_name=reference,
            build={
                # Relative to the project root (Pulumi's working directory), so a render
                # is the same on every machine.
                "context": context.relative_to(args.repo_root).as_posix(),
                "dockerfile": (context / "Dockerfile").relative_to(args.repo_root).as_posix(),
                "platform": "linux/amd64",
                "args": {"GIT_SHA": args.tag},
            },
            registry={
                "server": self.host,
                "username": args.registry.username,
                "password": args.password,
            },
            skip_push=not args.images.push,
            opts=pulumi.ResourceOptions(parent=self),
        )
        built = image.image_name if not args.images.push else image.repo_digest
        return cast(pulumi.Output[str], built)

    def _in_cluster(self, name: str, args: ImageRegistryArgs) -> None:
        child = pulumi.ResourceOptions(parent=self)
        app = name
        auth = args.secret_source.secret(
            f"{name}-htpasswd",
            f"{name}-htpasswd",
            args.namespace,
            {"htpasswd": args.htpasswd},
            child,
            kube.labels(app),
        )
        volume = k8s.core.v1.PersistentVolumeClaim(
            f"{name}-data",
            metadata=kube.skip_await(kube.meta(f"{name}-data", args.namespace, app)),
            spec=kube.pvc_template(f"{name}-data", args.registry.storage_size)["spec"],
            opts=child,
        )
        deployment = k8s.apps.v1.Deployment(
            name,
            metadata=kube.meta(name, args.namespace, app),
            spec=_registry_spec(app, volume.metadata["name"], auth),
            opts=pulumi.ResourceOptions(parent=self, custom_timeouts=WORKLOAD_TIMEOUTS),
        )
        k8s.core.v1.Service(
            name,
            metadata=kube.meta(name, args.namespace, app),
            spec={
                "selector": {"app": app},
                "ports": [{"name": "http", "port": 5000, "targetPort": "http"}],
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[deployment]),
        )


def _registry_spec(
    app: str, claim: pulumi.Input[str], auth_secret: pulumi.Input[str]
) -> dict[str, object]:
    """One ``distribution`` registry pod: htpasswd auth, data on the PVC."""
    env = {
        "REGISTRY_AUTH": "htpasswd",
        "REGISTRY_AUTH_HTPASSWD_REALM": "mlcicd",
        "REGISTRY_AUTH_HTPASSWD_PATH": "/auth/htpasswd",
    }
    container = {
        "name": "registry",
        "image": REGISTRY_IMAGE,
        "ports": [{"name": "http", "containerPort": 5000}],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/registry"},
            {"name": "auth", "mountPath": "/auth", "readOnly": True},
        ],
        "readinessProbe": kube.http_probe("/", "http"),
        "livenessProbe": kube.http_probe("/", "http", period_s=30),
        "resources": kube.resources("250m", "512Mi"),
        "securityContext": kube.RESTRICTED_CONTAINER,
    }
    return {
        "replicas": 1,
        "strategy": {"type": "Recreate"},
        "selector": {"matchLabels": {"app": app}},
        "template": {
            "metadata": {"labels": kube.labels(app)},
            "spec": {
                "securityContext": {"runAsUser": 1000, "fsGroup": 1000},
                "containers": [container],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": claim}},
                    {"name": "auth", "secret": {"secretName": auth_secret}},
                ],
            },
        },
    }
