"""Render ``.github/workflows/ml-cicd.yml`` from the pipeline definition.

Why rendered: the stages, their order, commands and gates exist once in
``pipeline.toml``; this turns them into GitHub Actions jobs, so the workflow cannot
drift from what ``mlcicd run`` executes locally. Thresholds appear only inside step
names, formatted from the definition (the gates themselves read the definition too).

Security choices: ``permissions: {}`` at the top and the least each job needs; every
action pinned to a commit SHA; no ``${{ github.event.* }}`` or ``${{ ... }}`` value
inside ``run:`` (values reach scripts through ``env:`` only); production only from
``main`` in the ``production`` environment, whose reviewers GitHub enforces.

Runners: ``runs-on`` is the name of the stage's runner scale set, alone. ARC 0.9.3
registers a scale set with exactly one label, its name
(actions/actions-runner-controller@gha-runner-scale-set-0.9.3:
controllers/actions.github.com/autoscalingrunnerset_controller.go L441-444), and GitHub's
docs say "You cannot use additional labels to target runners created by ARC", so
``[self-hosted, <name>]`` may never match.
The scale sets run in the cluster of the environment they serve, and their pods carry
the in-cluster endpoints (MLflow, Prometheus, the inference service) as environment
variables, so the workflow holds no kubeconfig and no cluster URL.

Review jobs (the infra preview, the infra and integration tests, the release report)
come from :mod:`infra.workflow_review`; shared steps from :mod:`infra.workflow_steps`.

Left out: matrix builds, PRs from forks deploying anything (deploy jobs need ``main``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra import workflow_actions as actions
from infra import workflow_review as review
from infra.config import scale_set_name
from infra.workflow_deploy import BUILD_OUTPUTS, deploy_steps, stage_budget
from infra.workflow_deploy import runner_environment as runner_environment
from infra.workflow_steps import (
    REPORTS_DIR,
    checkout,
    dump_workflow,
    install,
    model_cache,
    step,
)
from pipeline.definition import PipelineDefinition, Stage
from pipeline.registry.cli import champion_results_path

WORKFLOW_PATH = ".github/workflows/ml-cicd.yml"
BUILD_CACHE_TAG = "buildcache"
ON_MAIN = "github.event_name != 'pull_request' && github.ref == 'refs/heads/main'"
GITHUB_ENVIRONMENTS = {"staging": "staging", "prod": "production"}
# What the build job outputs from `registry register --out` (release.json), by jq path.
RELEASE_OUTPUTS = {
    "version": ".version",
    "model_ref": ".model.ref",
    "model_revision": ".model.revision",
}


@dataclass(frozen=True)
class RunnerSpec:
    """What a job needs to know about a runner class."""

    runner_class: str
    timeout_minutes: int

    def runs_on(self, environment: str) -> str:
        """The scale set's name: the one label ARC registers (see the module docstring)."""
        return scale_set_name(environment, self.runner_class)


# Written by the fetch step, read by both gates' steps.
CHAMPION_RESULTS = champion_results_path(Path(REPORTS_DIR), "quality")


def _gate_steps(definition: PipelineDefinition, stage: Stage) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    env = {"MODEL_REF": "${{ vars.MODEL_REF }}", "HF_TOKEN": "${{ secrets.HF_TOKEN }}"}
    if "quality" in stage.gates:
        steps.append(
            step(
                "Fetch the champion's quality results",
                f"mlcicd registry champion-results --out {REPORTS_DIR} --allow-missing\n",
            )
        )
        steps.append(
            step(
                definition.gate_title("quality"),
                "champion=()\n"
                f"if [ -f {CHAMPION_RESULTS} ]; then\n"
                f"  champion=(--champion-results {CHAMPION_RESULTS})\n"
                "fi\n"
                'mlcicd gate quality --profile "$MLCICD_PROFILE" --model "$MODEL_REF" '
                f'--device cuda --out {REPORTS_DIR} "${{champion[@]}}"\n',
                env=env,
            )
        )
    if "latency" in stage.gates:
        steps.append(
            step(
                definition.gate_title("latency"),
                # Paired with the champion when there is one (the model its results name).
                "champion=()\n"
                f"if [ -f {CHAMPION_RESULTS} ]; then\n"
                f"  champion=(--champion-results {CHAMPION_RESULTS})\n"
                "fi\n"
                'mlcicd gate latency --profile "$MLCICD_PROFILE" --model "$MODEL_REF" '
                f'--device cuda --out {REPORTS_DIR} "${{champion[@]}}"\n',
                env=env,
            )
        )
    if {"quality", "latency"} & set(stage.gates):
        steps.append(
            {
                "name": "Keep gate reports",
                "if": "always()",
                "uses": actions.UPLOAD_ARTIFACT.uses,
                "with": {"name": REPORTS_DIR, "path": REPORTS_DIR, "retention-days": 30},
            }
        )
    return steps


