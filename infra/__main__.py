"""The mlcicd Pulumi program: wiring only (config -> components -> outputs)."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra import github_values, program
from infra.cluster_secrets import ExternalSecrets, ExternalSecretsArgs, SecretSource, VaultStore
from infra.config import PulumiSource, load_config
from infra.github_repo import GitHubRepo, GitHubRepoArgs
from infra.gpu_runners import RunnerFleet, RunnerFleetArgs
from infra.image_registry import ImageRegistry, ImageRegistryArgs
from infra.mlflow_server import MlflowArgs, MlflowServer
from infra.monitoring import Monitoring, MonitoringArgs
from infra.rollouts import APP, InferenceRollout, RolloutsArgs
from infra.workflow import pull_request_checks

cfg = load_config(PulumiSource(), program.stage_runner_classes)
ci_definition, env_definition = program.definitions(cfg.profile, cfg.environment)
secrets = cfg.secrets
cluster = program.opts(program.kubernetes_provider(cfg))

namespace = k8s.core.v1.Namespace("app", metadata={"name": cfg.namespace}, opts=cluster)
ns = namespace.metadata["name"]
tag = program.image_tag(cfg)
store = cfg.secrets_settings
secret_source = SecretSource("pulumi")
if store.external:
    secret_source = ExternalSecrets(
        "external-secrets",
        ExternalSecretsArgs(
            VaultStore(store.vault_server, store.vault_path, store.vault_role, store.key_prefix)
        ),
        cluster,
    ).source

registry = ImageRegistry(
    "registry",
    ImageRegistryArgs(
        cfg.registry,
        cfg.images,
        tag,
        ns,
        github_values.image_name(cfg).rsplit("/", 1)[0],
        cfg.repo_root,
        secrets.registry_password,
        secrets.registry_htpasswd,
        secret_source,
    ),
    cluster,
)
mlflow = MlflowServer(
    "mlflow",
    MlflowArgs(
        cfg.mlflow,
        ns,
        secret_source,
        secrets.db_password,
        secrets.mlflow_htpasswd,
        secrets.aws_access_key_id,
        secrets.aws_secret_access_key,
    ),
    cluster,
)
monitoring = Monitoring(
    "monitoring",
    MonitoringArgs(
        env_definition,
        APP,
        ns,
        cfg.monitoring.retention,
        cfg.monitoring.grafana_dashboard,
        secrets.grafana_admin_password,
        secret_source,
    ),
    cluster,
)
rollout = InferenceRollout(
    "inference",
    RolloutsArgs(
        env_definition,
        cfg.inference,
        cfg.environment,
        ns,
        registry.inference_image,
        registry.pull_secret_name,
        monitoring.prometheus_url,
        secret_source,
        None if store.external else secrets.hf_token,
        git_sha=tag,
        depends_on=(monitoring.release,),
    ),
    cluster,
)
runners = RunnerFleet(
    "runners",
    RunnerFleetArgs(
        cfg.runners,
        cfg.github.url,
        cfg.github.auth,
        cfg.github.app_id,
        cfg.github.app_installation_id,
        None if store.external else secrets.github_token,
        None if store.external else secrets.github_app_private_key,
        registry.runner_image,
        ns,
        registry,
        secret_source,
        # Each one is read by a workflow step or the code it runs; the contract tests
        # (tests/infra/test_contracts.py) fail on one that nothing reads.
        runner_env={
            "MLCICD_NAMESPACE": cfg.namespace,
            "MLCICD_ENDPOINT": rollout.endpoint,
            "MLFLOW_TRACKING_URI": mlflow.tracking_uri,
            "MLFLOW_TRACKING_USERNAME": cfg.mlflow.username,
            "PROMETHEUS_URL": monitoring.prometheus_url,
        },
        runner_secret_env={"MLFLOW_TRACKING_PASSWORD": secrets.mlflow_password},
    ),
    cluster,
)
repo = GitHubRepo(
    "github",
    GitHubRepoArgs(
        cfg.github,
        cfg.github_environment,
        main_only=cfg.environment == "prod",
        workflows=program.workflow_files(cfg),
        required_checks=pull_request_checks(ci_definition),
        secrets=github_values.secret_specs(cfg),
        variables=github_values.variable_specs(cfg, rollout.endpoint),
    ),
    program.opts(program.github_provider(cfg)),
)

pulumi.export("endpoint", rollout.endpoint)
pulumi.export("canaryEndpoint", rollout.canary_endpoint)
pulumi.export("registry", registry.host)
pulumi.export("inferenceImage", registry.inference_image)
pulumi.export("runnerImage", registry.runner_image)
pulumi.export("mlflowTrackingUri", mlflow.tracking_uri)
pulumi.export("prometheusUrl", monitoring.prometheus_url)
pulumi.export("runnerLabels", runners.labels)
pulumi.export("githubEnvironment", repo.environment)
