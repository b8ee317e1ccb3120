"""Resolve a model reference to a loaded model, tokenizer and a stable revision id.

Why one function: the server, the quality gate and the benchmark must load a
model the same way, so that "the model that passed the gate" is the model served.

References:

* ``builtin`` / ``builtin-weak``: the tiny model trained here (see builtin_model).
* ``gpt2-small-random``: the GPT-2-small shape with random weights, for benchmarks.
* a local directory: loaded as is with ``from_pretrained``.
* anything else: a Hugging Face id. With ``HF_HUB_OFFLINE`` set, only the local
  HF cache is used (``local_files_only=True``); otherwise ``HF_TOKEN`` is passed.

Device: ``auto`` is CUDA when available, else CPU. Dtype: ``auto`` is bf16 on a
CUDA device that supports it (fp16 otherwise) and fp32 on CPU. Asking for fp16 on
CPU is an error, not a silent fallback: CPU fp16 kernels are slow or missing, and a
benchmark must not quietly measure another dtype than the one it names.

Revision: the Hugging Face commit hash when the hub reports one, else the sha256
of the model directory's files (:func:`directory_content_hash`), so an identical
model always gets the same id and any changed byte gets a new one. Given a revision
(``MLCICD_MODEL_REVISION``, set by the deploy), a hub id is fetched at exactly that
commit (``revision=``) and any model whose revision differs is refused: the pod that
serves is the model that was tested, or it does not start.

Quantisation: a directory marked by inference/quantize.py (an int8 candidate)
is loaded from its fp32 weights and quantized here, so every consumer serves it
alike. Left out: other quantisations, multi-GPU sharding, remote code (``trust_remote_code``
stays off: loading a model must not run code from the hub).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.builtin_model import ensure_builtin_model, ensure_gpt2_small_model
from inference.compute_thread import run_in_fresh_thread

DTYPES = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")


class ModelLoadError(Exception):
    """A model reference could not be resolved or loaded; the message names the reference."""


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str
    revision: str
    device: str
    dtype: str
    context_length: int
    # "int8" when the directory carries inference/quantize.py's marker, else None.
    quantization: str | None = None


def directory_content_hash(path: Path | str) -> str:
    """sha256 (hex) over every file's relative path and bytes, in sorted order.

    Hidden files (locks, editor droppings) are skipped so the hash covers the model only.
    """
    root = Path(path)
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    for file in files:
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def resolve_device(device: str) -> str:
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise ModelLoadError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    import torch

    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    on_cuda = device.startswith("cuda")
    if dtype == "auto":
        if not on_cuda:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if dtype == "fp16" and not on_cuda:
        raise ModelLoadError("dtype 'fp16' is not supported on CPU; use 'fp32' or 'bf16'")
    return dtype


def _torch_dtype(dtype: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def _resolve_ref(model_ref: str) -> tuple[str, Path | None]:
    """(display name, local directory or None for a hub id)."""
    if model_ref == "builtin":
        return "builtin", ensure_builtin_model("default")
    if model_ref == "builtin-weak":
        return "builtin-weak", ensure_builtin_model("weak")
    if model_ref == "gpt2-small-random":
        return "gpt2-small-random", ensure_gpt2_small_model()
    local = Path(model_ref).expanduser()
    if local.is_dir():
        return local.resolve().name, local.resolve()
    if model_ref.startswith((".", "/", "~")):
        raise ModelLoadError(f"model {model_ref!r}: no such directory")
    return model_ref, None


def model_directory(model_ref: str) -> tuple[str, Path | None]:
    """(display name, local directory, or None for a hub id) of ``model_ref``.

    Public so that tools which read the same weights another way (the benchmark's
    CTranslate2 conversion) resolve a reference exactly as :func:`load_model` does.
    """
    return _resolve_ref(model_ref)


def model_config(model_ref: str) -> Any:
    """The transformers config of ``model_ref`` alone (no weights), found as
    :func:`load_model` finds the model: for tools that need only its shapes."""
    from transformers import AutoConfig

    source, kwargs = _pretrained_source(model_ref, _resolve_ref(model_ref)[1])
    return AutoConfig.from_pretrained(source, **kwargs)


def _pretrained_source(model_ref: str, directory: Path | None) -> tuple[str, dict[str, Any]]:
    """What ``from_pretrained`` is given: a local directory as it is, a hub id with the
    hub settings (offline, token)."""
    if directory is not None:
        return str(directory), {}
    return model_ref, _hub_kwargs()


def _hub_kwargs() -> dict[str, Any]:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")
    if offline:
        return {"local_files_only": True}
    token = os.environ.get("HF_TOKEN")
    return {"token": token} if token else {}


def context_length(config: Any, tokenizer: Any) -> int:
    """The longest sequence the model takes, from its config (else the tokenizer's limit)."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    return 2048


def eos_token_ids(configured: Any, tokenizer: Any) -> frozenset[int]:
    """The ids that end a sequence: the config's (one id or a list), else the tokenizer's."""
    eos = configured if configured is not None else tokenizer.eos_token_id
    return frozenset(eos if isinstance(eos, list) else ([] if eos is None else [int(eos)]))


def _hub_snapshot_revision(model_ref: str) -> str:
    """The commit of the cached snapshot (its directory name), else the content hash."""
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(model_ref, "config.json")
    except Exception:
        return "unknown"
    if not isinstance(config, str):
        return "unknown"
    snapshot = Path(config).parent
    if snapshot.parent.name == "snapshots":
        return snapshot.name
    return directory_content_hash(snapshot)


def load_model(
    model_ref: str, device: str = "auto", dtype: str = "auto", revision: str | None = None
) -> LoadedModel:
    """Load ``model_ref`` for inference (eval mode, no grad) on ``device`` in ``dtype``.

    The work runs on a short-lived thread, so the CPU thread pool it starts does
    not outlive the load and slow the engine's decode steps down
    (inference/compute_thread.py).
    """
    loaded = run_in_fresh_thread(
        lambda: _load(model_ref, device, dtype, revision), name="model-load"
    )
    if revision and loaded.revision != revision:
        raise ModelLoadError(
            f"model {model_ref!r}: pinned to revision {revision}, but loaded {loaded.revision}"
        )
    return loaded


def _load(model_ref: str, device: str, dtype: str, revision: str | None = None) -> LoadedModel:
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    try:
        name, directory = _resolve_ref(model_ref)
    except ModelLoadError:
        raise
    except Exception as error:  # training/building the builtin model failed
        raise ModelLoadError(f"model {model_ref!r}: could not build it: {error}") from error
    source, kwargs = _pretrained_source(model_ref, directory)
    if directory is None and revision:
        kwargs["revision"] = revision
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer: Any = AutoTokenizer.from_pretrained(source, **kwargs)
        model: Any = AutoModelForCausalLM.from_pretrained(
            source, dtype=_torch_dtype(resolved_dtype), **kwargs
        )
    except Exception as error:
        hint = (
            " (HF_HUB_OFFLINE is set: only the local cache was searched)"
            if ("local_files_only" in kwargs)
            else ""
        )
        raise ModelLoadError(f"model {model_ref!r} could not be loaded{hint}: {error}") from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(resolved_device)
    model.eval()
    model.requires_grad_(False)
    quantization = _quantize_if_marked(model_ref, model, directory, resolved_device, resolved_dtype)
    commit = getattr(model.config, "_commit_hash", None)
    if directory is not None:
        revision = directory_content_hash(directory)
    elif isinstance(commit, str) and commit:
        revision = commit
    else:
        revision = _hub_snapshot_revision(model_ref)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        revision=revision,
        device=resolved_device,
        dtype=resolved_dtype,
        context_length=context_length(model.config, tokenizer),
        quantization=quantization,
    )


def _quantize_if_marked(
    model_ref: str, model: Any, directory: Path | None, device: str, dtype: str
) -> str | None:
    """Apply the quantization a candidate directory is marked with (inference/quantize.py)."""
    from inference.quantize import quantize_int8, read_marker

    try:
        marker = None if directory is None else read_marker(directory)
    except ValueError as error:
        raise ModelLoadError(f"model {model_ref!r}: {error}") from error
    if marker is None:
        return None
    if device != "cpu" or dtype != "fp32":
        raise ModelLoadError(
            f"model {model_ref!r} is an int8 candidate: it is served on CPU from fp32 weights "
            f"(asked for device {device!r}, dtype {dtype!r})"
        )
    quantize_int8(model)
    return "int8"
