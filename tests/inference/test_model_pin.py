"""The server serves the model that was tested, or does not start (MLCICD_MODEL_REVISION)."""

from __future__ import annotations

import pytest

from inference.builtin_model import ensure_builtin_model
from inference.loader import ModelLoadError, directory_content_hash, load_model
from inference.settings import load_settings


def test_the_revision_comes_from_the_environment_the_deploy_sets() -> None:
    env = {"MLCICD_MODEL": "org/model", "MLCICD_MODEL_REVISION": "a" * 40}
    assert load_settings(env=env).model_revision == "a" * 40
    assert load_settings(env={"MLCICD_MODEL_REVISION": ""}).model_revision is None


def test_a_pinned_revision_that_matches_loads_and_is_reported() -> None:
    expected = directory_content_hash(ensure_builtin_model("default"))
    loaded = load_model("builtin", "cpu", "fp32", revision=expected)
    assert loaded.revision == expected  # what /v1/models and inference_model_info show


def test_any_other_revision_is_refused() -> None:
    with pytest.raises(ModelLoadError, match=r"pinned to revision 0{64}, but loaded"):
        load_model("builtin", "cpu", "fp32", revision="0" * 64)
