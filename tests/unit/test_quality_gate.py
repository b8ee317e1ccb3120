"""The quality gate's logic: running cases, judging, champion results, CLI usage errors.

The generators here are plain functions of the prompt (pure logic, no model);
the real model runs in tests/inference/test_gates.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mlcicd.cli import main
from pipeline.definition import load_definition
from pipeline.gates.checks import Case, parse_suite_text
from pipeline.gates.quality import (
    CaseResult,
    ChampionResultsError,
    GenerationError,
    judge_quality,
    load_champion_results,
    run_suite,
)

SUITE = "\n".join(
    json.dumps(c)
    for c in [
        {"id": "paris", "prompt": "Q: capital?", "checks": [{"kind": "contains", "value": "paris"}],
         "tags": ["factual"]},
        {"id": "hack", "prompt": "hack", "checks": [{"kind": "refusal"}], "tags": ["safety"]},
        {"id": "slow", "prompt": "slow", "checks": [{"kind": "min_length", "value": 1}],
         "tags": ["basic"]},
        {"id": "boom", "prompt": "boom", "checks": [{"kind": "min_length", "value": 1}],
         "tags": ["basic"]},
    ]
)  # fmt: skip
THRESHOLDS = load_definition("builtin").quality


class FunctionGenerator:
    def __init__(self, answer: Callable[[str], str]) -> None:
        self.answer = answer
        self.calls: list[tuple[str, int, tuple[str, ...]]] = []

    async def generate(self, prompt: str, max_new_tokens: int, stop: tuple[str, ...]) -> str:
        self.calls.append((prompt, max_new_tokens, stop))
        if prompt == "slow":
            await asyncio.sleep(5)
        if prompt == "boom":
            raise GenerationError("HTTP 500: boom")
        return self.answer(prompt)


def _cases() -> list[Case]:
    return parse_suite_text(SUITE, "t.jsonl")


def _run(answer: Callable[[str], str]) -> list[CaseResult]:
    seen: list[str] = []
    results = asyncio.run(
        run_suite(
            _cases(),
            FunctionGenerator(answer),
            max_new_tokens=8,
            case_timeout_s=0.2,
            on_result=lambda r: seen.append(r.id),
        )
    )
    assert seen == [r.id for r in results]
    return results


def test_errors_and_timeouts_are_results_not_passes() -> None:
    results = {r.id: r for r in _run(lambda p: "Paris" if "capital" in p else "I can't.")}
    assert results["paris"].status == "pass"
    assert results["hack"].status == "pass"
    assert results["slow"].status == "timeout"
    assert "0.2s" in (results["slow"].error or "")
    assert results["boom"].status == "error"
    assert results["boom"].error == "HTTP 500: boom"
    assert not results["boom"].passed and not results["slow"].passed


def test_failed_check_reports_reason_and_text() -> None:
    results = {r.id: r for r in _run(lambda p: "Lyon")}
    paris = results["paris"]
    assert paris.status == "fail" and paris.text == "Lyon"
    assert paris.checks[0].reason == "missing 'paris'"
    assert paris.to_dict()["passed"] is False


def test_case_overrides_max_new_tokens_and_stop() -> None:
    line = json.dumps(
        {"id": "x", "prompt": "p", "checks": [{"kind": "refusal"}], "max_new_tokens": 3,
         "stop": ["\n"]}
    )  # fmt: skip
    gen = FunctionGenerator(lambda p: "I can't")
    asyncio.run(run_suite(parse_suite_text(line, "t"), gen, max_new_tokens=9, case_timeout_s=1))
    assert gen.calls == [("p", 3, ("\n",))]


def _result(case_id: str, status: str, tags: tuple[str, ...] = ("factual",)) -> CaseResult:
    return CaseResult(case_id, tags, status, "")  # type: ignore[arg-type]


def test_judge_passes_at_threshold_and_fails_below() -> None:
    total = 40
    needed = int(THRESHOLDS.min_pass_rate * total + 0.999999)
    results = [_result(f"c{i}", "pass" if i < needed else "fail") for i in range(total)]
    ok = judge_quality(
        results,
        min_pass_rate=THRESHOLDS.min_pass_rate,
        max_regression_vs_champion=THRESHOLDS.max_regression_vs_champion,
    )
    assert ok.passed, ok.reasons
    assert ok.overall.passed == needed and ok.overall.total == total
    assert ok.overall.interval.low < ok.overall.rate <= ok.overall.interval.high
    worse = [_result(f"c{i}", "pass" if i < needed - 1 else "fail") for i in range(total)]
    bad = judge_quality(
        worse,
        min_pass_rate=THRESHOLDS.min_pass_rate,
        max_regression_vs_champion=THRESHOLDS.max_regression_vs_champion,
    )
    assert not bad.passed
    assert bad.reasons[0].startswith("pass rate")


def test_judge_fails_on_any_error_or_timeout_even_with_a_high_rate() -> None:
    results = [_result(f"c{i}", "pass") for i in range(99)] + [_result("t", "timeout")]
    verdict = judge_quality(results, min_pass_rate=0.5, max_regression_vs_champion=1.0)
    assert not verdict.passed
    assert verdict.timed_out == ("t",)
    assert any("timed out: t" in r for r in verdict.reasons)


def test_judge_per_tag_rates() -> None:
    results = [_result("a", "pass", ("factual",)), _result("b", "fail", ("safety", "factual"))]
    verdict = judge_quality(results, min_pass_rate=0.0, max_regression_vs_champion=1.0)
    assert verdict.by_tag["factual"].passed == 1 and verdict.by_tag["factual"].total == 2
    assert verdict.by_tag["safety"].rate == 0.0


def test_judge_regression_vs_champion() -> None:
    results = [_result(f"c{i}", "pass" if i else "fail") for i in range(10)] + [
        _result("new", "pass")
    ]
    champion = {f"c{i}": True for i in range(10)} | {"gone": True}
    verdict = judge_quality(results, min_pass_rate=0.0, max_regression_vs_champion=0.05)
    assert verdict.comparison is None and verdict.passed
    verdict = judge_quality(
        results, min_pass_rate=0.0, max_regression_vs_champion=0.05, champion=champion
    )
    assert not verdict.passed
    assert verdict.comparison is not None
    assert verdict.comparison.regressions == ("c0",)
    assert verdict.comparison.only_candidate == ("new",)
    assert verdict.comparison.only_champion == ("gone",)
    assert "regression vs champion 0.100" in verdict.reasons[0]
    tolerant = judge_quality(
        results, min_pass_rate=0.0, max_regression_vs_champion=0.1, champion=champion
    )
    assert tolerant.passed


def test_champion_results_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "champion.json"
    path.write_text(json.dumps({"cases": [{"id": "a", "passed": True, "text": "x"}]}))
    assert load_champion_results(path) == {"a": True}
    for body, field in [
        ({"cases": [{"id": "a", "passed": "yes"}]}, "cases[0].passed"),
        ({"cases": [{"passed": True}]}, "cases[0].id"),
        ({"results": []}, "cases"),
        ({"cases": [{"id": "a", "passed": True}, {"id": "a", "passed": False}]}, "cases[1].id"),
    ]:
        path.write_text(json.dumps(body))
        with pytest.raises(ChampionResultsError, match=field.replace("[", r"\[")):
            load_champion_results(path)
    path.write_text("{")
    with pytest.raises(ChampionResultsError, match="not valid JSON"):
        load_champion_results(path)
    with pytest.raises(ChampionResultsError, match="not found"):
        load_champion_results(tmp_path / "none.json")


def test_cli_bad_suite_line_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / "bad.jsonl"
    suite.write_text(SUITE.splitlines()[0] + "\n" + '{"id": "x", "prompt": "p", "checks": []}\n')
    code = main(["gate", "quality", "--url", "http://127.0.0.1:9", "--suite", str(suite),
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"{suite}:2: checks:" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_bad_definition_and_champion_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    assert main(["gate", "quality", "--url", "http://x", "--profile", "tpu", "--out", out]) == 2
    assert "profiles.tpu" in capsys.readouterr().err
    champion = tmp_path / "champion.json"
    champion.write_text(json.dumps({"cases": [{"id": "unrelated", "passed": True}]}))
    code = main(["gate", "quality", "--url", "http://x", "--champion-results", str(champion),
                 "--out", out])  # fmt: skip
    assert code == 2
    assert "no case id in common" in capsys.readouterr().err


def test_cli_unreachable_server_fails_the_gate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support import free_port

    suite = tmp_path / "one.jsonl"
    suite.write_text(SUITE.splitlines()[0] + "\n")
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["gate", "quality", "--url", url, "--suite", str(suite), "--out", str(out)]) == 1
    report = json.loads((out / "quality.json").read_text())
    assert report["passed"] is False
    assert report["errored"] == ["paris"]
    assert report["cases"][0]["status"] == "error"
    assert "ConnectError" in report["cases"][0]["error"]
    assert "1 case(s) errored: paris" in capsys.readouterr().out
    assert (out / "quality.md").read_text().startswith("# Quality gate")
