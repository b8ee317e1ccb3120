"""Typed settings for ``mlcicd serve``: CLI flags over ``MLCICD_*`` env over defaults.

Why one typed object: the server, the engine and the fault injector read their
knobs from :class:`ServerSettings` and nothing else, so a bad value fails at
start-up with a message naming the setting (flag and env var), never halfway
through a request.

Where defaults come from: every default is declared here, once. The pipeline
reads the serving limits it judges a release by (max batch size, max new tokens
cap, request deadline, drain timeout) from these defaults, overrides them per
profile in ``pipeline.toml``, and passes its values in as ``MLCICD_*`` env or
flags (``pipeline.serving``). This package imports nothing from the pipeline,
so the serving image carries ``inference/`` alone.

Precedence: flags (``overrides``) over env over the caller's ``defaults`` over
the field defaults below.

Invariants checked at load: ``drain_timeout_s >= request_deadline_s`` (the
deadline counts from a request's arrival, so every request admitted before a
drain began ends, by finishing or by its deadline, before the drain times
out). The body is read within ``min(body_timeout_s, request_deadline_s)``.

Left out on purpose: config files (env and flags are what containers use) and
hot reload (a changed setting is a new rollout).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from importlib import metadata
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inference.faults import FaultConfigError, check_faults_allowed

ENV_PREFIX = "MLCICD_"
# After a drain, how long uvicorn may still spend writing responses before it
# exits; whoever gives the process a shutdown budget adds this to the drain.
GRACE_AFTER_DRAIN_S = 5.0
BUILTIN_MODELS = ("builtin", "builtin-weak")


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(StrEnum):
    auto = "auto"
    fp16 = "fp16"
    bf16 = "bf16"
    fp32 = "fp32"


class Allocator(StrEnum):
    """The server process's C allocator (inference/allocator.py says why jemalloc)."""

    auto = "auto"
    jemalloc = "jemalloc"
    system = "system"


class LayerPolicy(StrEnum):
    """How the engine picks each linear-layer shape's layout (inference/layer_tuning.py)."""

    measure = "measure"
    packed = "packed"
    dense = "dense"
    weight_first = "weight-first"
    onednn = "onednn"


class EngineChoice(StrEnum):
    """Which engine generates (inference/engine_factory.py): ``auto`` follows the model."""

    auto = "auto"
    torch = "torch"
    ctranslate2 = "ctranslate2"


class DecodeStepPolicy(StrEnum):
    """Which code runs a decode step (inference/gpt2_decode.py says why a plain one)."""

    auto = "auto"
    model = "model"


class Environment(StrEnum):
    dev = "dev"
    staging = "staging"
    prod = "prod"


class SettingsError(ValueError):
    """A setting is invalid; the message names it (flag and env var)."""