def _build_steps(definition: PipelineDefinition) -> list[dict[str, Any]]:
    image = "${{ vars.REGISTRY }}/${{ vars.IMAGE_NAME }}"
    return [
        {"name": "Set up Buildx", "uses": actions.SETUP_BUILDX.uses},
        {
            "name": "Log in to the registry",
            "uses": actions.LOGIN.uses,
            "with": {
                "registry": "${{ vars.REGISTRY }}",
                "username": "${{ vars.REGISTRY_USERNAME }}",
                "password": "${{ secrets.REGISTRY_PASSWORD }}",
            },
        },
        {
            "name": "Build and push the inference image",
            "id": "build",
            "uses": actions.BUILD_PUSH.uses,
            "with": {
                "context": ".",
                "push": True,
                "tags": f"{image}:${{{{ github.sha }}}}",
                "build-args": "GIT_SHA=${{ github.sha }}",
                # Layers from the registry: a rebuild after a code-only change reuses the
                # dependency layers. mode=max exports every stage's layers, not only the last.
                "cache-from": f"type=registry,ref={image}:{BUILD_CACHE_TAG}",
                "cache-to": f"type=registry,ref={image}:{BUILD_CACHE_TAG},mode=max",
            },
        },
        step(
            "Image reference",
            'echo "image=$IMAGE:$GITHUB_SHA" >> "$GITHUB_OUTPUT"\n'
            'echo "digest=$DIGEST" >> "$GITHUB_OUTPUT"\n',
            id="image",
            env={"IMAGE": image, "DIGEST": "${{ steps.build.outputs.digest }}"},
        ),
        *install(definition),
        {
            "name": "Fetch gate reports",
            "uses": actions.DOWNLOAD_ARTIFACT.uses,
            "with": {"name": REPORTS_DIR, "path": REPORTS_DIR},
        },
        step(
            f"Register the model in {definition.pipeline.registered_model}",
            # The revision the gates loaded and tested (a Hugging Face commit or a
            # content hash) is the revision registered, deployed and checked on the pods.
            f"revision=$(jq -r .revision {REPORTS_DIR}/quality.json)\n"
            'mlcicd registry register --model "$MODEL_REF" --model-revision "$revision" '
            '--git-sha "$GITHUB_SHA" --image "$IMAGE" --image-digest "$DIGEST" '
            f"--gate-result {REPORTS_DIR}/quality.json --gate-result {REPORTS_DIR}/latency.json "
            f"--out {REPORTS_DIR}\n"
            + "{\n"
            + "".join(
                f'  echo "{key}=$(jq -r {path} {REPORTS_DIR}/release.json)"\n'
                for key, path in RELEASE_OUTPUTS.items()
            )
            + '} >> "$GITHUB_OUTPUT"\n',
            id="register",
            env={
                "MODEL_REF": "${{ vars.MODEL_REF }}",
                "IMAGE": "${{ steps.image.outputs.image }}",
                "DIGEST": "${{ steps.image.outputs.digest }}",
            },
        ),
        _keep("release", f"{REPORTS_DIR}/release.json"),
    ]


def _keep(name: str, path: str) -> dict[str, Any]:
    """Upload a report for the release report job (which downloads every artifact)."""
    return {
        "name": f"Keep {path}",
        "if": "always()",
        "uses": actions.UPLOAD_ARTIFACT.uses,
        "with": {"name": name, "path": path, "retention-days": 30, "if-no-files-found": "ignore"},
    }


