"""MLflow tracking server and model registry, with Postgres and basic auth in front.

Why this shape: MLflow itself has no authentication worth exposing, so it listens on
127.0.0.1 only and an nginx sidecar in the same pod does basic auth (htpasswd from a
secret) and proxies to it; ``/health`` stays open for probes. Metadata lives in
Postgres (a one-replica StatefulSet with a PVC); artifacts on a PVC or in S3 by config.

Left out: TLS (terminate at your ingress), Postgres backups and HA, MLflow's own
multi-user auth app.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import kube
from infra.config import MlflowSettings

APP = "mlflow"
POSTGRES_IMAGE = "postgres:16.4"
NGINX_IMAGE = "nginxinc/nginx-unprivileged:1.27-alpine"
MLFLOW_PORT = 5000
PROXY_PORT = 8080

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


@dataclass(frozen=True)
class MlflowArgs:
    settings: MlflowSettings
    namespace: pulumi.Input[str]
    db_password: pulumi.Output[str]
    htpasswd: pulumi.Output[str]
    aws_access_key_id: pulumi.Output[str] | None = None
    aws_secret_access_key: pulumi.Output[str] | None = None


class MlflowServer(pulumi.ComponentResource):
    tracking_uri: pulumi.Output[str]

    def __init__(
        self, name: str, args: MlflowArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlcicd:infra:MlflowServer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns = args.namespace
        secret_data: dict[str, pulumi.Input[str]] = {
            "DB_PASSWORD": args.db_password,
            "htpasswd": args.htpasswd,
        }
        if args.aws_access_key_id is not None and args.aws_secret_access_key is not None:
            secret_data["AWS_ACCESS_KEY_ID"] = args.aws_access_key_id
            secret_data["AWS_SECRET_ACCESS_KEY"] = args.aws_secret_access_key
        secret = k8s.core.v1.Secret(
            "mlflow-secrets",
            metadata=kube.meta("mlflow-secrets", ns, APP),
            string_data=secret_data,
            opts=child,
        )
        postgres = self._postgres(ns, secret, args.settings.db_storage_size)
        conf = k8s.core.v1.ConfigMap(
            "mlflow-nginx",
            metadata=kube.meta("mlflow-nginx", ns, APP),
            data={"default.conf": NGINX_CONF},
            opts=child,
        )
        volumes: list[dict[str, object]] = [
            {"name": "nginx-conf", "configMap": {"name": conf.metadata["name"]}},
            {
                "name": "auth",
                "secret": {
                    "secretName": secret.metadata["name"],
                    "items": [{"key": "htpasswd", "path": "htpasswd"}],
                },
            },
        ]
        mounts: list[dict[str, object]] = []
        if args.settings.artifact_store == "pvc":
            artifacts = k8s.core.v1.PersistentVolumeClaim(
                "mlflow-artifacts",
                metadata=kube.meta("mlflow-artifacts", ns, APP),
                spec=kube.pvc_template("a", args.settings.storage_size)["spec"],
                opts=child,
            )
            volumes.append(
                {
                    "name": "artifacts",
                    "persistentVolumeClaim": {"claimName": artifacts.metadata["name"]},
                }
            )
            mounts.append({"name": "artifacts", "mountPath": "/mlartifacts"})
            destination = "/mlartifacts"
        else:
            destination = args.settings.artifact_bucket
        backend = f"postgresql://mlflow:$(DB_PASSWORD)@{APP}-postgres:5432/mlflow"
        health = "import urllib.request as u; u.urlopen('http://127.0.0.1:5000/health', timeout=4)"
        k8s.apps.v1.Deployment(
            "mlflow",
            metadata=kube.meta("mlflow", ns, APP),
            spec={
                "replicas": 1,
                "selector": {"matchLabels": {"app": APP}},
                "template": {
                    "metadata": {"labels": kube.labels(APP)},
                    "spec": {
                        "containers": [
                            {
                                "name": "mlflow",
                                "image": args.settings.image,
                                "command": ["mlflow", "server"],
                                "args": [
                                    "--host=127.0.0.1",
                                    f"--port={MLFLOW_PORT}",
                                    f"--backend-store-uri={backend}",
                                    f"--artifacts-destination={destination}",
                                    "--serve-artifacts",
                                ],
                                "envFrom": [{"secretRef": {"name": secret.metadata["name"]}}],
                                "volumeMounts": mounts,
                                "resources": kube.resources("500m", "2Gi"),
                                "startupProbe": {
                                    "exec": {"command": ["python", "-c", health]},
                                    "periodSeconds": 5,
                                    "failureThreshold": 60,
                                },
                                "livenessProbe": {
                                    "exec": {"command": ["python", "-c", health]},
                                    "periodSeconds": 30,
                                    "timeoutSeconds": 5,
                                },
                            },
                            {
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
                            },
                        ],
                        "volumes": volumes,
                    },
                },
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[postgres]),
        )
        k8s.core.v1.Service(
            "mlflow",
            metadata=kube.meta("mlflow", ns, APP),
            spec={
                "selector": {"app": APP},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
            opts=child,
        )
        self.tracking_uri = pulumi.Output.concat("http://mlflow.", ns, ".svc.cluster.local")
        self.register_outputs({"trackingUri": self.tracking_uri})

    def _postgres(
        self, ns: pulumi.Input[str], secret: k8s.core.v1.Secret, size: str
    ) -> k8s.apps.v1.StatefulSet:
        child = pulumi.ResourceOptions(parent=self)
        name = f"{APP}-postgres"
        k8s.core.v1.Service(
            name,
            metadata=kube.meta(name, ns, name),
            spec={
                "clusterIP": "None",
                "selector": {"app": name},
                "ports": [{"name": "postgres", "port": 5432}],
            },
            opts=child,
        )
        ready = ["pg_isready", "-U", "mlflow", "-d", "mlflow"]
        return k8s.apps.v1.StatefulSet(
            name,
            metadata=kube.meta(name, ns, name),
            spec={
                "serviceName": name,
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": kube.labels(name)},
                    "spec": {
                        "securityContext": {"runAsUser": 999, "fsGroup": 999},
                        "containers": [
                            {
                                "name": "postgres",
                                "image": POSTGRES_IMAGE,
                                "ports": [{"name": "postgres", "containerPort": 5432}],
                                "env": [
                                    {"name": "POSTGRES_USER", "value": "mlflow"},
                                    {"name": "POSTGRES_DB", "value": "mlflow"},
                                    {"name": "PGDATA", "value": "/var/lib/postgresql/data/pg"},
                                    {
                                        "name": "POSTGRES_PASSWORD",
                                        "valueFrom": {
                                            "secretKeyRef": {
                                                "name": secret.metadata["name"],
                                                "key": "DB_PASSWORD",
                                            }
                                        },
                                    },
                                ],
                                "volumeMounts": [
                                    {"name": "data", "mountPath": "/var/lib/postgresql/data"}
                                ],
                                "readinessProbe": {"exec": {"command": ready}, "periodSeconds": 10},
                                "livenessProbe": {"exec": {"command": ready}, "periodSeconds": 30},
                                "resources": kube.resources("250m", "1Gi"),
                            }
                        ],
                    },
                },
                "volumeClaimTemplates": [kube.pvc_template("data", size)],
            },
            opts=child,
        )
