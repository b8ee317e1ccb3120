"""The conversion step: a CTranslate2 candidate is the source plus converted weights and a marker.

On the built-in model, with CTranslate2's real converter. What matters: the
candidate is a new model (new content hash) made from the same weights, it is
made once per source content, a damaged one is an error that names what is
missing, and ``mlcicd run --convert`` puts it where the run keeps its candidates.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import pytest

from inference.ct2_model import MARKER, SUBDIR, load_converted, read_conversion
from inference.loader import ModelLoadError, directory_content_hash
from inference.quantize import quantized_model_dir
from pipeline.convert import ctranslate2_candidate
from pipeline.local.run_cli import _candidate

pytestmark = pytest.mark.slow


def test_the_candidate_is_the_source_plus_its_conversion_under_a_new_revision(
    builtin_model_dir: Path, builtin_converted_dir: Path, builtin_loaded: Any
) -> None:
    for item in builtin_model_dir.iterdir():
        if item.is_file() and not item.name.startswith("."):
            assert (builtin_converted_dir / item.name).read_bytes() == item.read_bytes()
    assert (builtin_converted_dir / SUBDIR / "model.bin").is_file()
    marker = read_conversion(builtin_converted_dir)
    assert marker is not None and marker["quantization"] == "float32"
    converted = load_converted(str(builtin_converted_dir))
    assert converted.revision == directory_content_hash(builtin_converted_dir)
    assert converted.revision != builtin_loaded.revision
    assert converted.context_length == builtin_loaded.context_length
    assert converted.eos_ids == {builtin_loaded.tokenizer.eos_token_id}


def test_it_is_made_once_per_source_content(
    builtin_model_dir: Path, builtin_converted_dir: Path
) -> None:
    weights = builtin_converted_dir / SUBDIR / "model.bin"
    before = weights.stat().st_mtime_ns
    again = ctranslate2_candidate(builtin_model_dir, "float32", builtin_converted_dir.parent)
    assert again == builtin_converted_dir and weights.stat().st_mtime_ns == before


def test_a_damaged_candidate_is_an_error_naming_the_missing_weights(
    builtin_converted_dir: Path, tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(builtin_converted_dir, damaged)
    (damaged / SUBDIR / "model.bin").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.bin are missing"):
        load_converted(str(damaged))
    (damaged / MARKER).write_text('{"method": "magic"}')
    with pytest.raises(ModelLoadError, match="unknown conversion method 'magic'"):
        load_converted(str(damaged))


def test_candidates_of_candidates_and_unknown_quantizations_are_refused(
    builtin_model_dir: Path, builtin_converted_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="carries a conversion already"):
        ctranslate2_candidate(builtin_converted_dir, "float32", tmp_path)
    int8 = quantized_model_dir(builtin_model_dir, "int8", tmp_path / "int8")
    with pytest.raises(ValueError, match="int8 candidate already"):
        ctranslate2_candidate(int8, "float32", tmp_path)
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        ctranslate2_candidate(builtin_model_dir, "int4", tmp_path)
    assert not list(tmp_path.glob("*ct2*"))  # nothing half-made left behind


def test_mlcicd_run_convert_makes_the_candidate_under_the_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(model="builtin", convert="ctranslate2", quantize=None)
    args.state_dir = tmp_path
    candidate = Path(_candidate(args))
    assert candidate.parent == tmp_path.resolve() / "candidates"
    assert read_conversion(candidate) is not None
    out = capsys.readouterr().out
    assert "converting builtin with CTranslate2 (float32)" in out and str(candidate) in out
