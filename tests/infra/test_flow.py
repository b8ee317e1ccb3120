"""One release through staging and production, read from what both stacks render.

Each test pins one defect of issue 11 so that putting it back fails here: the canary
must reach users (selectors, pod ratios), finish inside its time limits (budget), be
registered and promoted in one registry, roll back only what failed, and serve the
model that was tested (pinned with the image, left alone by ``pulumi up``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.analysis import MODEL_REVISION_ANNOTATION
from infra.config import project_defaults
from infra.rollouts import CI_OWNED_FIELDS, MODEL_ENV, USER_SERVICE, weight_errors
from infra.workflow import runner_environment
from pipeline.definition import duration_seconds, load_definition

from .conftest import STACKS, one, resources

# Neither stack file sets pipelineProfile: both render Pulumi.yaml's default.
PROFILE = str(project_defaults()["pipelineProfile"])
ROLLOUT = "kubernetes:argoproj.io/v1alpha1:Rollout"
TEMPLATE = "kubernetes:argoproj.io/v1alpha1:AnalysisTemplate"
SERVICE = "kubernetes:core/v1:Service"

pytestmark = pytest.mark.slow


def _rollout(recording: dict[str, Any]) -> dict[str, Any]:
    return one(recording, ROLLOUT, "inference-rollout")["inputs"]


def _workflow(recordings: dict[str, Any]) -> dict[str, Any]:
    jobs: dict[str, Any] = yaml.safe_load(recordings["prod"]["workflow"])["jobs"]
    return jobs


# -- 1. the canary reaches users --------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_users_reach_canary_pods_through_a_service_argo_does_not_pin(
    recordings: dict[str, Any], stack: str
) -> None:
    """Argo writes a pod-template hash into the selector of every Service it is given;
    the user-facing Service must not be one, and must select stable and canary pods."""
    recording = recordings[stack]
    canary = _rollout(recording)["spec"]["strategy"]["canary"]
    assert "trafficRouting" not in canary  # the basic canary: weights are pod ratios
    pinned = {canary["stableService"], canary["canaryService"]}
    assert USER_SERVICE not in pinned
    services = {s["inputs"]["metadata"]["name"]: s["inputs"] for s in resources(recording, SERVICE)}
    assert pinned <= set(services)
    selector = services[USER_SERVICE]["spec"]["selector"]
    assert "rollouts-pod-template-hash" not in selector
    template_labels = _rollout(recording)["spec"]["template"]["metadata"]["labels"]
    for role in ("stableMetadata", "canaryMetadata"):
        pod_labels = {**template_labels, **canary[role]["labels"]}
        assert selector.items() <= pod_labels.items(), role


@pytest.mark.parametrize("stack", STACKS)
def test_every_step_weight_is_a_whole_number_of_pods(
    recordings: dict[str, Any], stack: str
) -> None:
    spec = _rollout(recordings[stack])["spec"]
    weights = [s["setWeight"] for s in spec["strategy"]["canary"]["steps"] if "setWeight" in s]
    assert weights and all(spec["replicas"] * w % 100 == 0 for w in weights), weights


def test_replicas_that_cannot_express_a_weight_are_refused() -> None:
    prod = load_definition("gpu", "prod")
    assert weight_errors(prod, 10) == []
    assert (
        weight_errors(prod, 4) and "canary.steps[0].set_weight = 10%" in weight_errors(prod, 4)[0]
    )


def test_staging_analysis_has_golden_prompts_to_judge_without_users(
    recordings: dict[str, Any],
) -> None:
    """Production's analysis sends the golden prompts to the canary Service beside real
    traffic; staging rolls straight to 100% (one replica, no users) and smoke-tests."""
    metrics = one(recordings["prod"], TEMPLATE, "inference-analysis-template")["inputs"]["spec"][
        "metrics"
    ]
    web = [m for m in metrics if "web" in m["provider"]]
    assert {m["name"] for m in web} >= {"model-revision", "golden-capital-france"}
    assert all("-canary." in m["provider"]["web"]["url"] for m in web)
    steps = _rollout(recordings["staging"])["spec"]["strategy"]["canary"]["steps"]
    assert steps == [{"setWeight": 100}]
    staging_job = _workflow(recordings)["deploy-staging"]
    assert any("test_staging_endpoint" in s.get("run", "") for s in staging_job["steps"])


# -- 2. it finishes inside its time limits ----------------------------------------


def _canary_seconds(rollout: dict[str, Any], template: dict[str, Any]) -> int:
    """What Argo will take: the pauses, plus each inline analysis for its longest metric."""
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    analysis = max(
        m["count"] * duration_seconds(m["interval"]) for m in template["spec"]["metrics"]
    )
    pauses = sum(duration_seconds(s["pause"]["duration"]) for s in steps if "pause" in s)
    return pauses + analysis * sum(1 for s in steps if "analysis" in s)


@pytest.mark.parametrize(
    ("stack", "job"), [("staging", "deploy-staging"), ("prod", "deploy-production")]
)
def test_deploy_wait_and_the_job_timeout_cover_the_rendered_canary(
    recordings: dict[str, Any], stack: str, job: str
) -> None:
    recording = recordings[stack]
    canary_s = _canary_seconds(
        _rollout(recording), one(recording, TEMPLATE, "inference-analysis-template")["inputs"]
    )
    deploy = load_definition(PROFILE, stack).deploy
    expected_wait = canary_s + duration_seconds(deploy.startup_margin)
    rendered = _workflow(recordings)[job]
    waits = [
        int(m.group(1))
        for s in rendered["steps"]
        for m in [re.search(r"mlcicd deploy wait .*--timeout (\d+)s", s.get("run", ""))]
        if m
    ]
    assert waits == [expected_wait]
    job_minutes = math.ceil((expected_wait + duration_seconds(deploy.job_overhead)) / 60)
    assert rendered["timeout-minutes"] == job_minutes
    assert rendered["timeout-minutes"] * 60 > expected_wait


# -- 3. one registry, one release ------------------------------------------------


def _runner_env(recording: dict[str, Any], name: str) -> str:
    values = [
        env["value"]
        for release in resources(recording, "kubernetes:helm.sh/v3:Release")
        for container in release["inputs"]["values"]
        .get("template", {})
        .get("spec", {})
        .get("containers", [])
        for env in container.get("env", [])
        if env["name"] == name
    ]
    assert values and len(set(values)) == 1, (name, values)
    return str(values[0])


def test_the_job_that_registers_and_the_job_that_promotes_see_one_tracking_uri(
    recordings: dict[str, Any],
) -> None:
    definition = load_definition(PROFILE)
    register = runner_environment(definition.stage("build"))
    promote = runner_environment(definition.stage("deploy-production"))
    assert (register, promote) == ("staging", "prod")  # two stacks' runners ...
    uris = {stack: _runner_env(recordings[stack], "MLFLOW_TRACKING_URI") for stack in STACKS}
    assert uris[register] == uris[promote]  # ... one registry
    assert uris["prod"] == recordings["prod"]["outputs"]["mlflowTrackingUri"]
    assert any(r["type"] == "mlcicd:infra:MlflowServer" for r in recordings["prod"]["resources"])


# -- 3. roll back only what failed -----------------------------------------------


def _runs(condition: str, outcomes: dict[str, str]) -> bool:
    """GitHub's ``if:`` for the expressions the deploy job uses, evaluated in Python."""
    failed = any(v == "failure" for v in outcomes.values())
    python = condition.replace("&&", " and ").replace("||", " or ")
    python = python.replace("failure()", str(failed))
    python = re.sub(r"steps\.([a-z-]+)\.outcome", lambda m: repr(outcomes[m.group(1)]), python)
    return bool(eval(python, {"__builtins__": {}}, {}))


