"""Argo Rollouts measurement semantics, driven by fake measurement sequences (pure logic)."""

from __future__ import annotations

import json
import math
from typing import ClassVar

import pytest

from mlcicd.cli import main
from pipeline.canary.analysis import (
    VERDICTS,
    AnalysisRun,
    Check,
    Limits,
    Measurement,
    MetricResult,
    Phase,
    checks_from_gate,
    judge,
    max_ticks,
    run_analysis,
)
from pipeline.canary.measure import SelectorError, TickValues, judge_tick, selector, traffic_note
from pipeline.definition import load_definition

S, F, INC, E = Phase.SUCCESSFUL, Phase.FAILED, Phase.INCONCLUSIVE, Phase.ERROR


def play(sequence: str, limits: Limits) -> tuple[Phase, MetricResult, list[float]]:
    """Feed one metric a sequence like "SSE" and return its final phase and the sleeps."""
    phases = {"S": S, "F": F, "I": INC, "E": E}
    run = AnalysisRun(("m",), limits)
    sleeps: list[float] = []
    feed = iter(sequence)

    def measure(_tick: int) -> dict[str, Measurement]:
        return {"m": Measurement(phases[next(feed)])}

    phase = run_analysis(run, measure, 2.5, sleep=sleeps.append)
    return phase, run.results["m"], sleeps


LIMITS = Limits(count=3, failure_limit=0, inconclusive_limit=1, consecutive_error_limit=4)


def test_all_successful_takes_count_measurements_with_interval_between() -> None:
    phase, result, sleeps = play("SSS", LIMITS)
    assert phase is S and result.count == 3
    assert sleeps == [2.5, 2.5]  # the first measurement is taken at once


def test_a_failure_beyond_the_limit_fails_at_once() -> None:
    phase, result, _ = play("SF", LIMITS)  # stops after the failure; no third measurement
    assert phase is F and len(result.measurements) == 2
    tolerant = Limits(3, failure_limit=1, inconclusive_limit=1, consecutive_error_limit=4)
    assert play("FSS", tolerant)[0] is S
    assert play("FSF", tolerant)[0] is F


def test_inconclusive_only_beyond_its_limit() -> None:
    assert play("ISS", LIMITS)[0] is S
    phase, result, _ = play("II", LIMITS)
    assert phase is INC and result.inconclusive == 2


def test_errors_do_not_count_and_fail_only_when_consecutive_beyond_limit() -> None:
    phase, result, _ = play("EEEESSS", LIMITS)
    assert phase is S and result.count == 3 and result.error == 4
    phase, result, _ = play("EEEESEEEESEEEES", LIMITS)  # every success resets the streak
    assert phase is S and result.error == 12
    phase, result, _ = play("SEEEEE", LIMITS)
    assert phase is E and result.consecutive_error == 5
    assert VERDICTS[phase] == "failed"


def test_inconclusive_resets_consecutive_errors_like_argo() -> None:
    phase, result, _ = play("EEEEIEEEESS", LIMITS)
    assert phase is S and result.inconclusive == 1 and result.consecutive_error == 0


def test_failed_outranks_error_and_inconclusive_and_terminates_the_rest() -> None:
    run = AnalysisRun(("a", "b", "c"), LIMITS)
    run.record({"a": Measurement(INC), "b": Measurement(S), "c": Measurement(E)})
    assert run.phase is Phase.RUNNING
    phase = run.record({"a": Measurement(INC), "b": Measurement(F), "c": Measurement(S)})
    assert phase is F
    assert run.results["a"].phase is INC and run.results["c"].phase is S  # terminated


def test_an_inconclusive_metric_ends_the_run_inconclusive() -> None:
    run = AnalysisRun(("a", "b"), LIMITS)
    run.record({"a": Measurement(INC), "b": Measurement(S)})
    assert run.record({"a": Measurement(INC), "b": Measurement(S)}) is INC
    assert VERDICTS[INC] == "inconclusive"