class ServerSettings(BaseModel):
    """Everything ``mlcicd serve`` is configured by; frozen once built."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    model: str = Field(default="builtin", min_length=1)
    # The exact weights to serve (HF commit or content hash); the server refuses others.
    model_revision: str | None = Field(default=None, min_length=1)
    device: Device = Device.auto
    dtype: DType = DType.auto
    # "auto": CTranslate2 for a model directory that carries a conversion, else torch.
    engine: EngineChoice = EngineChoice.auto
    # "measure": time the layouts and thread counts per shape at start; the others pin
    # a layout on all threads (to compare, or to rule one out on a given CPU).
    layer_policy: LayerPolicy = LayerPolicy.measure
    # "auto": GPT-2 models decode with the plain torch step; "model": transformers' forward.
    decode_step: DecodeStepPolicy = DecodeStepPolicy.auto
    # The C allocator: jemalloc where installed (inference/allocator.py says why).
    allocator: Allocator = Allocator.auto
    # Issue 16: for more than 16 clients the decode batch may grow past 16 (the
    # benchmark judges 64 clients against CTranslate2's batch 32); at 16 clients or
    # fewer nothing changes. 64 GPT-2-small sequences of ~50 tokens hold ~0.2 GB of KV cache.
    max_batch_size: int = Field(default=64, ge=1)
    batch_window_s: float = Field(default=0.005, ge=0.0, le=1.0)
    queue_cap: int = Field(default=64, ge=1)
    max_new_tokens_cap: int = Field(default=512, ge=1)
    context_cap: int | None = Field(default=None, ge=1)
    request_deadline_s: float = Field(default=60.0, gt=0)
    drain_timeout_s: float = Field(default=60.0, gt=0)
    max_body_bytes: int = Field(default=262_144, ge=64)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=1024, ge=1)
    port: int = Field(default=8000, ge=0, le=65535)
    host: str = Field(default="127.0.0.1", min_length=1)
    environment: Environment = Environment.dev
    fault_error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    fault_latency_ms: float = Field(default=0.0, ge=0.0, le=600_000.0)
    fault_token_latency_ms: float = Field(default=0.0, ge=0.0, le=60_000.0)
    fault_seed: int | None = None
    access_log: bool = False
    git_sha: str = "unknown"
    version: str = "0.0.0"

    @model_validator(mode="after")
    def _faults_not_in_prod(self) -> ServerSettings:
        try:
            check_faults_allowed(
                self.environment.value,
                self.fault_error_rate,
                self.fault_latency_ms,
                self.fault_token_latency_ms,
            )
        except FaultConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    @model_validator(mode="after")
    def _drain_covers_deadline(self) -> ServerSettings:
        """A drain shorter than the deadline would cut requests it admitted."""
        if self.drain_timeout_s < self.request_deadline_s:
            raise ValueError(
                f"`drain_timeout_s` ({self.drain_timeout_s:g}) must be >= `request_deadline_s` "
                f"({self.request_deadline_s:g}), so that a drain lets every admitted request end"
            )
        return self


# The serving limits a release is judged by; the pipeline definition may override them.
SERVING_LIMIT_FIELDS = (
    "max_batch_size",
    "max_new_tokens_cap",
    "request_deadline_s",
    "drain_timeout_s",
)


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def setting_label(field: str) -> str:
    """How an error names a setting: the field, its flag and its env var."""
    return f"`{field}` ({flag_name(field)} / {env_name(field)})"


def git_sha(env: Mapping[str, str]) -> str:
    """``MLCICD_GIT_SHA``, set by whoever built or started the server; else ``unknown``.

    The server runs no git: an image carries no ``.git``.
    """
    return env.get(env_name("git_sha")) or "unknown"


def package_version() -> str:
    try:
        return metadata.version("mlcicd")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _format(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        if field:
            label = setting_label(field)
            lines.append(f"invalid setting {label}: {item['msg']}, got {item['input']!r}")
        else:
            lines.append(f"invalid settings: {item['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> ServerSettings:
    """Resolve flags (``overrides``; ``None`` values ignored) over env over ``defaults``.

    Raises :class:`SettingsError` naming the setting on any invalid value.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for source in (defaults or {}), _from_env(env), (overrides or {}):
        for key, value in source.items():
            if key not in ServerSettings.model_fields or key in ("git_sha", "version"):
                raise SettingsError(f"unknown setting `{key}`")
            if value is not None:
                values[key] = value
    if isinstance(values.get("access_log"), str):
        values["access_log"] = values["access_log"].strip().lower() in ("1", "true", "yes", "on")
    values["git_sha"] = git_sha(env)
    values["version"] = package_version()
    try:
        return ServerSettings.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(_format(exc)) from exc


def _from_env(env: Mapping[str, str]) -> dict[str, str]:
    found = {}
    for field in ServerSettings.model_fields:
        if field in ("git_sha", "version"):
            continue
        raw = env.get(env_name(field))
        if raw is not None and raw != "":
            found[field] = raw
    return found
