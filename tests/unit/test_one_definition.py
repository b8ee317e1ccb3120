"""No threshold is written twice: change one number in pipeline.toml and every rendering
that judges by it changes with it.

Each test edits one line of a copy of the real pipeline.toml and compares what the
consumers produce from the original and from the copy: the GitHub workflow, the Argo
Rollouts AnalysisTemplate and canary steps, the Prometheus alert rules, the canary
analysis checks, the local runner's step titles and the benchmark's targets. A consumer
that kept its own copy of a number would render the same output twice and fail here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra.analysis import analysis_template, rollout_steps
from infra.monitoring import PROMETHEUS_URL, recording_and_alert_rules
from infra.workflow import RunnerSpec, render_workflow
from pipeline.canary.analysis import checks_from_gate
from pipeline.definition import DEFAULT_DEFINITION, PipelineDefinition, load_definition

RUNNERS = {"gpu": RunnerSpec("gpu", 60), "cpu": RunnerSpec("cpu", 30)}


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_DEFINITION.read_text()
    assert text.count(old) == 1, f"{old!r} must appear exactly once in pipeline.toml"
    path = tmp_path / "pipeline.toml"
    path.write_text(text.replace(old, new))
    return path


def _renderings(definition: PipelineDefinition) -> dict[str, str]:
    def dump(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    return {
        "workflow": render_workflow(definition, RUNNERS),
        "analysis-template": dump(analysis_template(definition, PROMETHEUS_URL, "mlcicd")),
        "rollout-steps": dump(rollout_steps(definition, "inference-server", "mlcicd")),
        "alert-rules": dump(recording_and_alert_rules(definition, "inference-server")),
        "canary-checks": dump([c.__dict__ for c in checks_from_gate(definition.canary)]),
        "runner-titles": " | ".join(
            definition.gate_title(gate) for gate in ("quality", "latency", "canary")
        ),
        "local-canary-steps": dump([s.model_dump() for s in definition.canary.steps]),
    }


def _changed(base: PipelineDefinition, edited: PipelineDefinition) -> set[str]:
    before, after = _renderings(base), _renderings(edited)
    return {name for name in before if before[name] != after[name]}


@pytest.mark.parametrize(
    ("old", "new", "expected", "marker"),
    [
        (
            "min_pass_rate = 0.95\n",
            "min_pass_rate = 0.9375\n",
            {"workflow", "runner-titles"},
            "0.9375",
        ),
        (
            "max_error_rate = 0.01\n",
            "max_error_rate = 0.0125\n",
            {"workflow", "analysis-template", "alert-rules", "canary-checks", "runner-titles"},
            "0.0125",
        ),
        (
            "max_p99_latency_s = 2.0\n",
            "max_p99_latency_s = 2.25\n",
            {"workflow", "analysis-template", "alert-rules", "canary-checks", "runner-titles"},
            "2.25",
        ),
        (
            "max_ttft_p99_ms = 200.0\n",
            "max_ttft_p99_ms = 175.0\n",
            {"workflow", "runner-titles"},
            "175.0",
        ),
        (
            'set_weight = 30\npause = "5m"\n',
            'set_weight = 35\npause = "5m"\n',
            {"workflow", "rollout-steps", "local-canary-steps"},
            "35",
        ),
    ],
)
def test_one_change_reaches_every_rendering(
    tmp_path: Path, old: str, new: str, expected: set[str], marker: str
) -> None:
    path = _variant(tmp_path, old, new)
    for environment in ("staging", "prod"):
        base = load_definition("gpu", environment)
        edited = load_definition("gpu", environment, path=path)
        changed = _changed(base, edited)
        assert expected <= changed, f"{environment}: unchanged renderings {expected - changed}"
        for name in expected & {"workflow", "runner-titles", "analysis-template"}:
            assert marker in _renderings(edited)[name]


def test_bench_targets_come_from_the_definition(tmp_path: Path) -> None:
    base = load_definition("cpu")
    target = base.bench.targets[0] if base.bench and base.bench.targets else None
    assert target is not None, "the cpu profile's benchmark has targets"
    bound = "min" if target.min is not None else "max"
    value = target.min if target.min is not None else target.max
    old = f"{bound} = {value}\n"
    text = DEFAULT_DEFINITION.read_text()
    if text.count(old) != 1:
        pytest.skip(f"{old!r} is not unique in pipeline.toml; covered by the other cases")
    edited = load_definition("cpu", path=_variant(tmp_path, old, f"{bound} = {value * 1.5}\n"))
    assert edited.bench is not None
    assert edited.bench.targets[0].model_dump() != target.model_dump()
