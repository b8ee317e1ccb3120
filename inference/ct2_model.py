"""A model directory that carries a CTranslate2 conversion, and what the engine loads from it.

Why a directory, as for int8 (inference/quantize.py): a converted model is a
model change, so it must travel through the pipeline as a model does (quality
gate paired against the unconverted champion, latency gate, image, canary). The
pipeline's conversion step (pipeline/convert.py) writes a copy of the source
directory (hard links), the converter's output under :data:`SUBDIR` and the
marker :data:`MARKER`. The directory's content hash, hence its revision, covers
the converted weights, so it differs from the champion's.

What the engine needs is not the torch model: only the tokenizer (the server
tokenises, and the engine detokenises as the torch engine does), the context
length and the end-of-sequence ids from the source files, and the converted
weights, which CTranslate2 loads itself. So :func:`load_converted` reads no torch
weights, and it does not import torch at all where the directory has a
``tokenizer.json`` (transformers' config classes import it): the fast tokenizer
and ``config.json`` read as JSON are all it needs, and the resident memory that
torch would take is what lets the engine hold a second arrangement of its threads
(inference/ct2_lanes.py).

Left out: conversion here (it is a pipeline step: inference never runs the
converter), and hub ids (a conversion is always a local directory).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from inference.loader import (
    ModelLoadError,
    context_length,
    directory_content_hash,
    eos_token_ids,
    model_directory,
)

MARKER = "ctranslate2.json"
SUBDIR = "ctranslate2"
METHOD = "ctranslate2-converter"
QUANTIZATIONS = ("float32", "int8")


@dataclass(frozen=True)
class ConvertedModel:
    """What the CTranslate2 engine serves: the converted weights plus the source's tokenizer."""

    tokenizer: Any
    name: str
    revision: str
    context_length: int
    eos_ids: frozenset[int]
    weights: Path  # the converter's output directory (model.bin, config.json, vocabulary)
    quantization: str


def read_conversion(directory: Path) -> dict[str, Any] | None:
    """The directory's conversion marker, or None for a model that carries none."""
    path = directory / MARKER
    if not path.is_file():
        return None
    marker: dict[str, Any] = json.loads(path.read_text())
    if marker.get("method") != METHOD:
        raise ValueError(f"{path}: unknown conversion method {marker.get('method')!r}")
    if marker.get("quantization") not in QUANTIZATIONS:
        raise ValueError(
            f"{path}: quantization {marker.get('quantization')!r} is not one of "
            f"{', '.join(QUANTIZATIONS)}"
        )
    if not (directory / SUBDIR / "model.bin").is_file():
        raise ValueError(f"{path}: the converted weights {SUBDIR}/model.bin are missing")
    return marker


def carries_conversion(model_ref: str) -> bool:
    """True when ``model_ref`` is a local directory with a conversion marker (valid or not)."""
    try:
        _, directory = model_directory(model_ref)
    except ModelLoadError:
        return False
    return directory is not None and (directory / MARKER).is_file()


def load_converted(model_ref: str, revision: str | None = None) -> ConvertedModel:
    """The converted model ``model_ref`` names; ModelLoadError names what is missing."""
    name, directory = model_directory(model_ref)
    if directory is None:
        raise ModelLoadError(
            f"model {model_ref!r}: the CTranslate2 engine serves a converted model directory; "
            "make one with `mlcicd run --convert ctranslate2`"
        )
    try:
        marker = read_conversion(directory)
    except ValueError as error:
        raise ModelLoadError(f"model {model_ref!r}: {error}") from error
    if marker is None:
        raise ModelLoadError(
            f"model {model_ref!r} carries no CTranslate2 conversion ({MARKER}); "
            "make one with `mlcicd run --convert ctranslate2`, or serve it with --engine torch"
        )
    try:
        tokenizer, config = _tokenizer_and_config(directory)
    except Exception as error:
        raise ModelLoadError(f"model {model_ref!r}: tokenizer or config: {error}") from error
    found = directory_content_hash(directory)
    if revision and found != revision:
        raise ModelLoadError(f"model {model_ref!r}: pinned to revision {revision}, found {found}")
    return ConvertedModel(
        tokenizer=tokenizer,
        name=name,
        revision=found,
        context_length=context_length(SimpleNamespace(**config), tokenizer),
        eos_ids=eos_token_ids(config.get("eos_token_id"), tokenizer),
        weights=directory / SUBDIR,
        quantization=str(marker["quantization"]),
    )


def _tokenizer_and_config(directory: Path) -> tuple[Any, dict[str, Any]]:
    """The source's tokenizer and its ``config.json`` as a dict.

    The fast tokenizer class is loaded directly when ``tokenizer.json`` is there, so
    that torch is not imported; any other tokenizer goes through ``AutoTokenizer``.
    """
    config: dict[str, Any] = json.loads((directory / "config.json").read_text())
    if (directory / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(directory)), config
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory)), config
