"""Server settings: its own defaults, the caller's defaults, env and flags; errors name the key."""

from __future__ import annotations

import pytest

from inference.settings import (
    Device,
    DType,
    Environment,
    ServerSettings,
    SettingsError,
    load_settings,
)
from mlcicd.cli import main

ENV = {"MLCICD_GIT_SHA": "abc123"}


def test_the_server_has_its_own_defaults_without_the_pipeline() -> None:
    settings = load_settings(env=ENV)
    assert (settings.model, settings.host, settings.git_sha) == ("builtin", "127.0.0.1", "abc123")
    assert (settings.device, settings.dtype, settings.environment) == (
        Device.auto,
        DType.auto,
        Environment.dev,
    )
    assert settings.fault_error_rate == 0 and settings.fault_latency_ms == 0
    assert load_settings(env={}).git_sha == "unknown"  # no git call: an image has no .git


def test_caller_defaults_sit_under_env_and_flags() -> None:
    defaults = {"drain_timeout_s": 61.0, "max_batch_size": 3, "queue_cap": 5}
    env = {**ENV, "MLCICD_MAX_BATCH_SIZE": "4"}
    settings = load_settings({"queue_cap": 6}, env=env, defaults=defaults)
    assert (settings.drain_timeout_s, settings.max_batch_size, settings.queue_cap) == (61.0, 4, 6)
    with pytest.raises(SettingsError, match="unknown setting `profile`"):
        load_settings(env=ENV, defaults={"profile": "builtin"})


def test_flags_win_over_env_and_env_over_defaults() -> None:
    env = {**ENV, "MLCICD_QUEUE_CAP": "7", "MLCICD_PORT": "9001", "MLCICD_DTYPE": "bf16"}
    settings = load_settings({"port": 9100, "queue_cap": None}, env=env)
    assert (settings.queue_cap, settings.port, settings.dtype) == (7, 9100, DType.bf16)


@pytest.mark.parametrize(
    ("overrides", "env", "names"),
    [
        ({"max_batch_size": 0}, {}, "`max_batch_size` (--max-batch-size / MLCICD_MAX_BATCH_SIZE)"),
        ({}, {"MLCICD_QUEUE_CAP": "lots"}, "`queue_cap` (--queue-cap / MLCICD_QUEUE_CAP)"),
        ({"device": "tpu"}, {}, "`device`"),
        ({"fault_error_rate": 1.5}, {}, "`fault_error_rate`"),
        ({"port": 70000}, {}, "`port`"),
        ({"profile": "nope"}, {}, "unknown setting `profile`"),
    ],
)
def test_invalid_setting_is_named(
    overrides: dict[str, object], env: dict[str, str], names: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides, env={**ENV, **env})
    assert names in str(caught.value)


def test_prod_refuses_fault_injection_settings() -> None:
    with pytest.raises(SettingsError, match="refused when `environment` is prod"):
        load_settings({"environment": "prod", "fault_latency_ms": 50}, env=ENV)
    with pytest.raises(SettingsError, match="refused when `environment` is prod"):
        load_settings({"environment": "prod", "fault_token_latency_ms": 5}, env=ENV)
    assert load_settings({"environment": "staging", "fault_error_rate": 0.5}, env=ENV)


def test_serve_cli_exits_2_naming_the_bad_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--queue-cap", "0"]) == 2
    assert "`queue_cap`" in capsys.readouterr().err
    assert main(["serve", "--environment", "prod", "--fault-error-rate", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "prod" in err and "Traceback" not in err


def test_serve_cli_exits_2_when_the_model_cannot_load(
    capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    assert main(["serve", "--model", f"{tmp_path}/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "cannot load model" in err and "no-such-model" in err and "Traceback" not in err


def test_a_drain_shorter_than_the_request_deadline_is_refused_at_load() -> None:
    with pytest.raises(SettingsError, match=r"`drain_timeout_s` \(10\) must be >= `request_dead"):
        load_settings({"drain_timeout_s": 10.0, "request_deadline_s": 30.0}, env=ENV)
    defaults = ServerSettings.model_fields
    assert defaults["drain_timeout_s"].default >= defaults["request_deadline_s"].default
