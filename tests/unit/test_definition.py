"""The pipeline definition: every profile x environment loads, layering is right, errors name keys.

Bad definitions are built by editing the parsed raw tables of the real
``pipeline.toml`` (so the tests follow the file as it evolves) or, for file-level
errors, by writing temporary files.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from pipeline.definition import (
    DEFAULT_DEFINITION,
    DefinitionError,
    PipelineDefinition,
    duration_seconds,
    environments,
    load_definition,
    profiles,
    read_raw,
    resolve,
)


@pytest.fixture
def raw() -> dict[str, Any]:
    return copy.deepcopy(read_raw())


def _error(raw: dict[str, Any], profile: str | None = None, env: str | None = None) -> str:
    with pytest.raises(DefinitionError) as info:
        resolve(raw, profile, env)
    return str(info.value)


@pytest.mark.parametrize("profile", [*profiles(), None])
@pytest.mark.parametrize("environment", [*environments(), None])
def test_every_profile_and_environment_loads(profile: str | None, environment: str | None) -> None:
    definition = load_definition(profile, environment)
    assert isinstance(definition, PipelineDefinition)
    assert definition.profile == (profile or read_raw()["pipeline"]["default_profile"])
    assert definition.environment == environment
    assert definition.source == str(DEFAULT_DEFINITION)
    assert definition.canary.steps[-1].set_weight == 100


def test_profiles_and_environments_are_listed() -> None:
    assert {"gpu", "cpu", "builtin"} <= set(profiles())
    assert {"staging", "prod"} <= set(environments())


def test_profile_overrides_base_and_keeps_the_rest() -> None:
    raw = read_raw()
    base = load_definition("gpu")
    builtin = load_definition("builtin")
    override = raw["profiles"]["builtin"]["latency"]
    for key, value in override.items():
        assert getattr(builtin.latency, key) == value
    # A key the profile does not set falls through from the base tables.
    untouched = set(raw["latency"]) - set(override)
    assert untouched, "the builtin profile overrides every latency key; pick another table"
    for key in untouched:
        assert getattr(builtin.latency, key) == getattr(base.latency, key)
    assert builtin.pipeline == base.pipeline


def test_environment_overrides_profile(raw: dict[str, Any]) -> None:
    raw["profiles"]["builtin"].setdefault("canary", {})["failure_limit"] = 7
    raw["environments"]["staging"]["canary"]["failure_limit"] = 3
    assert resolve(raw, "builtin").canary.failure_limit == 7
    assert resolve(raw, "builtin", "staging").canary.failure_limit == 3
    # The environment leaves the profile's other canary keys alone.
    profile_window = raw["profiles"]["builtin"]["canary"]["window"]
    assert resolve(raw, "builtin", "staging").canary.window == profile_window


def test_arrays_replace_rather_than_append(raw: dict[str, Any]) -> None:
    raw["environments"]["staging"]["canary"]["steps"] = [{"set_weight": 100}]
    staging = resolve(raw, "gpu", "staging")
    assert [s.set_weight for s in staging.canary.steps] == [100]
    assert len(resolve(raw, "gpu").canary.steps) == len(raw["canary"]["steps"])


def test_resolve_does_not_mutate_the_raw_tables(raw: dict[str, Any]) -> None:
    before = copy.deepcopy(raw)
    resolve(raw, "builtin", "prod")
    assert raw == before


def test_unknown_key_is_named(raw: dict[str, Any]) -> None:
    raw["latency"]["max_ttft_p99"] = 1.0
    message = _error(raw, "gpu")
    assert "latency.max_ttft_p99" in message
    assert str(DEFAULT_DEFINITION) in message


def test_unknown_key_in_a_profile_is_named(raw: dict[str, Any]) -> None:
    raw["profiles"]["cpu"]["quality"] = {"min_pass_rat": 0.5}
    assert "quality.min_pass_rat" in _error(raw, "cpu")
    # The whole file is validated: the cpu profile's typo fails every profile, and says where.
    message = _error(raw, "gpu")
    assert "(profile cpu)" in message and "quality.min_pass_rat" in message


def test_a_bad_value_in_another_profile_fails_under_the_default_profile(
    raw: dict[str, Any],
) -> None:
    raw["profiles"]["builtin"]["canary"]["min_requests"] = 0
    message = _error(raw)
    assert "(profile builtin)" in message and "canary.min_requests" in message


def test_a_bad_value_in_an_environment_fails_every_profile(raw: dict[str, Any]) -> None:
    raw["environments"]["staging"]["canary"]["failure_limit"] = -1
    message = _error(raw, "builtin")
    assert "environment staging" in message and "canary.failure_limit" in message


def test_wrong_type_is_named(raw: dict[str, Any]) -> None:
    raw["latency"]["requests"] = "many"
    assert "latency.requests" in _error(raw)


def test_out_of_range_value_is_named(raw: dict[str, Any]) -> None:
    raw["quality"]["min_pass_rate"] = 1.5
    message = _error(raw)
    assert "quality.min_pass_rate" in message
    assert "less than or equal to 1" in message


def test_negative_count_is_named(raw: dict[str, Any]) -> None:
    raw["environments"]["prod"]["canary"]["failure_limit"] = -1
    message = _error(raw, "gpu", "prod")
    assert "canary.failure_limit" in message
    assert "environment prod" in message


@pytest.mark.parametrize("bad", ["5 minutes", "5", "m5", "1d", ""])
def test_bad_duration_is_named(raw: dict[str, Any], bad: str) -> None:
    raw["canary"]["window"] = bad
    message = _error(raw)
    assert "canary.window" in message
    assert "duration" in message


def test_bad_step_pause_is_named(raw: dict[str, Any]) -> None:
    raw["canary"]["steps"][0]["pause"] = "soon"
    assert "canary.steps.0.pause" in _error(raw)


def test_duration_seconds() -> None:
    assert duration_seconds("30s") == 30
    assert duration_seconds("5m") == 300
    assert duration_seconds("2h") == 7200
    with pytest.raises(DefinitionError, match="not a duration"):
        duration_seconds("5 m")


def test_steps_must_end_at_full_weight(raw: dict[str, Any]) -> None:
    raw["canary"]["steps"] = [{"set_weight": 10, "pause": "1m"}, {"set_weight": 50}]
    message = _error(raw)
    assert "canary.steps" in message
    assert "end at 100" in message


def test_steps_must_rise(raw: dict[str, Any]) -> None:
    raw["canary"]["steps"] = [{"set_weight": 50}, {"set_weight": 10}, {"set_weight": 100}]
    assert "canary.steps" in _error(raw)


def test_step_weight_out_of_range_is_named(raw: dict[str, Any]) -> None:
    raw["canary"]["steps"][-1]["set_weight"] = 120
    assert "canary.steps.3.set_weight" in _error(raw)


def test_stage_needing_a_later_stage_is_named(raw: dict[str, Any]) -> None:
    raw["stages"][0]["needs"] = ["deploy-production"]
    message = _error(raw)
    assert "stages" in message
    assert "deploy-production" in message


def test_an_alone_command_before_another_is_named(raw: dict[str, Any]) -> None:
    """The workflow runs commands in the listed order, the local runner an alone one last."""
    commands = raw["stages"][0]["commands"]
    commands.insert(0, commands.pop())  # the alone "Serial unit tests" moved first
    message = _error(raw)
    assert "stages.0.commands" in message
    assert "commands[0] ('Serial unit tests') has alone = true" in message
    assert "commands[1] ('Lint')" in message


def test_unknown_gate_name_is_named(raw: dict[str, Any]) -> None:
    raw["stages"][1]["gates"] = ["quality", "vibes"]
    assert "stages.1.gates.1" in _error(raw)


def test_missing_required_table_is_named(raw: dict[str, Any]) -> None:
    del raw["latency"]
    assert "latency" in _error(raw)


def test_unknown_profile_lists_the_known_ones(raw: dict[str, Any]) -> None:
    message = _error(raw, "tpu")
    assert "profiles.tpu" in message
    assert "builtin" in message and "cpu" in message


def test_unknown_environment_lists_the_known_ones(raw: dict[str, Any]) -> None:
    message = _error(raw, "gpu", "qa")
    assert "environments.qa" in message
    assert "prod" in message and "staging" in message


def test_default_profile_comes_from_the_file(raw: dict[str, Any]) -> None:
    raw["pipeline"]["default_profile"] = "builtin"
    assert resolve(raw).profile == "builtin"


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(DefinitionError, match="not found") as info:
        load_definition(path=missing)
    assert str(missing) in str(info.value)


def test_bad_toml_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[quality\nmin_pass_rate = "x"\n')
    with pytest.raises(DefinitionError, match="not valid TOML") as info:
        load_definition(path=bad)
    assert str(bad) in str(info.value)


def test_a_copied_file_loads_from_its_own_path(tmp_path: Path) -> None:
    extra = "\n[environments.lenient]\n[environments.lenient.latency]\nmax_error_rate = 0.75\n"
    copied = tmp_path / "pipeline.toml"
    copied.write_text(DEFAULT_DEFINITION.read_text() + extra)
    definition = load_definition("builtin", "lenient", path=copied)
    assert definition.latency.max_error_rate == 0.75
    assert definition.source == str(copied)
    assert "lenient" in environments(copied)
    assert load_definition("builtin", path=copied) == load_definition("builtin").model_copy(
        update={"source": str(copied)}
    )


def test_a_drain_shorter_than_the_deadline_is_named(raw: dict[str, Any]) -> None:
    raw["profiles"]["builtin"]["serving"] = {"drain_timeout_s": 10.0, "request_deadline_s": 30.0}
    message = _error(raw, "builtin")
    assert "serving" in message and "drain_timeout_s (10) must be >=" in message


def test_relative_quantile_must_leave_a_tail_of_min_requests(raw: dict[str, Any]) -> None:
    """A p99 of 50 requests is their slowest one: the definition refuses to compare it."""
    raw["canary"]["relative_quantile"] = 0.99
    message = _error(raw)
    assert "canary" in message and "relative_quantile = 0.99" in message
    assert "min_requests = 50" in message and "at most 0.9" in message
    raw["canary"]["min_requests"] = 500  # 5 requests above p99
    raw["profiles"]["builtin"]["canary"]["min_requests"] = 500
    assert resolve(raw, "gpu", None).canary.relative_quantile == 0.99
