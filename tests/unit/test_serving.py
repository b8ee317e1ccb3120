"""pipeline.serving: the definition's serving limits reach every server the pipeline starts."""

from __future__ import annotations

import argparse

import pytest

from inference import serve_cli
from inference.settings import ServerSettings, load_settings
from pipeline.definition import load_definition
from pipeline.serving import default_profile, serving_env


def test_the_definition_defaults_to_the_servers_own_limits() -> None:
    serving = load_definition("gpu").serving
    for field, value in serving.model_dump().items():
        assert value == ServerSettings.model_fields[field].default, field


def test_a_profile_override_reaches_the_server_as_env() -> None:
    serving = load_definition("builtin").serving
    env = serving_env(serving)
    assert env["MLCICD_DRAIN_TIMEOUT_S"] == str(serving.drain_timeout_s)
    settings = load_settings(env=env)
    assert settings.drain_timeout_s == serving.drain_timeout_s
    assert settings.request_deadline_s == serving.request_deadline_s
    assert settings.drain_timeout_s != ServerSettings.model_fields["drain_timeout_s"].default


def test_builtin_models_take_the_builtin_profile() -> None:
    assert default_profile("builtin") == default_profile("builtin-weak") == "builtin"
    assert default_profile("gpt2") is None


def test_mlcicd_serve_passes_the_profile_limits_as_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlcicd.cli import main

    seen: dict[str, object] = {}

    def fake_serve(args: argparse.Namespace, defaults: dict[str, object], own_process: bool) -> int:
        seen.update(defaults, own_process=own_process)
        return 0

    monkeypatch.setattr(serve_cli, "serve", fake_serve)
    assert main(["serve", "--model", "builtin"]) == 0
    # Called with an argument list, the caller keeps its process (no early exec).
    assert seen.pop("own_process") is False
    assert seen == load_definition("builtin").serving.model_dump()
    assert main(["serve", "--profile", "no-such-profile"]) == 2
