"""The pipeline definition: stages, gates and thresholds, loaded once from pipeline.toml.

Why one typed object: the workflow renderer (infra/), the AnalysisTemplate, the
pytest gates, the benchmark and the local runner must never disagree about a
number. They all call :func:`load_definition` and read the resolved model; none
of them carries a default of its own.

Resolution is base -> ``profiles.<profile>`` -> ``environments.<env>``: a deep
merge of tables, where arrays (such as ``canary.steps``) replace rather than
append. Validation runs on the merged result with ``extra="forbid"`` so a typo
is an error, and every error names the dotted key and the file.

Deliberately left out: templating inside commands, and conditionals. A stage
that needs logic gets a gate with code behind it, not an expression language.
"""

from __future__ import annotations

import copy
import itertools
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from inference.settings import ServerSettings
from pipeline.source import REPO_ROOT

DEFAULT_DEFINITION = REPO_ROOT / "pipeline.toml"

_DURATION = re.compile(r"^(\d+)(s|m|h)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


class DefinitionError(ValueError):
    """The definition file is missing, unparsable or invalid; the message names the key."""


def duration_seconds(text: str) -> int:
    """Seconds in an Argo-style duration such as ``5m``; callers validated it already."""
    match = _DURATION.match(text)
    if match is None:
        raise DefinitionError(f"not a duration (use e.g. 30s, 5m, 1h): {text!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _check_duration(value: str) -> str:
    if _DURATION.match(value) is None:
        raise ValueError(f"must be a duration such as 30s, 5m or 1h, got {value!r}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PipelineMeta(_Strict):
    name: str
    registered_model: str
    python_version: str = "3.11"
    default_profile: str = "gpu"


class QualityGate(_Strict):
    suite: str
    min_pass_rate: float = Field(ge=0.0, le=1.0)
    max_regression_vs_champion: float = Field(ge=0.0, le=1.0)
    case_timeout_s: float = Field(gt=0)
    max_new_tokens: int = Field(gt=0)


class SlowdownFloor(_Strict):
    """Per measure, a difference too small to matter, in ms, added to both sides of the
    paired comparison (as the canary's ``relative_floor_s`` is), so that sub-millisecond
    scheduling noise in a tail is not read as a slowdown."""

    ttft: float = Field(ge=0.0)
    itl: float = Field(ge=0.0)
    e2e: float = Field(ge=0.0)


class LatencyGate(_Strict):
    max_new_tokens: int = Field(gt=0)
    requests: int = Field(gt=0)
    warmup_requests: int = Field(ge=0)
    concurrency: int = Field(gt=0)
    max_ttft_p99_ms: float = Field(gt=0)
    max_e2e_mean_ms: float = Field(gt=0)
    max_error_rate: float = Field(ge=0.0, le=1.0)
    # Paired with the champion (pipeline/gates/latency.py): same machine, interleaved blocks.
    max_slowdown_vs_champion: float = Field(ge=0.0)
    significance: float = Field(gt=0.0, lt=0.5)
    paired_blocks: int = Field(ge=2)
    ceiling_headroom_vs_champion: float = Field(ge=1.0)
    slowdown_floor_ms: SlowdownFloor


class CanaryStep(_Strict):
    set_weight: int = Field(ge=0, le=100)
    pause: str | None = None

    @field_validator("pause")
    @classmethod
    def _pause(cls, value: str | None) -> str | None:
        return None if value is None else _check_duration(value)


# The canary-vs-stable latency quantile must leave at least this many of a window's
# min_requests above it: a p99 of 50 requests is their single slowest one.
RELATIVE_TAIL_REQUESTS = 5


class CanaryGate(_Strict):
    min_success_rate: float = Field(ge=0.0, le=1.0)
    max_error_rate: float = Field(ge=0.0, le=1.0)
    max_p99_latency_s: float = Field(gt=0)
    max_ttft_p99_s: float = Field(gt=0)
    # Relative to the stable, same window, same scrape (pipeline/canary/promql.py).
    max_error_rate_increase: float = Field(ge=0.0, le=1.0)
    max_latency_ratio: float = Field(gt=1.0)
    max_ttft_ratio: float = Field(gt=1.0)
    relative_quantile: float = Field(gt=0.0, lt=1.0)
    relative_floor_s: float = Field(ge=0.0)
    confidence: float = Field(ge=0.5, lt=1.0)
    min_requests: int = Field(ge=1)
    window: str
    interval: str
    count: int = Field(ge=1)
    failure_limit: int = Field(ge=0)
    inconclusive_limit: int = Field(ge=0)
    consecutive_error_limit: int = Field(ge=0)
    # Prompts the canary must answer correctly (pipeline/canary/golden.py).
    golden_suite: str
    steps: tuple[CanaryStep, ...] = Field(min_length=1)

    @field_validator("window", "interval")
    @classmethod
    def _durations(cls, value: str) -> str:
        return _check_duration(value)

    @model_validator(mode="after")
    def _quantile_has_a_tail(self) -> CanaryGate:
        """A quantile of min_requests requests needs requests above it, or it is their maximum."""
        allowed = 1 - RELATIVE_TAIL_REQUESTS / self.min_requests
        if self.relative_quantile > allowed + 1e-9:
            raise ValueError(
                f"relative_quantile = {self.relative_quantile} leaves fewer than "
                f"{RELATIVE_TAIL_REQUESTS} of min_requests = {self.min_requests} above it; "
                f"at most {max(allowed, 0):.3g} (or raise min_requests)"
            )
        return self

    @field_validator("steps")
    @classmethod
    def _steps_rise_to_full(cls, steps: tuple[CanaryStep, ...]) -> tuple[CanaryStep, ...]:
        weights = [s.set_weight for s in steps]
        if weights != sorted(weights) or weights[-1] != 100:
            raise ValueError(f"weights must rise and end at 100, got {weights}")
        return steps


class Deploy(_Strict):
    """What a deploy may take beyond the canary's own pauses and analyses.

    ``startup_margin`` covers pulling the image and loading the model before the first
    step counts (the pods' startupProbe allows as much); ``job_overhead`` covers a deploy
    job's checkout, install and registry promote. :mod:`pipeline.rollout.budget` adds
    them to the canary's time, so ``deploy wait --timeout`` and the job's
    ``timeout-minutes`` are derived, never written down.
    """

    startup_margin: str
    job_overhead: str
    # How often a failed registry promote is retried after a healthy rollout.
    promote_attempts: int = Field(ge=1)

    @field_validator("startup_margin", "job_overhead")
    @classmethod
    def _durations(cls, value: str) -> str:
        return _check_duration(value)


def _server_default(field: str) -> Any:
    return ServerSettings.model_fields[field].default


class Serving(_Strict):
    """The serving limits a release is judged by.

    The server declares their defaults (:class:`inference.settings.ServerSettings`);
    ``[serving]`` tables override them per profile or environment, and whoever
    starts a server passes the resolved values in (:mod:`pipeline.serving`).
    """

    max_batch_size: int = Field(default=_server_default("max_batch_size"), ge=1)
    max_new_tokens_cap: int = Field(default=_server_default("max_new_tokens_cap"), ge=1)
    drain_timeout_s: float = Field(default=_server_default("drain_timeout_s"), gt=0)
    request_deadline_s: float = Field(default=_server_default("request_deadline_s"), gt=0)

    @model_validator(mode="after")
    def _drain_covers_deadline(self) -> Serving:
        if self.drain_timeout_s < self.request_deadline_s:
            raise ValueError(
                f"serving.drain_timeout_s ({self.drain_timeout_s:g}) must be >= "
                f"serving.request_deadline_s ({self.request_deadline_s:g}): a shorter drain "
                "cuts requests the server admitted"
            )
        return self


BenchMetric = Literal[
    "tokens_per_s",
    "speedup_vs_baseline",
    "itl_p50_ms",
    "e2e_p99_over_p50",
    "rss_over_weights_gib",
    "server_errors",
    "tokens_per_s_vs_peer",
    "itl_p50_vs_peer_step",
]
PeerQuantization = Literal["float32", "int8"]


class BenchTarget(_Strict):
    """One benchmark target: a metric of our server, for one model at one concurrency."""

    id: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    description: str
    model: str
    concurrency: int = Field(ge=1)
    metric: BenchMetric
    # The peer's batch size a ``*_vs_peer*`` metric compares against (default:
    # ``concurrency``), e.g. our 64 clients against CTranslate2's batch 32.
    peer_batch: int | None = Field(default=None, ge=1)
    min: float | None = None
    max: float | None = None

    @field_validator("max")
    @classmethod
    def _one_bound(cls, value: float | None, info: ValidationInfo) -> float | None:
        if (value is None) == (info.data.get("min") is None):
            raise ValueError("give exactly one of min or max")
        return value


class Bench(_Strict):
    """What ``mlcicd bench`` runs (models x concurrency levels) and the targets it reports."""

    models: tuple[str, ...] = Field(min_length=1)
    concurrency: tuple[int, ...] = Field(min_length=1)
    max_new_tokens: int = Field(gt=0)
    requests_per_client: int = Field(ge=1)
    min_requests: int = Field(ge=1)
    warmup_requests: int = Field(ge=0)
    cell_budget_s: float = Field(gt=0)
    # The CTranslate2 peer (pipeline/bench/peer.py): the conversions timed, how many
    # calls each figure is the median of, and how many fresh processes time each
    # conversion (the fastest counts). The targets compare with float32.
    peer_quantizations: tuple[PeerQuantization, ...]
    peer_repeats: int = Field(ge=1)
    peer_processes: int = Field(ge=1)
    targets: tuple[BenchTarget, ...] = ()


class Command(_Strict):
    name: str
    run: str
    # Runs by itself, after the stage's other commands, even where those run side by
    # side: for tests that time the machine or count its load (pytest's `serial`
    # mark), which a neighbouring command would skew.
    alone: bool = False


GateName = Literal["quality", "latency", "canary"]
# What a stage does besides its commands and gates. The workflow renderer and the
# local runner each implement every action for their platform.
StageAction = Literal["build-and-register", "deploy", "canary-rollout"]


class Stage(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    title: str
    runner: Literal["cpu", "gpu"]
    needs: tuple[str, ...] = ()
    environment: Literal["staging", "prod"] | None = None
    gates: tuple[GateName, ...] = ()
    action: StageAction | None = None
    commands: tuple[Command, ...] = ()
    # The commands do not depend on each other: the local runner runs them side by
    # side, up to the cores (pipeline/local/side_by_side.py); the workflow, as steps
    # of one job, in order.
    independent_commands: bool = False

    @field_validator("commands")
    @classmethod
    def _alone_commands_come_last(cls, commands: tuple[Command, ...]) -> tuple[Command, ...]:
        """The workflow runs commands in the listed order and the local runner runs an
        ``alone`` command after the others, so only the listed order keeps them the same."""
        for index, (command, following) in enumerate(itertools.pairwise(commands)):
            if command.alone and not following.alone:
                raise ValueError(
                    f"commands[{index}] ({command.name!r}) has alone = true but "
                    f"commands[{index + 1}] ({following.name!r}) does not: "
                    "list the alone commands last"
                )
        return commands


class PipelineDefinition(_Strict):
    """The resolved definition for one (profile, environment)."""

    pipeline: PipelineMeta
    quality: QualityGate
    latency: LatencyGate
    canary: CanaryGate
    deploy: Deploy
    serving: Serving = Serving()
    # Absent in a definition that has no benchmark; `mlcicd bench` then refuses to run.
    bench: Bench | None = None
    stages: tuple[Stage, ...] = Field(min_length=1)
    profile: str
    environment: str | None
    source: str

    def gate_title(self, gate: GateName) -> str:
        """A gate's step name with its thresholds, shared by the workflow and the local runner."""
        if gate == "quality":
            q = self.quality
            return (
                f"Quality gate (pass rate >= {q.min_pass_rate}, "
                f"regression vs champion <= {q.max_regression_vs_champion})"
            )
        if gate == "latency":
            lat = self.latency
            return (
                f"Latency gate (vs champion: at most {lat.max_slowdown_vs_champion:.0%} slower, "
                f"p < {lat.significance}, floors TTFT {lat.slowdown_floor_ms.ttft:g} / ITL "
                f"{lat.slowdown_floor_ms.itl:g} / e2e {lat.slowdown_floor_ms.e2e:g} ms; "
                f"ceilings TTFT p99 <= {lat.max_ttft_p99_ms} ms, "
                f"mean <= {lat.max_e2e_mean_ms} ms (x{lat.ceiling_headroom_vs_champion:g} when "
                f"paired), error rate <= {lat.max_error_rate})"
            )
        c = self.canary
        return (
            f"Canary gate (vs stable: errors +{c.max_error_rate_increase} at "
            f"{c.confidence:.0%}, p{c.relative_quantile * 100:g} x{c.max_latency_ratio}, "
            f"TTFT p{c.relative_quantile * 100:g} x{c.max_ttft_ratio}, "
            f"each side +{c.relative_floor_s:g} s; "
            f"ceilings success >= {c.min_success_rate}, errors <= "
            f"{c.max_error_rate}, p99 <= {c.max_p99_latency_s} s, "
            f"TTFT p99 <= {c.max_ttft_p99_s} s)"
        )

    def stage(self, stage_id: str) -> Stage:
        for stage in self.stages:
            if stage.id == stage_id:
                return stage
        raise KeyError(stage_id)

    @field_validator("stages")
    @classmethod
    def _needs_exist(cls, stages: tuple[Stage, ...]) -> tuple[Stage, ...]:
        seen: set[str] = set()
        for index, stage in enumerate(stages):
            for need in stage.needs:
                if need not in seen:
                    raise ValueError(
                        f"stages[{index}] ({stage.id}): needs {need!r}, "
                        "which is not an earlier stage"
                    )
            if stage.id in seen:
                raise ValueError(f"stages[{index}]: duplicate id {stage.id!r}")
            seen.add(stage.id)
        return stages


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _format_errors(source: Path, error: ValidationError, prefix: str) -> str:
    lines = [f"{source}: invalid pipeline definition{prefix}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        lines.append(f"  {key}: {item['msg']}")
    return "\n".join(lines)


def read_raw(path: Path = DEFAULT_DEFINITION) -> dict[str, Any]:
    """The file's tables, unresolved (for tools that edit or render overrides)."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise DefinitionError(f"{path}: pipeline definition not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionError(f"{path}: not valid TOML: {exc}") from exc


def resolve(
    raw: dict[str, Any],
    profile: str | None = None,
    environment: str | None = None,
    source: Path = DEFAULT_DEFINITION,
) -> PipelineDefinition:
    """Merge base, profile and environment tables and validate the result.

    The whole file is validated, not only the combination asked for: a bad value
    in any profile or environment is an error under every profile, so a typo in
    ``[profiles.builtin.canary]`` cannot hide until someone runs that profile.
    """
    chosen = _resolve_one(raw, profile, environment, source)
    for other_profile, other_environment in _combinations(raw):
        if (other_profile, other_environment) != (chosen.profile, environment):
            _resolve_one(raw, other_profile, other_environment, source)
    return chosen


def _combinations(raw: dict[str, Any]) -> list[tuple[str, str | None]]:
    profiles = raw.get("profiles", {})
    environments = raw.get("environments", {})
    if not isinstance(profiles, dict) or not isinstance(environments, dict):
        return []
    return [(p, e) for p in sorted(profiles) for e in [None, *sorted(environments)]]


def _resolve_one(
    raw: dict[str, Any],
    profile: str | None,
    environment: str | None,
    source: Path,
) -> PipelineDefinition:
    raw = dict(raw)
    profiles = raw.pop("profiles", {})
    environments = raw.pop("environments", {})
    meta = raw.get("pipeline", {})
    chosen = profile or (meta.get("default_profile") if isinstance(meta, dict) else None) or "gpu"
    if not isinstance(profiles, dict) or chosen not in profiles:
        known = ", ".join(sorted(profiles)) if isinstance(profiles, dict) else "none"
        raise DefinitionError(f"{source}: profiles.{chosen}: no such profile (known: {known})")
    if environment is not None and (
        not isinstance(environments, dict) or environment not in environments
    ):
        known = ", ".join(sorted(environments)) if isinstance(environments, dict) else "none"
        raise DefinitionError(
            f"{source}: environments.{environment}: no such environment (known: {known})"
        )
    merged = _merge(raw, profiles[chosen] or {})
    if environment is not None:
        merged = _merge(merged, environments[environment] or {})
    merged.update(profile=chosen, environment=environment, source=str(source))
    try:
        return PipelineDefinition.model_validate(merged)
    except ValidationError as exc:
        where = f" (profile {chosen}" + (f", environment {environment})" if environment else ")")
        raise DefinitionError(_format_errors(source, exc, where)) from exc


def load_definition(
    profile: str | None = None,
    environment: str | None = None,
    path: Path | str | None = None,
) -> PipelineDefinition:
    """Load and resolve the definition; the one entry point every consumer uses."""
    source = Path(path) if path is not None else DEFAULT_DEFINITION
    return resolve(read_raw(source), profile, environment, source)


def profiles(path: Path | str | None = None) -> list[str]:
    source = Path(path) if path is not None else DEFAULT_DEFINITION
    found = read_raw(source).get("profiles", {})
    return sorted(found) if isinstance(found, dict) else []


def environments(path: Path | str | None = None) -> list[str]:
    source = Path(path) if path is not None else DEFAULT_DEFINITION
    found = read_raw(source).get("environments", {})
    return sorted(found) if isinstance(found, dict) else []
