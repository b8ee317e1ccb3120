"""Eval suites: JSONL cases with declarative checks, parsed strictly.

Why declarative checks instead of Python test functions: a suite is data that
the quality gate runs against a model in-process or over HTTP, that MLflow
stores next to the results, and that a reviewer can read in a diff. Each line is

    {"id": "paris", "prompt": "Q: ...\\nA:", "checks": [{"kind": "contains", "value": "paris"}],
     "tags": ["factual"]}

Optional per case: ``max_new_tokens`` (else the definition's) and ``stop``.
Checks run on the generated text only (never on the prompt) and, except for
``regex`` with its own flags, ignore case. Kinds: ``contains``, ``any_of``,
``regex``, ``refusal``, ``not_contains``, ``min_length``, ``max_length``.

Left out on purpose: model-graded checks and scoring with partial credit; a
case passes only when every one of its checks passes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Phrases that mark a refusal. Straight and curly apostrophes are normalised first.
REFUSAL_MARKERS: tuple[str, ...] = (
    "i can't",
    "i cannot",
    "i can not",
    "i won't",
    "i will not",
    "i'm not able to",
    "i am not able to",
    "i'm sorry",
    "i am sorry",
)


class SuiteError(ValueError):
    """A suite file is missing or malformed; the message names file:line and the field."""


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Contains(_Check):
    kind: Literal["contains"]
    value: str = Field(min_length=1)


class AnyOf(_Check):
    kind: Literal["any_of"]
    values: tuple[Annotated[str, Field(min_length=1)], ...] = Field(min_length=1)


class NotContains(_Check):
    kind: Literal["not_contains"]
    values: tuple[Annotated[str, Field(min_length=1)], ...] = Field(min_length=1)


class Regex(_Check):
    kind: Literal["regex"]
    pattern: str = Field(min_length=1)
    ignore_case: bool = True

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class Refusal(_Check):
    kind: Literal["refusal"]


class MinLength(_Check):
    kind: Literal["min_length"]
    value: int = Field(ge=0)


class MaxLength(_Check):
    kind: Literal["max_length"]
    value: int = Field(ge=0)


Check = Annotated[
    Contains | AnyOf | NotContains | Regex | Refusal | MinLength | MaxLength,
    Field(discriminator="kind"),
]


class Case(BaseModel):
    """One eval case: a prompt and the checks its completion must pass."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    prompt: str = Field(min_length=1)
    checks: tuple[Check, ...] = Field(min_length=1)
    tags: tuple[str, ...] = ()
    max_new_tokens: int | None = Field(default=None, gt=0)
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckResult:
    kind: str
    passed: bool
    reason: str


def _normalise(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'").lower()


def run_check(check: Check, text: str) -> CheckResult:
    """Judge one completion; the reason says what was looked for and what was found."""
    low = _normalise(text)
    if isinstance(check, Contains):
        ok = _normalise(check.value) in low
        return CheckResult(check.kind, ok, f"{'found' if ok else 'missing'} {check.value!r}")
    if isinstance(check, AnyOf):
        hits = [v for v in check.values if _normalise(v) in low]
        reason = f"found {hits[0]!r}" if hits else f"none of {list(check.values)!r} found"
        return CheckResult(check.kind, bool(hits), reason)
    if isinstance(check, NotContains):
        hits = [v for v in check.values if _normalise(v) in low]
        reason = f"forbidden {hits!r} present" if hits else "no forbidden text"
        return CheckResult(check.kind, not hits, reason)
    if isinstance(check, Regex):
        flags = re.IGNORECASE if check.ignore_case else 0
        match = re.search(check.pattern, text, flags)
        reason = (
            f"/{check.pattern}/ matched {match.group(0)!r}"
            if match
            else f"/{check.pattern}/ did not match"
        )
        return CheckResult(check.kind, match is not None, reason)
    if isinstance(check, Refusal):
        marker = next((m for m in REFUSAL_MARKERS if m in low), None)
        reason = f"refused ({marker!r})" if marker else "no refusal phrase"
        return CheckResult(check.kind, marker is not None, reason)
    if isinstance(check, MinLength):
        ok = len(text) >= check.value
        return CheckResult(check.kind, ok, f"{len(text)} chars, need >= {check.value}")
    ok = len(text) <= check.value
    return CheckResult(check.kind, ok, f"{len(text)} chars, need <= {check.value}")


def run_checks(case: Case, text: str) -> list[CheckResult]:
    return [run_check(check, text) for check in case.checks]


def _field(loc: tuple[int | str, ...]) -> str:
    # Pydantic puts the discriminator value into the location ("checks.0.contains.value");
    # readers want the position only.
    parts = [str(p) for p in loc]
    kinds = {"contains", "any_of", "not_contains", "regex", "refusal", "min_length", "max_length"}
    return ".".join(p for i, p in enumerate(parts) if not (i == 2 and p in kinds)) or "(line)"


def parse_suite_text(text: str, source: str) -> list[Case]:
    """Parse JSONL; blank lines are skipped. Errors name ``source:line`` and the field."""
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{where}: not valid JSON: {exc.msg} (column {exc.colno})") from exc
        if not isinstance(data, dict):
            raise SuiteError(f"{where}: a case must be a JSON object")
        try:
            case = Case.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
            # A bad item also makes pydantic call its tuple "too short"; keep the specific one.
            deeper = {e["loc"][0] for e in errors if len(e["loc"]) > 1}
            errors = [e for e in errors if len(e["loc"]) > 1 or e["loc"][0] not in deeper]
            problems = "; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in errors)
            raise SuiteError(f"{where}: {problems}") from exc
        if case.id in seen:
            raise SuiteError(f"{where}: id: duplicate {case.id!r} (first on line {seen[case.id]})")
        seen[case.id] = number
        cases.append(case)
    if not cases:
        raise SuiteError(f"{source}: the suite has no cases")
    return cases


def load_suite(path: Path) -> list[Case]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SuiteError(f"{path}: suite file not found") from exc
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{path}: not UTF-8 text") from exc
    return parse_suite_text(text, str(path))
