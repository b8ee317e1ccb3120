"""The deploy jobs' steps: set image and model, follow the Rollout, promote, undo what failed.

Why its own module: this is the release flow (README "One release through staging and
production"), and it is where the workflow meets Argo and the registry. The Rollout's
own analysis decides; these steps set image and model together, follow the Rollout
for a budget derived from the environment's definition (:mod:`pipeline.rollout.budget`),
check that the pods serve the model that was tested, and promote in the one registry.
Only a failed rollout or analysis is undone: a registry promote that fails after a
healthy rollout is retried and reported, never answered by undoing healthy pods.
"""

from __future__ import annotations

from typing import Any

from infra.analysis import ANALYSIS_TEMPLATE_NAME, ROLLOUT_NAME
from infra.workflow_steps import step
from pipeline.definition import PipelineDefinition, Stage, load_definition
from pipeline.rollout.budget import ReleaseBudget, release_budget

# What the build job hands the deploy jobs: the image and the model, released together.
BUILD_OUTPUTS = ("image", "digest", "version", "model_ref", "model_revision")


def runner_environment(stage: Stage) -> str:
    """Whose runners run a stage: CI stages run in staging, a deploy in its target."""
    return stage.environment or "staging"


def deploy_definition(definition: PipelineDefinition, stage: Stage) -> PipelineDefinition:
    """The definition a deploy stage runs by: its environment's overrides applied."""
    return load_definition(definition.profile, stage.environment, definition.source)


def stage_budget(definition: PipelineDefinition, stage: Stage) -> ReleaseBudget:
    return release_budget(deploy_definition(definition, stage))


def deploy_steps(definition: PipelineDefinition, stage: Stage) -> list[dict[str, Any]]:
    """Through ``mlcicd deploy`` (in-cluster service account, no kubeconfig);
    ``MLCICD_NAMESPACE`` and ``MLCICD_CANARY_ENDPOINT`` come from the runner pod."""
    environment = runner_environment(stage)
    budget = stage_budget(definition, stage)
    env = {key.upper(): f"${{{{ needs.build.outputs.{key} }}}}" for key in BUILD_OUTPUTS}
    set_image = (
        'mlcicd deploy set-image --namespace "$MLCICD_NAMESPACE" --rollout '
        f'{ROLLOUT_NAME} --image "$IMAGE@$DIGEST" '
        '--model "$MODEL_REF" --model-revision "$MODEL_REVISION"\n'
    )
    wait = (
        f'mlcicd deploy wait --namespace "$MLCICD_NAMESPACE" --rollout {ROLLOUT_NAME} '
        f"--timeout {budget.wait_timeout_s}s "
        '--expect-model-revision "$MODEL_REVISION" --model-url "$MLCICD_CANARY_ENDPOINT"\n'
    )
    target = deploy_definition(definition, stage)
    steps = [
        step(f"Set image and model ({environment})", set_image, id="set-image", env=env),
        step(
            f"Follow the rollout ({_steps_title(target)}; budget {budget.wait_timeout_s} s)",
            wait,
            id="rollout",
            env=env,
        ),
    ]
    if _has_canary(target):
        # The thresholds, shown where the job runs; Argo's AnalysisTemplate applies them.
        steps.insert(
            1,
            step(
                target.gate_title("canary"),
                f'echo "Judged by the Rollout\'s analysis: {ANALYSIS_TEMPLATE_NAME}"\n',
            ),
        )
    if stage.action != "canary-rollout":
        return steps
    attempts = definition.deploy.promote_attempts
    return [
        *steps,
        step(
            "Promote in the registry",
            'mlcicd registry promote --version "$VERSION" '
            f"--attempts {attempts} "
            '--reason "canary passed in run $GITHUB_RUN_ID"\n',
            id="promote",
            env=env,
        ),
        step(
            "Roll back a failed rollout",
            # --registry no: the promote never ran, so the champion is still the last
            # good release; moving it "back" would demote that one.
            f'mlcicd rollback --rollout {ROLLOUT_NAME} --namespace "$MLCICD_NAMESPACE" '
            '--registry no --reason "rollout or analysis failed in run $GITHUB_RUN_ID"\n',
            **{"if": "failure() && steps.rollout.outcome == 'failure'"},
        ),
        step(
            "Report a release that is live but not promoted",
            'echo "::error::version $VERSION is healthy on every pod but was not promoted '
            'in the registry; rerun: mlcicd registry promote --version $VERSION"\n'
            'echo "Release v$VERSION: live, NOT promoted (registry)" >> "$GITHUB_STEP_SUMMARY"\n',
            env=env,
            **{"if": "failure() && steps.promote.outcome == 'failure'"},
        ),
    ]


def _has_canary(definition: PipelineDefinition) -> bool:
    return len(definition.canary.steps) > 1


def _steps_title(definition: PipelineDefinition) -> str:
    weights = [f"{s.set_weight}%" for s in definition.canary.steps]
    return "canary " + ", ".join(weights) if _has_canary(definition) else "rolling update"
