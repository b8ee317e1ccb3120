"""Contracts between the pieces: both stacks rendered, then checked against each other.

Each test is one class of defect that would only show on a real cluster or on GitHub
(issue 10): a workflow value nobody provisions, a runner env var nobody reads, a
``runs-on`` no scale set answers, an image a pod cannot pull, a selector that matches
no pod, an API call the Role forbids, a commit the branch rules refuse, an await that
waits for the wrong thing, a node label nothing sets, a Secret no mode provides.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from inference.serve_cli import IMAGE_COMMAND
from infra.config import INSTALLED_NODE_LABELS, project_defaults
from infra.config_model import GitHubSettings
from infra.github_repo import pulumi_identity
from infra.gpu_runners import ARC_DOCKER_GROUP_GID, DEPLOYER_ROLE
from infra.kube import whole_cpus
from infra.workflow_review import HOSTED_RUNNER, OPTIONAL_SECRETS
from mlcicd.cli import build_parser
from pipeline.rollout.deploy_cli import run_set_image, run_wait
from pipeline.rollout.rollback_cli import add_arguments, run_rollback
from tests.unit.fake_kubernetes import (
    Access,
    FakeAppsV1Api,
    FakeCustomObjectsApi,
    replica_set,
    rollout,
)

from . import contracts as c
from .conftest import STACKS, one

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
# Env vars the runner pods get that a library, not our code, reads.
LIBRARY_ENV = {
    # MLflow's client sends basic auth from these (mlflow/environment_variables.py).
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
}
CONSUMER_DIRS = ("pipeline", "inference", "mlcicd", "tests/integration")


def _jobs(recordings: dict[str, Any]) -> dict[str, Any]:
    """Every job of every workflow file the prod stack commits, by ``file:job``."""
    files = c.of_type(recordings["prod"], "github:index/repositoryFile:RepositoryFile")
    assert len(files) == 2, "the pipeline's workflow and the fork-comment relay"
    jobs: dict[str, Any] = {}
    for file in files:
        for job_id, job in yaml.safe_load(file["inputs"]["content"])["jobs"].items():
            jobs[f"{file['inputs']['file']}:{job_id}"] = job
    return jobs


# --- GitHub: workflow values, runs-on, committing under protection ---------------------


def test_every_workflow_value_is_provisioned_where_its_job_runs(
    recordings: dict[str, Any],
) -> None:
    provided: dict[str | None, set[str]] = {None: {"secrets.GITHUB_TOKEN"}}
    for recording in recordings.values():
        for res in recording["resources"]:
            kind, inputs = res["type"].rsplit(":", 1)[1], res["inputs"]
            name = inputs.get("variableName") or inputs.get("secretName")
            prefix = "secrets" if "Secret" in kind else "vars"
            if kind in ("ActionsVariable", "ActionsSecret"):
                provided[None].add(f"{prefix}.{name}")
            elif kind in ("ActionsEnvironmentVariable", "ActionsEnvironmentSecret"):
                provided.setdefault(inputs["environment"], set()).add(f"{prefix}.{name}")
    optional = {f"secrets.{name}" for name in OPTIONAL_SECRETS}
    read: set[str] = set()
    for job_id, job in _jobs(recordings).items():
        available = provided[None] | provided.get(job.get("environment"), set())
        text = yaml.safe_dump(job)
        used = set(re.findall(r"\b((?:vars|secrets)\.[A-Z_]+)", text))
        assert used <= available | optional, f"{job_id} reads {sorted(used - available)}"
        for secret in used & optional:  # read only behind a check that it is set
            assert f"{secret} != ''" in text, f"{job_id} needs {secret} unguarded"
        read |= used
    assert {"secrets.HF_TOKEN", "vars.MODEL_REF", "vars.REGISTRY"} <= read


def test_every_runs_on_is_a_scale_set_a_stack_creates(recordings: dict[str, Any]) -> None:
    """ARC 0.9.3 registers a scale set under one label, its name: nothing else matches."""
    names = {
        values["values"]["runnerScaleSetName"]
        for recording in recordings.values()
        for values in c.scale_sets(recording)
    }
    for job_id, job in _jobs(recordings).items():
        assert isinstance(job["runs-on"], str), f"{job_id}: runs-on {job['runs-on']}"
        if job["runs-on"] == HOSTED_RUNNER:  # review jobs: a fork's code never runs on ours
            assert "environment" not in job, f"{job_id}: a hosted runner in an environment"
            continue
        assert job["runs-on"] in names, f"{job_id}: no scale set named {job['runs-on']}"


@pytest.mark.parametrize("auth", ["token", "app"])
def test_the_workflow_commit_is_allowed_by_the_branch_rules(
    recordings: dict[str, Any], auth: str
) -> None:
    prod = recordings["prod"]
    settings = GitHubSettings("o", "r", "adopt", (), auth, "123", "456")  # type: ignore[arg-type]
    identity = pulumi_identity(settings)
    files = c.of_type(prod, "github:index/repositoryFile:RepositoryFile")
    assert files
    for file in files:
        branch = file["inputs"]["branch"]
        rules = list(c.branch_rules(prod, branch))
        assert rules, f"{branch} is not protected at all"
        for rule in rules:
            assert rule["kind"] == "ruleset", "classic protection stops an App's commit"
            actors = [
                {"actor_type": a["actorType"], "actor_id": a["actorId"]}
                for a in rule["bypassActors"]
                if a["bypassMode"] == "always"
            ]
            if auth == "token":
                assert identity in actors, f"{branch}: Pulumi's identity cannot bypass"
            else:  # the recorded stack uses token auth; an App would be its own actor
                assert identity["actor_type"] == "Integration" and identity["actor_id"] == 123


# --- Runner pods: env, images, dind ----------------------------------------------------


def test_every_runner_env_var_is_read_by_something(recordings: dict[str, Any]) -> None:
    workflow = recordings["prod"]["workflow"]
    sources = (
        "\n".join(p.read_text() for d in CONSUMER_DIRS for p in (REPO / d).rglob("*.py"))
        + (REPO / "pipeline.toml").read_text()
    )
    for recording in recordings.values():
        secrets = c.provided_secrets(recording)
        for values in c.scale_sets(recording):
            spec = values["values"]["template"]["spec"]
            (runner,) = spec["containers"]
            names = {e["name"] for e in runner["env"]}
            for source in runner["envFrom"]:
                names |= secrets[values["namespace"], source["secretRef"]["name"]].keys
            assert "MLCICD_NAMESPACE" in names and "MLFLOW_TRACKING_PASSWORD" in names
            for name in sorted(names - LIBRARY_ENV):
                used = re.search(rf"\$\{{?{name}\b", workflow) or f'"{name}"' in sources
                assert used, f"{values['name']}: runner env {name} is read by nothing; drop it"


@pytest.mark.parametrize("stack", STACKS)
def test_every_private_image_can_be_pulled_with_the_pods_secrets(
    recordings: dict[str, Any], stack: str
) -> None:
    recording = recordings[stack]
    host = recording["outputs"]["registry"]
    ours = recording["outputs"]["inferenceImage"].rsplit("/", 1)[0]
    secrets = c.provided_secrets(recording)
    raw = {
        (r["inputs"]["metadata"]["namespace"], r["inputs"]["metadata"]["name"]): r["inputs"]
        for r in c.of_type(recording, c.SECRET)
    }
    checked = 0
    for pod in c.pods(recording):
        for image in pod.images:
            if not image.startswith(ours + "/"):
                continue  # a public image
            checked += 1
            usable = [
                name
                for name in pod.pull_secrets
                if (pod.namespace, name) in secrets
                and secrets[pod.namespace, name].type == "kubernetes.io/dockerconfigjson"
            ]
            assert usable, f"{pod.source} runs {image} without a pull secret for {host}"
            for name in usable:
                data = c.unwrap(raw[pod.namespace, name]["stringData"])
                assert host in c.registry_hosts(data[".dockerconfigjson"]), (pod.source, name)
    assert checked >= 3  # the inference pods, each runner class (and dind's init)


def test_runner_image_docker_group_matches_arcs_dind_socket(recordings: dict[str, Any]) -> None:
    """ARC 0.9.3's dind runs dockerd --group=123; the runner user must be in that group."""
    assert any(
        v["values"].get("containerMode", {}).get("type") == "dind"
        for v in c.scale_sets(recordings["staging"])
    )
    lines = (REPO / "runner_image" / "Dockerfile").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    gid = re.search(r"^ARG DOCKER_GID=(\d+)$", text, re.M)
    assert gid and int(gid.group(1)) == ARC_DOCKER_GROUP_GID, "docker GID differs from ARC's"
    created = re.search(r'groupadd [^\n]*--gid "?\$\{DOCKER_GID\}"? docker', text)
    installed = text.find("docker.io")
    assert created and created.start() < installed, "docker group not created with DOCKER_GID"
    assert "usermod -aG docker runner" in text


