"""MLflow tracking server and model registry, with Postgres and basic auth in front.

Why this shape: MLflow itself has no authentication worth exposing, so it listens on
127.0.0.1 only and an nginx sidecar in the same pod does basic auth (htpasswd from a
secret) and proxies to it; ``/health`` stays open for probes. Metadata lives in
Postgres (a one-replica StatefulSet with a PVC); artifacts on a PVC or in S3 by config.

Image: ``mlflow.image`` defaults to upstream's ``-full`` variant at the client's
version (requirements.lock), because the plain image has no ``psycopg2`` and the
server would crash at start on the Postgres backend; ``-full`` installs
``mlflow[extras,db,...]`` (psycopg2-binary, boto3 for S3). Evidence:
mlflow/mlflow@5033d12e:docker/README.md, mlflow/mlflow@092ba8b1:docker/Dockerfile.full.

Every child's Pulumi name and Kubernetes name derive from the component's ``name``
(``f"{name}-secrets"``), so a second instance would not collide.

Awaits: Pulumi waits for the Postgres StatefulSet and the MLflow Deployment to be
ready (explicit ``customTimeouts``: a large image pull plus a 300 s startup probe).
The MLflow Service depends on its Deployment, so its endpoint await finds ready pods
instead of racing them; the headless Postgres Service and the artifact PVC carry
``pulumi.com/skipAwait`` (the StatefulSet and the Deployment that mount/select them are
awaited instead; a PVC on a WaitForFirstConsumer storage class binds only once its pod
exists, pulumi/pulumi-kubernetes#895, fixed in #3130 and #4181 for newer providers).

Left out: TLS (terminate at your ingress), Postgres backups and HA, MLflow's own
multi-user auth app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra import kube
from infra.cluster_secrets import SecretSource
from infra.config import MlflowSettings

POSTGRES_IMAGE = "postgres:16.4"
NGINX_IMAGE = "nginxinc/nginx-unprivileged:1.27-alpine"
MLFLOW_PORT = 5000
PROXY_PORT = 8080
WORKLOAD_TIMEOUTS = pulumi.CustomTimeouts(create="15m", update="15m")

NGINX_CONF = f"""server {{
    listen {PROXY_PORT};
    client_max_body_size 0;
    location = /health {{
        auth_basic off;
        proxy_pass http://127.0.0.1:{MLFLOW_PORT}/health;
    }}
    location / {{
        auth_basic "mlflow";
        auth_basic_user_file /etc/nginx/auth/htpasswd;
        proxy_pass http://127.0.0.1:{MLFLOW_PORT};
        proxy_read_timeout 300s;
    }}
}}
"""
_HEALTH = "import urllib.request as u; u.urlopen('http://127.0.0.1:5000/health', timeout=4)"


@dataclass(frozen=True)
class MlflowArgs:
    settings: MlflowSettings
    namespace: pulumi.Input[str]
    secret_source: SecretSource
    db_password: pulumi.Output[str] | None = None
    htpasswd: pulumi.Output[str] | None = None
    aws_access_key_id: pulumi.Output[str] | None = None
    aws_secret_access_key: pulumi.Output[str] | None = None


class MlflowServer(pulumi.ComponentResource):
    tracking_uri: pulumi.Output[str]

    def __init__(
        self, name: str, args: MlflowArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlcicd:infra:MlflowServer", name, None, opts)
        self._prefix = name
        self._ns = args.namespace
        secret = self._secret(args)
        postgres = self._postgres(secret, args.settings.db_storage_size)
        volumes, mounts, destination = self._storage(args.settings, secret)
        deployment = k8s.apps.v1.Deployment(
            name,
            metadata=self._meta(name),
            spec=self._deployment_spec(args.settings.image, secret, volumes, mounts, destination),
            opts=self._opts(depends_on=[postgres], custom_timeouts=WORKLOAD_TIMEOUTS),
        )
        k8s.core.v1.Service(
            name,
            metadata=self._meta(name),
            spec={
                "selector": {"app": name},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
            opts=self._opts(depends_on=[deployment]),
        )
        self.tracking_uri = pulumi.Output.concat(f"http://{name}.", self._ns, ".svc.cluster.local")
        self.register_outputs({"trackingUri": self.tracking_uri})

    def _opts(self, **extra: Any) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, **extra)

    def _meta(self, name: str, app: str | None = None) -> dict[str, Any]:
        return kube.meta(name, self._ns, app or self._prefix)

    def _secret(self, args: MlflowArgs) -> pulumi.Output[str]:
        """DB password and htpasswd; AWS keys when artifacts go to S3. Returns its name."""
        values: dict[str, pulumi.Input[str] | None] = {
            "DB_PASSWORD": args.db_password,
            "htpasswd": args.htpasswd,
        }
        if args.settings.artifact_store == "s3":
            values["AWS_ACCESS_KEY_ID"] = args.aws_access_key_id
            values["AWS_SECRET_ACCESS_KEY"] = args.aws_secret_access_key
        name = f"{self._prefix}-secrets"
        return args.secret_source.secret(
            name, name, self._ns, values, self._opts(), kube.labels(self._prefix)
        )

    def _storage(
        self, settings: MlflowSettings, secret: pulumi.Input[str]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
        """(volumes, mlflow's mounts, artifact destination): nginx config + auth, artifacts."""
        conf = k8s.core.v1.ConfigMap(
            f"{self._prefix}-nginx",
            metadata=self._meta(f"{self._prefix}-nginx"),
            data={"default.conf": NGINX_CONF},
            opts=self._opts(),
        )
        volumes: list[dict[str, Any]] = [
            {"name": "nginx-conf", "configMap": {"name": conf.metadata["name"]}},
            {
                "name": "auth",
                "secret": {
                    "secretName": secret,
                    "items": [{"key": "htpasswd", "path": "htpasswd"}],
                },
            },
        ]
        if settings.artifact_store != "pvc":
            return volumes, [], settings.artifact_bucket
        artifacts = k8s.core.v1.PersistentVolumeClaim(
            f"{self._prefix}-artifacts",
            metadata=kube.skip_await(self._meta(f"{self._prefix}-artifacts")),
            spec=kube.pvc_template("a", settings.storage_size)["spec"],
            opts=self._opts(),
        )
        claim = {"claimName": artifacts.metadata["name"]}
        volumes.append({"name": "artifacts", "persistentVolumeClaim": claim})
        return volumes, [{"name": "artifacts", "mountPath": "/mlartifacts"}], "/mlartifacts"

    def _deployment_spec(
        self,
        image: str,
        secret: pulumi.Input[str],
        volumes: list[dict[str, Any]],
        mounts: list[dict[str, Any]],
        destination: str,
    ) -> dict[str, Any]:
        backend = f"postgresql://mlflow:$(DB_PASSWORD)@{self._prefix}-postgres:5432/mlflow"
        mlflow = {
            "name": "mlflow",
            "image": image,
            "command": ["mlflow", "server"],
            "args": [
                "--host=127.0.0.1",
                f"--port={MLFLOW_PORT}",
                f"--backend-store-uri={backend}",
                f"--artifacts-destination={destination}",
                "--serve-artifacts",
            ],
            "envFrom": [{"secretRef": {"name": secret}}],
            "volumeMounts": mounts,
            "resources": kube.resources("500m", "2Gi"),
            "startupProbe": {
                "exec": {"command": ["python", "-c", _HEALTH]},
                "periodSeconds": 5,
                "failureThreshold": 60,
            },
            "livenessProbe": {
                "exec": {"command": ["python", "-c", _HEALTH]},
                "periodSeconds": 30,
                "timeoutSeconds": 5,
            },
        }
        proxy = {
            "name": "auth-proxy",
            "image": NGINX_IMAGE,
            "ports": [{"name": "http", "containerPort": PROXY_PORT}],
            "volumeMounts": [
                {"name": "nginx-conf", "mountPath": "/etc/nginx/conf.d"},
                {"name": "auth", "mountPath": "/etc/nginx/auth"},
            ],
            "readinessProbe": kube.http_probe("/health", "http"),
            "livenessProbe": kube.http_probe("/health", "http", period_s=30),
            "resources": kube.resources("50m", "64Mi"),
            "securityContext": kube.RESTRICTED_CONTAINER,
        }
        return {
            "replicas": 1,
            "selector": {"matchLabels": {"app": self._prefix}},
            "template": {
                "metadata": {"labels": kube.labels(self._prefix)},
                "spec": {"containers": [mlflow, proxy], "volumes": volumes},
            },
        }

    def _postgres(self, secret: pulumi.Input[str], size: str) -> k8s.apps.v1.StatefulSet:
        """Postgres and its headless Service (``pulumi.com/skipAwait``: the StatefulSet
        is what Pulumi waits for; the governing Service has no endpoints before it)."""
        name = f"{self._prefix}-postgres"
        service = k8s.core.v1.Service(
            name,
            metadata=kube.skip_await(self._meta(name, name)),
            spec={
                "clusterIP": "None",
                "selector": {"app": name},
                "ports": [{"name": "postgres", "port": 5432}],
            },
            opts=self._opts(),
        )
        ready = ["pg_isready", "-U", "mlflow", "-d", "mlflow"]
        password = {"secretKeyRef": {"name": secret, "key": "DB_PASSWORD"}}
        container = {
            "name": "postgres",
            "image": POSTGRES_IMAGE,
            "ports": [{"name": "postgres", "containerPort": 5432}],
            "env": [
                {"name": "POSTGRES_USER", "value": "mlflow"},
                {"name": "POSTGRES_DB", "value": "mlflow"},
                {"name": "PGDATA", "value": "/var/lib/postgresql/data/pg"},
                {"name": "POSTGRES_PASSWORD", "valueFrom": password},
            ],
            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
            "readinessProbe": {"exec": {"command": ready}, "periodSeconds": 10},
            "livenessProbe": {"exec": {"command": ready}, "periodSeconds": 30},
            "resources": kube.resources("250m", "1Gi"),
        }
        return k8s.apps.v1.StatefulSet(
            name,
            metadata=self._meta(name, name),
            spec={
                "serviceName": name,
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": kube.labels(name)},
                    "spec": {
                        "securityContext": {"runAsUser": 999, "fsGroup": 999},
                        "containers": [container],
                    },
                },
                "volumeClaimTemplates": [kube.pvc_template("data", size)],
            },
            opts=self._opts(depends_on=[service], custom_timeouts=WORKLOAD_TIMEOUTS),
        )
