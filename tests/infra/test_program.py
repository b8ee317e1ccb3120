"""The Pulumi program under mocks, for both stacks: graph, ordering, GPUs, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inference.settings import GRACE_AFTER_DRAIN_S
from infra.analysis import analysis_template, rollout_steps
from infra.monitoring import PROMETHEUS_URL
from infra.rollouts import termination_grace_seconds
from pipeline.definition import load_definition

from .conftest import MARKERS, STACKS, one, resources

COMPONENTS = {
    "mlcicd:infra:RunnerFleet",
    "mlcicd:infra:GitHubRepo",
    "mlcicd:infra:ImageRegistry",
    "mlcicd:infra:MlflowServer",
    "mlcicd:infra:Monitoring",
    "mlcicd:infra:InferenceRollout",
}
ROLLOUT = "kubernetes:argoproj.io/v1alpha1:Rollout"
TEMPLATE = "kubernetes:argoproj.io/v1alpha1:AnalysisTemplate"
RELEASE = "kubernetes:helm.sh/v3:Release"
NFD_GPU_LABEL = "feature.node.kubernetes.io/pci-10de.present"

pytestmark = pytest.mark.slow


def _by_urn(recording: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["urn"]: r for r in recording["resources"]}


def _depends(recording: dict[str, Any], resource: dict[str, Any]) -> set[str]:
    urns = _by_urn(recording)
    return {f"{urns[d]['type']}/{urns[d]['name']}" for d in resource["dependsOn"]}


@pytest.mark.parametrize("stack", STACKS)
def test_every_component_is_present_and_parents_its_children(
    recordings: dict[str, Any], stack: str
) -> None:
    recording = recordings[stack]
    types = {r["type"] for r in recording["resources"]}
    assert types >= COMPONENTS
    urns = _by_urn(recording)
    for res in recording["resources"]:
        if res["type"] == "pulumi:pulumi:Stack":
            continue
        assert res["parent"] in urns, res["name"]
        if res["custom"] and not res["type"].startswith("pulumi:providers:"):
            parent = urns[res["parent"]]
            assert parent["type"] in COMPONENTS or res["name"] == "app", res["name"]


@pytest.mark.parametrize("stack", STACKS)
def test_crds_come_before_custom_resources(recordings: dict[str, Any], stack: str) -> None:
    recording = recordings[stack]
    rollout = one(recording, ROLLOUT, "inference-rollout")
    deps = _depends(recording, rollout)
    assert f"{RELEASE}/argo-rollouts" in deps
    assert f"{TEMPLATE}/inference-analysis-template" in deps
    assert f"{RELEASE}/argo-rollouts" in _depends(
        recording, one(recording, TEMPLATE, "inference-analysis-template")
    )
    for kind in ("PodMonitor", "PrometheusRule"):
        (custom,) = resources(recording, f"kubernetes:monitoring.coreos.com/v1:{kind}")
        assert f"{RELEASE}/kube-prometheus" in _depends(recording, custom)
    for release in resources(recording, RELEASE):
        if release["name"].startswith("mlcicd-"):
            assert f"{RELEASE}/arc" in _depends(recording, release)


@pytest.mark.parametrize("stack", STACKS)
def test_charts_are_pinned(recordings: dict[str, Any], stack: str) -> None:
    for release in resources(recordings[stack], RELEASE):
        assert release["inputs"]["version"][0].isdigit(), release["name"]


@pytest.mark.parametrize("stack", STACKS)
def test_gpu_scheduling(recordings: dict[str, Any], stack: str) -> None:
    recording = recordings[stack]
    values = one(recording, RELEASE, f"mlcicd-{stack}-gpu")["inputs"]["values"]
    pod = values["template"]["spec"]
    (runner,) = pod["containers"]
    assert runner["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert runner["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {NFD_GPU_LABEL: "true"}
    assert {
        "key": "nvidia.com/gpu",
        "operator": "Equal",
        "value": "present",
        "effect": "NoSchedule",
    } in pod["tolerations"]
    assert values["minRunners"] == 0
    cpu = one(recording, RELEASE, f"mlcicd-{stack}-cpu")["inputs"]["values"]
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    plugin = one(recording, RELEASE, "nvidia-device-plugin")["inputs"]["values"]
    # The label the GPU pods select on is set by NFD, which the chart installs with GFD.
    assert plugin["gfd"]["enabled"] is True and plugin["nfd"]["enabled"] is True
    spec = one(recording, ROLLOUT, "inference-rollout")["inputs"]["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"] == {NFD_GPU_LABEL: "true"}


@pytest.mark.parametrize("stack", STACKS)
def test_rollout_and_template_equal_the_definition(recordings: dict[str, Any], stack: str) -> None:
    recording = recordings[stack]
    definition = load_definition("gpu", stack)
    namespace = recording["outputs"]["endpoint"].split(".")[1]
    template = one(recording, TEMPLATE, "inference-analysis-template")["inputs"]
    assert template == analysis_template(definition, PROMETHEUS_URL, namespace)
    spec = one(recording, ROLLOUT, "inference-rollout")["inputs"]["spec"]
    assert spec["strategy"]["canary"]["steps"] == rollout_steps(
        definition, "inference-server", namespace
    )
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > definition.serving.drain_timeout_s
    assert pod["terminationGracePeriodSeconds"] == termination_grace_seconds(definition)
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert "preStop" in container["lifecycle"]
    assert "podAntiAffinity" in pod["affinity"]


@pytest.mark.parametrize("stack", STACKS)
def test_the_pods_shutdown_budget_covers_prestop_drain_and_deadline(
    recordings: dict[str, Any], stack: str
) -> None:
    """Contract between the rendered Rollout and the server's drain policy."""
    pod = one(recordings[stack], ROLLOUT, "inference-rollout")["inputs"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"]}
    drain = float(env["MLCICD_DRAIN_TIMEOUT_S"])
    deadline = float(env["MLCICD_REQUEST_DEADLINE_S"])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    prestop = float(command[1])
    assert drain >= deadline, "a drain shorter than the deadline cuts admitted requests"
    assert pod["terminationGracePeriodSeconds"] >= prestop + drain + GRACE_AFTER_DRAIN_S


def test_staging_and_prod_differ_where_they_should(recordings: dict[str, Any]) -> None:
    staging, prod = recordings["staging"], recordings["prod"]

    def replicas(rec: dict[str, Any]) -> int:
        return int(one(rec, ROLLOUT, "inference-rollout")["inputs"]["spec"]["replicas"])

    def max_gpu(rec: dict[str, Any], stack: str) -> int:
        return int(one(rec, RELEASE, f"mlcicd-{stack}-gpu")["inputs"]["values"]["maxRunners"])

    def failure_limit(rec: dict[str, Any]) -> int:
        metrics = one(rec, TEMPLATE, "inference-analysis-template")["inputs"]["spec"]["metrics"]
        return int(metrics[0]["failureLimit"])

    assert replicas(prod) > replicas(staging)
    assert max_gpu(prod, "prod") > max_gpu(staging, "staging")
    assert failure_limit(prod) < failure_limit(staging)
    prod_env = one(prod, "github:index/repositoryEnvironment:RepositoryEnvironment", "production")
    staging_env = one(
        staging, "github:index/repositoryEnvironment:RepositoryEnvironment", "staging"
    )
    assert prod_env["inputs"]["reviewers"][0]["users"]
    assert "reviewers" not in staging_env["inputs"]
    assert one(
        prod,
        "github:index/repositoryEnvironmentDeploymentPolicy:RepositoryEnvironmentDeploymentPolicy",
        "production-main-only",
    )
    # Only the stack that owns the repository manages it (adopted, protected).
    repo = one(prod, "github:index/repository:Repository", "github-repository")
    assert repo["importId"] == "mlcicd" and repo["protect"]
    assert not resources(staging, "github:index/repository:Repository")


def test_workflow_file_and_branch_protection(recordings: dict[str, Any]) -> None:
    prod = recordings["prod"]
    committed = one(prod, "github:index/repositoryFile:RepositoryFile", "github-workflow")["inputs"]
    assert committed["file"] == ".github/workflows/ml-cicd.yml"
    assert committed["content"] == prod["workflow"]
    ruleset = one(prod, "github:index/repositoryRuleset:RepositoryRuleset", "github-main")
    checks = ruleset["inputs"]["rules"]["requiredStatusChecks"]["requiredChecks"]
    assert [c["context"] for c in checks] == ["code-quality", "model-tests"]


def _leaks(value: Any, path: str = "") -> list[str]:
    """Paths where a planted secret appears outside a secret wrapper."""
    if isinstance(value, dict):
        if set(value) == {"__secret__"}:
            return []
        return [leak for k, v in value.items() for leak in _leaks(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [leak for i, v in enumerate(value) for leak in _leaks(v, f"{path}[{i}]")]
    if isinstance(value, str) and any(marker in value for marker in MARKERS.values()):
        return [path]
    return []


@pytest.mark.parametrize("stack", STACKS)
def test_no_secret_in_plaintext_anywhere(
    recordings: dict[str, Any], renders: dict[str, Path], stack: str
) -> None:
    recording = recordings[stack]
    leaks = [
        f"{r['type']}/{r['name']}{leak}"
        for r in recording["resources"]
        for leak in _leaks(r["inputs"])
    ]
    assert leaks == []
    assert _leaks(recording["outputs"]) == []
    # The secrets did reach their resources (wrapped), e.g. the GitHub token:
    secret = one(recording, "kubernetes:core/v1:Secret", "runners-github-config")["inputs"]
    assert MARKERS["githubToken"] in str(secret["stringData"])
    for path in renders[stack].rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not any(m in text for m in MARKERS.values()), path


@pytest.mark.parametrize("stack", STACKS)
def test_outputs(recordings: dict[str, Any], stack: str) -> None:
    outputs = recordings[stack]["outputs"]
    assert {
        "endpoint",
        "registry",
        "mlflowTrackingUri",
        "runnerLabels",
        "inferenceImage",
        "runnerImage",
        "prometheusUrl",
    } <= set(outputs)
    assert outputs["runnerLabels"]["gpu"] == [f"mlcicd-{stack}-gpu"]