# --- Services, PodMonitor, awaits ------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_service_and_pod_monitor_selects_the_pods_it_is_for(
    recordings: dict[str, Any], stack: str
) -> None:
    recording = recordings[stack]
    pods = c.pods(recording)
    selectors = [
        (r["inputs"], r["inputs"]["spec"]["selector"], r["inputs"]["spec"]["ports"][0])
        for r in c.of_type(recording, c.SERVICE)
    ] + [
        (
            r["inputs"],
            r["inputs"]["spec"]["selector"]["matchLabels"],
            r["inputs"]["spec"]["podMetricsEndpoints"][0],
        )
        for r in c.of_type(recording, c.POD_MONITOR)
    ]
    for inputs, selector, port in selectors:
        meta = inputs["metadata"]
        meant_for = meta["labels"]["app"]
        matched = [
            p
            for p in pods
            if p.namespace == meta["namespace"] and selector.items() <= p.labels.items()
        ]
        assert matched, f"{inputs['kind']} {meta['name']} selects no pod"
        assert {p.labels.get("app") for p in matched} == {meant_for}, meta["name"]
        wanted = port.get("targetPort", port.get("port"))
        if isinstance(wanted, str):
            assert all(wanted in p.port_names for p in matched), (meta["name"], wanted)


@pytest.mark.parametrize("stack", STACKS)
def test_awaits_are_explicit(recordings: dict[str, Any], stack: str) -> None:
    """A Service either skips await or depends on the workload behind it; workloads and
    releases have customTimeouts; the Rollout (readiness: Argo + `mlcicd deploy wait`)
    is not awaited."""
    recording = recordings[stack]
    by_urn = {r["urn"]: r for r in recording["resources"]}
    for res in c.of_type(recording, c.SERVICE):
        annotations = res["inputs"]["metadata"].get("annotations", {})
        if annotations.get("pulumi.com/skipAwait") == "true":
            continue
        deps = {by_urn[d]["type"] for d in res["dependsOn"]}
        assert deps & {c.DEPLOYMENT, c.STATEFUL_SET}, f"Service {res['name']} races its pods"
    for type_ in (c.DEPLOYMENT, c.STATEFUL_SET, c.RELEASE):
        for res in c.of_type(recording, type_):
            assert res["customTimeouts"].get("create"), f"{res['name']}: no customTimeouts"
    (rollout_res,) = c.of_type(recording, c.ROLLOUT)
    assert rollout_res["inputs"]["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"


@pytest.mark.parametrize("stack", STACKS)
def test_gpu_pods_select_labels_that_the_cluster_gets(
    recordings: dict[str, Any], stack: str
) -> None:
    recording = recordings[stack]
    plugin = one(recording, c.RELEASE, "nvidia-device-plugin")["inputs"]["values"]
    assert plugin["gfd"]["enabled"] and plugin["nfd"]["enabled"]
    for pod in c.pods(recording):
        gpu = any(
            "nvidia.com/gpu" in ctr.get("resources", {}).get("limits", {})
            for ctr in pod.spec["containers"]
        )
        if gpu:
            labels = set(pod.spec.get("nodeSelector", {}))
            assert labels and labels <= INSTALLED_NODE_LABELS, (pod.source, labels)


# --- RBAC: the Role covers every call `mlcicd deploy` / `mlcicd rollback` make --------


def _cli_access() -> set[Access]:
    """Run every deploy and rollback path against the fake API; collect its requests."""
    new = "reg/inference@sha256:" + "b" * 64
    parse = build_parser().parse_args
    fakes: list[FakeCustomObjectsApi | FakeAppsV1Api] = []

    def api(status: dict[str, Any] | None = None, **kw: Any) -> FakeCustomObjectsApi:
        fake = FakeCustomObjectsApi(rollout("reg/inference:v3", status), **kw)
        fakes.append(fake)
        return fake

    deploy = ["--namespace", "prod", "--rollout", "inference-server"]
    run_set_image(parse(["deploy", "set-image", *deploy, "--image", new]), api())
    healthy = {"phase": "Healthy", "observedGeneration": "1"}
    run_wait(parse(["deploy", "wait", *deploy, "--timeout", "1s", "--poll", "1ms"]), api(healthy))
    rollback = argparse.ArgumentParser()
    add_arguments(rollback)
    canary = {"currentPodHash": "hash3", "stableRS": "hash2"}
    history = [replica_set(2, "reg/inference:v2"), replica_set(3, "reg/inference:v3")]
    for action, status, kw in (
        ("auto", canary, {}),
        ("abort", canary, {"status_subresource": False}),
        ("undo", None, {}),
    ):
        apps = FakeAppsV1Api(history)
        fakes.append(apps)
        args = ["--namespace", "prod", "--reason", "t", "--registry", "no", "--action", action]
        assert run_rollback(rollback.parse_args(args), api(status, **kw), apps) == 0
    return {a for fake in fakes for a in fake.access}


@pytest.mark.parametrize("stack", STACKS)
def test_the_deployer_role_allows_every_call_the_cli_makes(
    recordings: dict[str, Any], stack: str
) -> None:
    role = one(recordings[stack], c.ROLE, f"runners-{DEPLOYER_ROLE}")["inputs"]
    calls = _cli_access()
    assert Access("argoproj.io", "rollouts", "status", "patch") in calls
    for call in sorted(calls, key=str):
        resource = f"{call.resource}/{call.subresource}" if call.subresource else call.resource
        assert c.rbac_allows(role["rules"], call.group, resource, call.verb), (
            f"Role {DEPLOYER_ROLE} forbids {call.verb} {call.group}/{resource}"
        )


# --- MLflow image ----------------------------------------------------------------------


def _lock_version(package: str) -> str:
    lock = (REPO / "requirements.lock").read_text()
    match = re.search(rf"^{package}==([\w.]+)", lock, re.M)
    assert match, f"{package} not pinned in requirements.lock"
    return match.group(1)


def test_mlflow_image_has_the_postgres_driver_at_the_clients_version() -> None:
    """Upstream's plain image has no psycopg2 (or boto3); -full does, from 3.9.0."""
    images = {"Pulumi.yaml": str(project_defaults(REPO)["mlflow.image"])}
    for stack in STACKS:
        config = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())["config"]
        images[stack] = config.get("mlcicd:mlflow.image", images["Pulumi.yaml"])
    for where, image in images.items():
        match = re.fullmatch(r"ghcr\.io/mlflow/mlflow:v([\d.]+)-full", image)
        assert match, f"{where}: {image} is not upstream's -full variant"
        assert match.group(1) == _lock_version("mlflow"), f"{where}: {image} != client"