def test_the_loop_is_bounded() -> None:
    limits = Limits(2, 0, 0, 1)
    assert max_ticks(limits) == 6
    phase, result, _ = play("ESESES", limits)
    assert phase is S and len(result.measurements) == 4


def test_empty_nan_and_too_few_requests_are_never_success() -> None:
    check = Check("success-rate", ">=", 0.9)
    assert judge(check, None, 100, 20).phase is INC
    assert judge(check, math.nan, 100, 20).phase is INC
    assert judge(check, 1.0, 19, 20).phase is INC
    assert judge(check, 1.0, None, 20).phase is INC
    assert judge(check, 1.0, math.nan, 20).phase is INC
    assert judge(check, 1.0, 20, 20).phase is S
    assert judge(check, 0.5, 20, 20).phase is F


def test_boundaries_follow_the_operator() -> None:
    assert judge(Check("success-rate", ">=", 0.9), 0.9, 50, 1).phase is S
    assert judge(Check("error-rate", "<", 0.01), 0.01, 50, 1).phase is F


def test_checks_come_from_the_definition() -> None:
    gate = load_definition("builtin", "prod").canary
    checks = {c.name: c for c in checks_from_gate(gate)}
    assert checks["success-rate"].threshold == gate.min_success_rate
    assert checks["error-rate"].threshold == gate.max_error_rate
    assert checks["p99-latency"].threshold == gate.max_p99_latency_s
    assert checks["ttft-p99"].threshold == gate.max_ttft_p99_s
    staging = Limits.from_gate(load_definition("builtin", "staging").canary, count=2)
    assert staging.count == 2
    assert staging.failure_limit == load_definition("builtin", "staging").canary.failure_limit


def test_a_failed_request_count_query_makes_every_metric_an_error() -> None:
    checks = checks_from_gate(load_definition("builtin").canary)
    seen = TickValues({c.name: 1.0 for c in checks} | {"requests": None}, {"requests": "down"})
    assert {m.phase for m in judge_tick(seen, checks, 1, 0.0).values()} == {E}


def test_selector_refuses_values_that_would_break_promql() -> None:
    assert selector({"job": "inference", "version": "canary"}) == (
        'job="inference", version="canary"'
    )
    with pytest.raises(SelectorError, match="version"):
        selector({"version": 'x"} or vector(1)'})
    with pytest.raises(SelectorError, match="label name"):
        selector({"bad-name": "x"})


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["canary", "analyze", "--prometheus-url", "http://127.0.0.1:1"]
    assert main([*base, "--stable", "v-healthy"]) == 2
    assert main([*base, "--version", 'x"}']) == 2
    assert main([*base, "--version", "v", "--canary", "c"]) == 2
    assert main([*base, "--version", "v", "--profile", "nope"]) == 2
    assert "profiles.nope" in capsys.readouterr().err


def test_a_p99_beyond_the_last_bucket_fails_and_still_serialises() -> None:
    measurement = judge(Check("p99-latency", "<", 1.0), math.inf, 100, 1)
    assert measurement.phase is F
    as_json = measurement.to_json()
    assert as_json["value"] is None and as_json["raw"] == "inf"
    json.dumps(as_json, allow_nan=False)


def test_without_a_stable_only_the_ceilings_judge() -> None:
    gate = load_definition("builtin", "prod").canary
    plain = {c.name for c in checks_from_gate(gate, relative=False)}
    relative = {c.name for c in checks_from_gate(gate)}
    assert plain == {"success-rate", "error-rate", "p99-latency", "ttft-p99"}
    assert relative - plain == {
        "error-rate-vs-stable",
        "latency-vs-stable",
        "ttft-vs-stable",
    }
    increase = next(c for c in checks_from_gate(gate) if c.name == "error-rate-vs-stable")
    assert increase.threshold == gate.max_error_rate_increase and increase.op == "<="


