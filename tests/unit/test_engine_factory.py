"""Which engine serves a model (inference/engine_factory.py): it follows the model.

No model is loaded: the choice reads only whether the directory carries a
conversion marker, and a wrong choice must be refused before anything loads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.ct2_model import MARKER
from inference.engine_factory import resolve_engine
from inference.settings import EngineChoice


@pytest.fixture()
def plain_dir(tmp_path: Path) -> Path:
    (tmp_path / "plain").mkdir()
    return tmp_path / "plain"


@pytest.fixture()
def converted_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "converted"
    directory.mkdir()
    (directory / MARKER).write_text("{}")
    return directory


def test_auto_follows_the_model(plain_dir: Path, converted_dir: Path) -> None:
    assert resolve_engine(EngineChoice.auto, str(plain_dir)) == EngineChoice.torch
    assert resolve_engine(EngineChoice.auto, str(converted_dir)) == EngineChoice.ctranslate2
    assert resolve_engine(EngineChoice.auto, "org/some-hub-model") == EngineChoice.torch


def test_an_engine_that_does_not_fit_the_model_is_refused_saying_which_fits(
    plain_dir: Path, converted_dir: Path
) -> None:
    with pytest.raises(ValueError, match="serve it with --engine ctranslate2"):
        resolve_engine(EngineChoice.torch, str(converted_dir))
    with pytest.raises(ValueError, match="mlcicd run --convert ctranslate2"):
        resolve_engine(EngineChoice.ctranslate2, str(plain_dir))
    assert resolve_engine(EngineChoice.torch, str(plain_dir)) == EngineChoice.torch
    assert resolve_engine(EngineChoice.ctranslate2, str(converted_dir)) == EngineChoice.ctranslate2


def test_serve_refuses_a_mismatch_with_a_message_and_exit_2(
    converted_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inference.serve_cli import main

    assert main(["--model", str(converted_dir), "--engine", "torch", "--port", "0"]) == 2
    assert "serve it with --engine ctranslate2" in capsys.readouterr().err
