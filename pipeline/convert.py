"""The conversion step: a model's weights converted with CTranslate2's own converter.

Two users, one conversion:

- the release candidate (:func:`ctranslate2_candidate`): the source directory
  (hard links) plus the converted weights and the marker that
  inference/ct2_model.py reads. The pipeline then judges it as any model change:
  quality gate paired against the unconverted champion, latency gate, image,
  canary; the server serves it with the CTranslate2 engine;
- the benchmark's peer column (pipeline/bench/peer.py), which times CTranslate2
  in process on the same weights.

Both write to a temporary folder and rename it, so an interrupted conversion is
never mistaken for a finished one, and both are keyed by the source's content
hash, so changed weights are converted again.

Left out: hub ids (the converter reads a local directory) and quantizations other
than float32 and int8.
"""

from __future__ import annotations

import json
from pathlib import Path

from inference.ct2_model import MARKER, METHOD, QUANTIZATIONS, SUBDIR, read_conversion
from inference.loader import directory_content_hash, model_directory
from inference.quantize import candidate_directory, read_marker

INSTALL_HINT = "ctranslate2 is not installed (pip install -e '.[peer]')"


def convert_weights(source: Path, out: Path, quantization: str) -> Path:
    """Run CTranslate2's transformers converter on ``source`` into ``out`` (made here)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"unknown quantization {quantization!r}; expected one of {', '.join(QUANTIZATIONS)}"
        )
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError as error:
        raise RuntimeError(INSTALL_HINT) from error

    converted = Path(
        TransformersConverter(str(source)).convert(str(out), quantization=quantization, force=True)
    )
    _ensure_bos(converted, source)
    return converted


def _ensure_bos(converted: Path, source: Path) -> None:
    """Give the converted config a ``bos_token`` when the converter left none.

    Why: CTranslate2 refuses a decoder config without one, and a word-level
    tokenizer may declare no BOS. The tokenizer's EOS stands in (as GPT-2's does).
    """
    config_path = converted / "config.json"
    config = json.loads(config_path.read_text())
    if config.get("bos_token"):
        return
    tokenizer = json.loads((source / "tokenizer_config.json").read_text())
    config["bos_token"] = tokenizer.get("bos_token") or tokenizer.get("eos_token")
    config_path.write_text(json.dumps(config, indent=2))


def source_directory(model_ref: str, what: str) -> Path:
    """The local directory of ``model_ref``; ValueError names ``what`` needs it."""
    _, directory = model_directory(model_ref)
    if directory is None:
        raise ValueError(f"{what}: model {model_ref!r} is not a local directory")
    return directory


def ctranslate2_candidate(source: Path, quantization: str, parent: Path) -> Path:
    """``source`` plus its CTranslate2 conversion, as a model directory; made once per content."""
    if read_marker(source) is not None:
        raise ValueError(f"{source} is an int8 candidate already; convert its fp32 source")
    if (source / MARKER).is_file():
        raise ValueError(f"{source} carries a conversion already")
    key = directory_content_hash(source)[:12]
    final = parent / f"{source.name}-{key}-ct2-{quantization}"
    if (final / MARKER).is_file():
        read_conversion(final)  # a damaged candidate is an error, not a silent reuse
        return final
    with candidate_directory(source, final) as tmp:
        convert_weights(source, tmp / SUBDIR, quantization)
        marker = {"method": METHOD, "quantization": quantization, "source": source.name}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return final
