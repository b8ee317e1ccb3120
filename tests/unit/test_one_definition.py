"""No threshold is written twice: change one number in pipeline.toml and every rendering
that judges by it changes with it.

Each test edits one line of a copy of the real pipeline.toml and compares what the
consumers produce from the original and from the copy: the GitHub workflow, the Argo
Rollouts AnalysisTemplate and canary steps, the Prometheus alert rules, the canary
analysis checks, the gates' verdicts on fixed measurements, and the benchmark's target
outcomes. A consumer that kept its own copy of a number would produce the same output
twice and fail here.
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
from pipeline.gates.cli import latency_verdict, quality_verdict
from pipeline.gates.quality import CaseResult
from pipeline.load.generator import LoadResult, RequestRecord

RUNNERS = {"gpu": RunnerSpec("gpu", 60), "cpu": RunnerSpec("cpu", 30)}

# Fixed measurements for the gates to judge: 15 of 16 cases pass (0.9375), and a
# load run whose p99 TTFT is 180 ms with one error in 90 requests.
QUALITY_RESULTS = [
    CaseResult(f"case-{i}", ("qa",), "fail" if i == 0 else "pass", "") for i in range(16)
]
LATENCY_RESULT = LoadResult(
    url="http://127.0.0.1:1",
    mode="concurrency",
    concurrency=1,
    rate=None,
    warmup=0,
    max_new_tokens=8,
    duration_s=9.0,
    records=tuple(
        RequestRecord(i, i != 0, i * 0.1, 0.3, 0.18, (0.01,), 8, 200 if i else 500)
        for i in range(90)
    ),
)
# The champion of the paired comparison: the same load, 8 % faster.
CHAMPION_RESULT = LoadResult(
    url="http://127.0.0.1:2",
    mode="concurrency",
    concurrency=1,
    rate=None,
    warmup=0,
    max_new_tokens=8,
    duration_s=9.0,
    records=tuple(
        RequestRecord(i, True, i * 0.1, 0.3 / 1.08 + i * 1e-4, 0.18 / 1.08 + i * 1e-4,
                      (0.01,), 8, 200)
        for i in range(90)
    ),
)  # fmt: skip


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
        "gate-verdicts": dump(
            [
                quality_verdict(definition, QUALITY_RESULTS).reasons,
                latency_verdict(definition, LATENCY_RESULT).rows,
                latency_verdict(definition, LATENCY_RESULT, CHAMPION_RESULT).relative,
            ]
        ),
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
            {"workflow", "gate-verdicts"},
            "0.9375",
        ),
        (
            "max_error_rate = 0.01\n",
            "max_error_rate = 0.0125\n",
            {"workflow", "analysis-template", "alert-rules", "canary-checks"},
            "0.0125",
        ),
        (
            "max_p99_latency_s = 2.0\n",
            "max_p99_latency_s = 2.25\n",
            {"workflow", "analysis-template", "alert-rules", "canary-checks"},
            "2.25",
        ),
        (
            "max_ttft_p99_ms = 200.0\n",
            "max_ttft_p99_ms = 175.0\n",
            {"workflow", "gate-verdicts"},
            "175.0",
        ),
        (
            "max_slowdown_vs_champion = 0.10\n",
            "max_slowdown_vs_champion = 0.05\n",
            {"workflow", "gate-verdicts"},
            "5%",
        ),
        (
            "itl = 5.0\n",
            "itl = 4.5\n",
            {"workflow", "gate-verdicts"},
            "ITL 4.5",
        ),
        (
            "ceiling_headroom_vs_champion = 4.0\n",
            "ceiling_headroom_vs_champion = 3.5\n",
            {"workflow"},
            "x3.5 when paired",
        ),
        (
            "max_error_rate_increase = 0.0\n",
            "max_error_rate_increase = 0.005\n",
            {"workflow", "analysis-template", "canary-checks"},
            "0.005",
        ),
        (
            "max_latency_ratio = 1.5\n",
            "max_latency_ratio = 1.75\n",
            {"workflow", "analysis-template", "canary-checks"},
            "1.75",
        ),
        (
            "relative_quantile = 0.9\n",
            "relative_quantile = 0.85\n",
            {"analysis-template"},  # the workflow's step title changes too ("p85")
            "histogram_quantile(0.85",
        ),
        (
            "relative_floor_s = 0.05\n",
            "relative_floor_s = 0.07\n",
            {"analysis-template"},
            "+ 0.07)",
        ),
        (
            "confidence = 0.95\n",
            "confidence = 0.9\n",
            {"analysis-template"},  # the workflow's step title changes too ("at 90%")
            "1.2815515",
        ),
        (
            'set_weight = 30\npause = "5m"\n',
            'set_weight = 35\npause = "5m"\n',
            {"workflow", "rollout-steps"},
            "35",
        ),
        (
            # The deploy budget (pipeline/rollout/budget.py): wait 2700 s -> 2760 s in prod.
            'startup_margin = "10m"\n',
            'startup_margin = "11m"\n',
            {"workflow"},
            "2760",
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
        if environment == "staging" and "set_weight" in old:
            # Staging overrides canary.steps with one 100% step (a rolling update).
            expected = expected - {"rollout-steps"}
        assert expected <= changed, f"{environment}: unchanged renderings {expected - changed}"
        for name in expected & {"workflow", "analysis-template"}:
            assert marker in _renderings(edited)[name]


def test_quality_and_latency_verdicts_flip_with_their_thresholds(tmp_path: Path) -> None:
    """The gates judge by the definition: 15/16 passes fails at 0.95 and passes at 0.9375;
    a 180 ms p99 TTFT passes at 200 ms and fails at 175 ms."""
    base = load_definition("gpu")
    assert not quality_verdict(base, QUALITY_RESULTS).passed
    looser = _variant(tmp_path, "min_pass_rate = 0.95\n", "min_pass_rate = 0.9375\n")
    assert quality_verdict(load_definition("gpu", path=looser), QUALITY_RESULTS).passed
    ttft = next(r for r in latency_verdict(base, LATENCY_RESULT).rows if r.name == "ttft_p99_ms")
    assert ttft.passed
    tighter = _variant(tmp_path, "max_ttft_p99_ms = 200.0\n", "max_ttft_p99_ms = 175.0\n")
    rows = latency_verdict(load_definition("gpu", path=tighter), LATENCY_RESULT).rows
    assert not next(r for r in rows if r.name == "ttft_p99_ms").passed
