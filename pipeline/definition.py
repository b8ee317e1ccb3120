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
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from pipeline.definition_tables import (
    PAIRED_METRICS,
    RELATIVE_TAIL_REQUESTS,
    Bench,
    BenchMetric,
    BenchTarget,
    CanaryGate,
    CanaryStep,
    DefinitionError,
    Deploy,
    LatencyGate,
    PeerQuantization,
    QualityGate,
    Serving,
    SlowdownFloor,
    StrictTable,
    duration_seconds,
)
from pipeline.source import REPO_ROOT

# The tables' models are part of this module's interface: consumers import them from here.
__all__ = [
    "DEFAULT_DEFINITION",
    "PAIRED_METRICS",
    "RELATIVE_TAIL_REQUESTS",
    "Bench",
    "BenchMetric",
    "BenchTarget",
    "CanaryGate",
    "CanaryStep",
    "Command",
    "DefinitionError",
    "Deploy",
    "GateName",
    "LatencyGate",
    "PeerQuantization",
    "PipelineDefinition",
    "PipelineMeta",
    "QualityGate",
    "Serving",
    "SlowdownFloor",
    "Stage",
    "StageAction",
    "duration_seconds",
    "environments",
    "load_definition",
    "profiles",
    "read_raw",
    "resolve",
]

DEFAULT_DEFINITION = REPO_ROOT / "pipeline.toml"


class PipelineMeta(StrictTable):
    name: str
    registered_model: str
    python_version: str = "3.11"
    default_profile: str = "gpu"


class Command(StrictTable):
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


class Stage(StrictTable):
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


class PipelineDefinition(StrictTable):
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
