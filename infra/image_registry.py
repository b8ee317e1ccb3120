"""Where images live (GHCR or an in-cluster registry) and, optionally, building them.

Why both: GHCR needs nothing in the cluster; an in-cluster ``distribution`` registry
(PVC-backed, htpasswd auth) keeps images next to air-gapped GPU nodes. The inference
image (root ``Dockerfile``) and the runner image (``runner_image/``) are tagged with the
git sha; when ``images.build`` is on, ``pulumi_docker.Image`` builds them and their
digests become stack outputs (``images.push`` off = build only, ``skip_push``).

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
from infra.config import ImageSettings, RegistrySettings

REGISTRY_IMAGE = "registry:2.8.3"
PULL_SECRET = "registry-pull"


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
        child = pulumi.ResourceOptions(parent=self)
        self.host = args.registry.host
        if args.registry.kind == "in-cluster":
            self._in_cluster(args)
        pull = k8s.core.v1.Secret(
            PULL_SECRET,
            metadata={"name": PULL_SECRET, "namespace": args.namespace},
            type="kubernetes.io/dockerconfigjson",
            string_data={
                ".dockerconfigjson": _docker_config(
                    self.host, args.registry.username, args.password
                )
            },
            opts=child,
        )
        self.pull_secret_name = pull.metadata["name"]
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

    def _in_cluster(self, args: ImageRegistryArgs) -> None:
        child = pulumi.ResourceOptions(parent=self)
        assert args.htpasswd is not None
        app = "registry"
        auth = k8s.core.v1.Secret(
            "registry-htpasswd",
            metadata=kube.meta("registry-htpasswd", args.namespace, app),
            string_data={"htpasswd": args.htpasswd},
            opts=child,
        )
        volume = k8s.core.v1.PersistentVolumeClaim(
            "registry-data",
            metadata=kube.meta("registry-data", args.namespace, app),
            spec=kube.pvc_template("registry-data", args.registry.storage_size)["spec"],
            opts=child,
        )
        k8s.apps.v1.Deployment(
            "registry",
            metadata=kube.meta("registry", args.namespace, app),
            spec={
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": {"app": app}},
                "template": {
                    "metadata": {"labels": kube.labels(app)},
                    "spec": {
                        "securityContext": {"runAsUser": 1000, "fsGroup": 1000},
                        "containers": [
                            {
                                "name": "registry",
                                "image": REGISTRY_IMAGE,
                                "ports": [{"name": "http", "containerPort": 5000}],
                                "env": [
                                    {"name": "REGISTRY_AUTH", "value": "htpasswd"},
                                    {"name": "REGISTRY_AUTH_HTPASSWD_REALM", "value": "mlcicd"},
                                    {
                                        "name": "REGISTRY_AUTH_HTPASSWD_PATH",
                                        "value": "/auth/htpasswd",
                                    },
                                ],
                                "volumeMounts": [
                                    {"name": "data", "mountPath": "/var/lib/registry"},
                                    {"name": "auth", "mountPath": "/auth", "readOnly": True},
                                ],
                                "readinessProbe": kube.http_probe("/", "http"),
                                "livenessProbe": kube.http_probe("/", "http", period_s=30),
                                "resources": kube.resources("250m", "512Mi"),
                                "securityContext": kube.RESTRICTED_CONTAINER,
                            }
                        ],
                        "volumes": [
                            {
                                "name": "data",
                                "persistentVolumeClaim": {"claimName": volume.metadata["name"]},
                            },
                            {"name": "auth", "secret": {"secretName": auth.metadata["name"]}},
                        ],
                    },
                },
            },
            opts=child,
        )
        k8s.core.v1.Service(
            "registry",
            metadata=kube.meta("registry", args.namespace, app),
            spec={
                "selector": {"app": app},
                "ports": [{"name": "http", "port": 5000, "targetPort": "http"}],
            },
            opts=child,
        )