def _fires(recordings: dict[str, Any], outcomes: dict[str, str]) -> set[str]:
    steps = _workflow(recordings)["deploy-production"]["steps"]
    return {s["name"] for s in steps if "if" in s and _runs(s["if"], outcomes)}


def test_a_failed_rollout_or_analysis_is_rolled_back(recordings: dict[str, Any]) -> None:
    outcomes = {"set-image": "success", "rollout": "failure", "promote": "skipped"}
    assert "Roll back a failed rollout" in _fires(recordings, outcomes)


def test_a_failed_promote_after_a_healthy_rollout_is_reported_never_undone(
    recordings: dict[str, Any],
) -> None:
    outcomes = {"set-image": "success", "rollout": "success", "promote": "failure"}
    fired = _fires(recordings, outcomes)
    assert "Roll back a failed rollout" not in fired
    assert "Report a release that is live but not promoted" in fired
    promote = next(
        s for s in _workflow(recordings)["deploy-production"]["steps"] if s.get("id") == "promote"
    )
    attempts = load_definition(PROFILE).deploy.promote_attempts
    assert f"--attempts {attempts}" in promote["run"] and attempts > 1


# -- 4. the model served is the model tested ------------------------------------


def _field(manifest: dict[str, Any], path: str) -> Any:
    node: Any = manifest
    for part in re.findall(r'[^.\[\]"]+|\[\d+\]|\["[^"]+"\]', path):
        if part.startswith('["'):
            node = node[part[2:-2]]
        elif part.startswith("["):
            node = node[int(part[1:-1])]
        else:
            node = node[part]
    return node