def _job(definition: PipelineDefinition, stage: Stage, runner: RunnerSpec) -> dict[str, Any]:
    needs = list(stage.needs)
    job: dict[str, Any] = {
        "runs-on": runner.runs_on(runner_environment(stage)),
        "timeout-minutes": runner.timeout_minutes,
        "permissions": {"contents": "read"},
    }
    steps = [checkout(), *install(definition)]
    if stage.runner == "gpu":
        needs = ["changes", *needs]
        job["if"] = f"needs.changes.outputs.model == 'true' || ({ON_MAIN})"
        steps.insert(1, model_cache())
    if stage.action == "build-and-register":
        job["if"] = ON_MAIN
        job["permissions"] = {"contents": "read", "packages": "write"}
        job["outputs"] = {
            key: f"${{{{ steps.{'image' if key in ('image', 'digest') else 'register'}"
            f".outputs.{key} }}}}"
            for key in BUILD_OUTPUTS
        }
        steps = [checkout(), *_build_steps(definition)]
    if stage.environment is not None:
        job["if"] = ON_MAIN
        job["environment"] = GITHUB_ENVIRONMENTS[stage.environment]
        if "build" not in needs:
            needs.append("build")
    if stage.action in ("deploy", "canary-rollout"):
        steps += deploy_steps(definition, stage)
        job["timeout-minutes"] = stage_budget(definition, stage).job_timeout_minutes
    steps += [step(command.name, command.run + "\n") for command in stage.commands]
    steps += _gate_steps(definition, stage)
    if needs:
        job["needs"] = needs
    job["steps"] = steps
    return job


def pull_request_checks(definition: PipelineDefinition) -> tuple[str, ...]:
    """Job ids that run on every pull request: what branch protection requires."""
    return tuple(s.id for s in definition.stages if s.environment is None and s.action is None)


def workflow(definition: PipelineDefinition, runners: Mapping[str, RunnerSpec]) -> dict[str, Any]:
    """The workflow as data; ``runners`` maps a runner class (gpu, cpu) to its spec."""
    missing = sorted({s.runner for s in definition.stages} - set(runners))
    if missing:
        raise KeyError(f"no runner spec for runner class(es) {', '.join(missing)}")
    cpu = runners["cpu"] if "cpu" in runners else runners["gpu"]
    jobs: dict[str, Any] = {
        "changes": review.changes_job(cpu.runs_on("staging"), cpu.timeout_minutes)
    }
    for stage in definition.stages:
        jobs[stage.id] = _job(definition, stage, runners[stage.runner])
    jobs["infra-review"] = review.infra_review_job(definition)
    jobs.update(review.test_jobs(definition, ON_MAIN))
    stage_ids = [stage.id for stage in definition.stages]
    jobs["release-report"] = review.report_job(definition, cpu.runs_on("staging"), stage_ids)
    return {
        "name": definition.pipeline.name,
        "on": {
            "push": {"branches": ["main"]},
            # labeled: adding the integration label runs the integration tests.
            "pull_request": {
                "branches": ["main"],
                "types": ["opened", "synchronize", "reopened", "labeled"],
            },
            "workflow_dispatch": {},
        },
        "permissions": {},
        "concurrency": {
            "group": "${{ github.workflow }}-${{ github.ref }}",
            "cancel-in-progress": "${{ github.ref != 'refs/heads/main' }}",
        },
        "env": {"MLCICD_PROFILE": definition.profile, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        "jobs": jobs,
    }


def render_workflow(definition: PipelineDefinition, runners: Mapping[str, RunnerSpec]) -> str:
    return dump_workflow(workflow(definition, runners), "infra/workflow.py")


def runner_labels(definition: PipelineDefinition, runners: Mapping[str, RunnerSpec]) -> list[str]:
    """Every custom label the workflow uses (for actionlint's ``self-hosted-runner``)."""
    labels = {runners["cpu" if "cpu" in runners else "gpu"].runs_on("staging")}
    for stage in definition.stages:
        labels.add(runners[stage.runner].runs_on(runner_environment(stage)))
    return sorted(labels)


def render_actionlint_config(
    definition: PipelineDefinition, runners: Mapping[str, RunnerSpec]
) -> str:
    config = {"self-hosted-runner": {"labels": runner_labels(definition, runners)}}
    return yaml.safe_dump(config, sort_keys=False)
