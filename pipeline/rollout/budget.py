"""How long a release may take in one environment, derived from the definition.

Why derived: a canary's duration is its pauses plus its analyses, and both live in
``pipeline.toml``. A ``deploy wait`` that gives up at a number written elsewhere
(it used to be 900 s against a ~35 min canary) fails healthy releases; a job timeout
shorter than the wait kills the job while Argo keeps going. So ``deploy wait
--timeout``, the deploy job's ``timeout-minutes`` (infra/workflow.py) and the local
runner's printed budget all come from :func:`release_budget`.

The arithmetic follows Argo Rollouts (docs/features/canary.md, analysis.md): steps run
in order; an inline ``analysis`` step blocks until its AnalysisRun ends, and an
AnalysisRun ends when its longest metric has taken ``count`` measurements, one per
``interval``. All our metrics share the gate's interval and count (infra/analysis.py),
so one analysis takes ``count x interval`` at most. The final 100% step has no
analysis (infra/analysis.py ``rollout_steps``).

Left out: time the controller spends scaling between steps (covered by the margin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.definition import PipelineDefinition, duration_seconds


@dataclass(frozen=True)
class ReleaseBudget:
    """Seconds a release may take in one environment, and the job limit that covers it."""

    environment: str | None
    pauses_s: int
    analyses: int
    analysis_s: int
    startup_margin_s: int
    job_overhead_s: int

    @property
    def canary_s(self) -> int:
        """Pauses plus analyses: the time the steps themselves take."""
        return self.pauses_s + self.analyses * self.analysis_s

    @property
    def wait_timeout_s(self) -> int:
        """``mlcicd deploy wait --timeout``: the steps plus pulling and loading."""
        return self.canary_s + self.startup_margin_s

    @property
    def job_timeout_minutes(self) -> int:
        """A deploy job's ``timeout-minutes``: the wait plus the job's own work."""
        return math.ceil((self.wait_timeout_s + self.job_overhead_s) / 60)

    def describe(self) -> str:
        return (
            f"pauses {self.pauses_s} s + {self.analyses} analyses x {self.analysis_s} s "
            f"+ startup margin {self.startup_margin_s} s = wait {self.wait_timeout_s} s; "
            f"job {self.job_timeout_minutes} min"
        )


def analysis_seconds(definition: PipelineDefinition) -> int:
    """One AnalysisRun: ``count`` measurements, one per ``interval``."""
    gate = definition.canary
    return gate.count * duration_seconds(gate.interval)


def release_budget(definition: PipelineDefinition) -> ReleaseBudget:
    steps = definition.canary.steps
    return ReleaseBudget(
        environment=definition.environment,
        pauses_s=sum(duration_seconds(s.pause) for s in steps if s.pause),
        analyses=sum(1 for s in steps if s.set_weight < 100),
        analysis_s=analysis_seconds(definition),
        startup_margin_s=duration_seconds(definition.deploy.startup_margin),
        job_overhead_s=duration_seconds(definition.deploy.job_overhead),
    )