@pytest.mark.parametrize("stack", STACKS)
def test_pulumi_up_leaves_the_release_ci_deployed_alone(
    recordings: dict[str, Any], renders: dict[str, Path], stack: str
) -> None:
    resource = one(recordings[stack], ROLLOUT, "inference-rollout")
    ignored = resource["ignoreChanges"]
    missing = set(CI_OWNED_FIELDS) - set(ignored)
    assert not missing, f"the next `pulumi up` would revert CI's release: {sorted(missing)}"
    rollout = resource["inputs"]
    container = rollout["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "inference"
    owned = {path: _field(rollout, path) for path in ignored}  # every path resolves
    assert container["image"] in owned.values()
    names = [container["env"][i]["name"] for i in (0, 1)]
    assert tuple(names) == MODEL_ENV
    assert f'metadata.annotations["{MODEL_REVISION_ANNOTATION}"]' in ignored
    assert {
        "spec.template.spec.containers[0].image",
        "spec.template.spec.containers[0].env[0].value",
        "spec.template.spec.containers[0].env[1].value",
    } <= set(ignored)
    index = yaml.safe_load((renders[stack] / "index.yaml").read_text())
    shown = next(r for r in index if r["type"] == ROLLOUT and r["name"] == "inference-rollout")
    assert shown["ignoreChanges"] == ignored


def test_the_deploy_sets_image_and_model_together_and_checks_the_pods(
    recordings: dict[str, Any],
) -> None:
    jobs = _workflow(recordings)
    outputs = jobs["build"]["outputs"]
    assert {"model_ref", "model_revision"} <= set(outputs)
    register = next(s for s in jobs["build"]["steps"] if s.get("id") == "register")
    assert '--model-revision "$revision"' in register["run"]  # what the gates tested
    for job in ("deploy-staging", "deploy-production"):
        runs = "\n".join(s.get("run", "") for s in jobs[job]["steps"])
        assert '--image "$IMAGE@$DIGEST" --model "$MODEL_REF" --model-revision' in runs
        assert '--expect-model-revision "$MODEL_REVISION"' in runs
        assert "canary analyze" not in runs  # the Rollout's own analysis decides


@pytest.mark.parametrize("stack", STACKS)
def test_inference_pods_share_a_model_cache(recordings: dict[str, Any], stack: str) -> None:
    claim = one(
        recordings[stack], "kubernetes:core/v1:PersistentVolumeClaim", "inference-model-cache"
    )
    assert claim["inputs"]["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = _rollout(recordings[stack])["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    mount = pod["containers"][0]["volumeMounts"][0]
    assert env["HF_HOME"] == mount["mountPath"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "model-cache"


@pytest.mark.parametrize("stack", STACKS)
def test_gpu_runners_share_a_model_cache(recordings: dict[str, Any], stack: str) -> None:
    recording = recordings[stack]
    claim = one(recording, "kubernetes:core/v1:PersistentVolumeClaim", "runners-model-cache")
    assert claim["inputs"]["spec"]["accessModes"] == ["ReadWriteMany"]
    gpu = one(recording, "kubernetes:helm.sh/v3:Release", f"mlcicd-{stack}-gpu")
    spec = gpu["inputs"]["values"]["template"]["spec"]
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "runner-model-cache"
    assert spec["containers"][0]["volumeMounts"][0]["mountPath"].endswith(".cache/huggingface")


def test_undoing_a_failed_rollout_leaves_the_registry_champion_alone(
    recordings: dict[str, Any],
) -> None:
    """The promote runs after the wait, so a failed rollout never reached the registry."""
    steps = _workflow(recordings)["deploy-production"]["steps"]
    ids = [s.get("id") for s in steps]
    assert ids.index("rollout") < ids.index("promote")
    undo = next(s for s in steps if s["name"] == "Roll back a failed rollout")
    assert "--registry no" in undo["run"]
