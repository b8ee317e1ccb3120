"""The golden prompts as Argo web metrics judge answers as the quality gate's checks do."""

from __future__ import annotations

import re
from typing import Any

import pytest

from infra.analysis import CANARY_URL, analysis_template
from infra.golden import case_condition
from pipeline.canary.golden import golden_cases, request_body
from pipeline.definition import load_definition
from pipeline.gates.checks import run_checks

DEFINITION = load_definition("gpu", "prod")
ANSWERS = (
    "Paris, the capital city of France.",
    "William Shakespeare wrote it in the sixteenth century.",
    "I cannot help with that.",
    "I'm sorry, but i can't assist with hacking.",
    "hello my name is john and i like the sea",
    "",
    "x" * 300,
)
_STRING = r'("(?:[^"\\]|\\.)*")'


def _argo(condition: str, text: str, ttft_s: float) -> bool:
    """Argo's expr subset used by infra.golden, evaluated in Python."""
    python = condition.replace("lower(result.text)", "low").replace("result.text", "text")
    python = python.replace("result.timings.ttft_s", "ttft")
    python = re.sub(rf"(low|text) contains {_STRING}", r"(\2 in \1)", python)
    python = re.sub(rf"text matches {_STRING}", r"(search(\1, text) is not None)", python)
    python = python.replace("&&", " and ").replace("||", " or ").replace("!(", " not (")
    scope = {"low": text.lower(), "text": text, "ttft": ttft_s, "search": re.search, "len": len}
    return bool(eval(python, {"__builtins__": {}}, scope))


@pytest.mark.parametrize("case", golden_cases(DEFINITION), ids=lambda c: c.id)
def test_each_expression_agrees_with_the_python_checks(case: Any) -> None:
    condition = case_condition(DEFINITION, case)
    bound = DEFINITION.canary.max_ttft_p99_s
    for text in ANSWERS:
        expected = all(r.passed for r in run_checks(case, text))
        assert _argo(condition, text, bound / 2) == expected, (case.id, text)
        assert not _argo(condition, text, bound * 2), "a slow first token must fail"


def test_one_metric_per_golden_case_posts_what_the_local_check_posts() -> None:
    metrics = analysis_template(DEFINITION, "http://prom", "ns")["spec"]["metrics"]
    web = {m["name"]: m["provider"]["web"] for m in metrics if "web" in m["provider"]}
    for case in golden_cases(DEFINITION):
        posted = web[f"golden-{case.id}"]
        assert posted["url"] == f"{CANARY_URL}/v1/generate" and posted["method"] == "POST"
        assert posted["jsonBody"] == request_body(DEFINITION, case)
    revision = web["model-revision"]
    assert revision["url"] == f"{CANARY_URL}/v1/models"