def test_rendered_mlflow_server_runs_that_image(recordings: dict[str, Any]) -> None:
    # Only prod runs MLflow: staging registers in it (mlflow.trackingUri).
    (server,) = [p for p in c.pods(recordings["prod"]) if p.source == "Deployment/mlflow"]
    image = server.spec["containers"][0]["image"]
    assert image == f"ghcr.io/mlflow/mlflow:v{_lock_version('mlflow')}-full"


def _dockerfile_cmd() -> list[str]:
    """The serving image's CMD (exec form), as the Dockerfile states it."""
    lines = (REPO / "Dockerfile").read_text().splitlines()
    (line,) = [text for text in lines if text.startswith("CMD ")]
    command: list[str] = json.loads(line.removeprefix("CMD "))
    return command


def test_the_rollout_runs_the_command_the_image_holds(recordings: dict[str, Any]) -> None:
    """The image holds inference/ alone: a `mlcicd serve` command would not be found."""
    assert _dockerfile_cmd() == list(IMAGE_COMMAND)
    copied = re.findall(r"^COPY (\S+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert "inference/" in copied and not {"pipeline/", "mlcicd/"} & set(copied)
    for stack in STACKS:
        (pod,) = [p for p in c.pods(recordings[stack]) if p.source.startswith("Rollout/")]
        server = pod.spec["containers"][0]
        assert server["command"] == list(IMAGE_COMMAND), f"{stack}: {server['command']}"


def test_the_servers_threads_follow_the_pods_cpu_request(recordings: dict[str, Any]) -> None:
    """torch sizes its pool from the node's cores unless told; the request is what it gets."""
    for stack in STACKS:
        (pod,) = [p for p in c.pods(recordings[stack]) if p.source.startswith("Rollout/")]
        server = pod.spec["containers"][0]
        env = {e["name"]: e.get("value") for e in server["env"]}
        cpu = str(server["resources"]["requests"]["cpu"])
        assert env["OMP_NUM_THREADS"] == str(whole_cpus(cpu)), (stack, cpu, env)