def test_too_few_requests_says_what_traffic_the_window_saw_and_needs() -> None:
    note = traffic_note(5.4, 48.6, 30.0, 10)
    assert note == (
        "in 30s; traffic 1.8 req/s x 10% = 0.18 req/s to the canary, need 0.33 req/s "
        "to the canary: raise the traffic or lengthen the window"
    )
    m = judge(Check("error-rate", "<", 0.01), 0.0, 5.4, 10, traffic=note)
    assert m.phase is INC and m.message.startswith("too few requests: 5.4 < 10 in 30s;")
    assert "no traffic at all" in traffic_note(0, 0, 30.0, 10)
    assert "no canary traffic" in traffic_note(None, None, 30.0, 10)


class FakePrometheus:
    """Answers each PromQL of a plan with a fixed value per metric name and side."""

    values: ClassVar[dict[str, float | None]] = {}

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, promql: str) -> float | None:
        return self.values[promql]


def _analyze(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    canary: dict[str, float | None],
    stable: dict[str, float | None],
) -> tuple[int, dict[str, object], str]:
    from argparse import Namespace

    from pipeline.canary import cli

    argv = ["canary", "analyze", "--prometheus-url", "http://fake", "--canary", "canary",
            "--stable", "stable", "--profile", "builtin", "--environment", "prod",
            "--interval", "0s", "--count", "2"]  # fmt: skip
    plan = cli.plan(
        Namespace(profile="builtin", environment="prod", definition=None, count=2,
                  interval="0s", job="inference", version=None, canary="canary",
                  stable="stable", version_label="version")
    )  # fmt: skip
    assert plan.stable_q is not None
    values = {plan.canary_q[k]: v for k, v in canary.items()}
    values |= {plan.stable_q[k]: v for k, v in stable.items()}
    monkeypatch.setattr(FakePrometheus, "values", values)
    monkeypatch.setattr(cli, "PrometheusQuerier", FakePrometheus)
    code = main(argv)
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


HEALTHY = {"success-rate": 1.0, "error-rate": 0.0, "p99-latency": 0.8, "ttft-p99": 0.2}


def test_analyze_rejects_an_error_fault_against_the_stable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    canary = {"requests": 80.0, "success-rate": 0.96, "error-rate": 0.04, "p99-latency": 0.8,
              "ttft-p99": 0.2, "error-rate-vs-stable": 0.012, "latency-vs-stable": 1.0,
              "ttft-vs-stable": 1.0}  # fmt: skip
    code, report, err = _analyze(monkeypatch, capsys, canary, {"requests": 700.0, **HEALTHY})
    assert code == 1 and report["verdict"] == "failed"
    assert report["stable_selector"] == 'job="inference", version="stable"'
    failing = {r.split()[0] for r in report["reasons"] if "Failed" in r}  # type: ignore[union-attr]
    # Rejected for errors (against the stable, and by the ceilings), never for latency.
    assert "error-rate-vs-stable" in failing
    assert failing <= {"error-rate-vs-stable", "error-rate", "success-rate"}
    # The stable's value and the delta stand beside the canary's.
    assert "error-rate: canary=0.04 stable=0 delta=+0.04" in err
    assert "error-rate-vs-stable: canary=0.012 -> Failed (not result <= 0.0)" in err


def test_analyze_inconclusive_on_thin_traffic_says_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    canary = {"requests": 5.4, **HEALTHY, "error-rate-vs-stable": -0.1,
              "latency-vs-stable": 1.0, "ttft-vs-stable": 1.0}  # fmt: skip
    code, report, err = _analyze(monkeypatch, capsys, canary, {"requests": 48.6, **HEALTHY})
    assert code == 3 and report["verdict"] == "inconclusive"
    reasons = " ".join(report["reasons"])  # type: ignore[arg-type]
    assert "too few requests: 5.4 < 50 in 60s; traffic 0.9 req/s x 10% = 0.09 req/s" in reasons
    assert "raise the traffic or lengthen the window" in err
