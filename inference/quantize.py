"""int8 as a release candidate: a model directory that the loader serves quantized.

Why a directory with a marker, not a flag: a quantized model must be judged like
any other model change (quality gate against the fp32 champion, latency gate,
canary), and everything in the pipeline already passes a model around as a
reference or a directory: the gates, the image bundle, the registry's lineage,
the deployed server. So :func:`quantized_model_dir` writes a copy of the fp32
directory (hard links where possible) plus ``quantization.json``; its content
hash, hence its revision, differs from the champion's, and
:func:`inference.loader.load_model` applies :func:`quantize_int8` to any directory
that carries the marker, in the gate, in the image and in the canary alike.

What int8 means here: torch's dynamic quantization of every linear layer
(weights int8 per tensor, activations quantized per call; embeddings, norms and
attention stay fp32), CPU only. GPT-2's ``Conv1D`` layers are first turned into the
``nn.Linear`` they are (weight transposed), since only that is quantized.

Left out: static (calibrated) quantization, int4, GPU int8. torch marks its
quantized tensors deprecated in favour of torchao, which this project does not
pin; the warning is silenced here, and the CTranslate2 peer's int8 column in
``mlcicd bench`` is the other int8 figure to judge by.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

Quantization = Literal["int8"]
MARKER = "quantization.json"
METHOD = "torch-dynamic-int8-linear"


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The directory's ``quantization.json``, or None for an unquantized model."""
    path = directory / MARKER
    if not path.is_file():
        return None
    marker: dict[str, Any] = json.loads(path.read_text())
    if marker.get("method") != METHOD:
        raise ValueError(f"{path}: unknown quantization method {marker.get('method')!r}")
    return marker


def quantized_model_dir(source: Path, quantization: Quantization, parent: Path) -> Path:
    """A copy of ``source`` marked to be served ``quantization``; made once, reused after.

    Files are hard-linked where the filesystem allows (a 500 MB model costs no
    space), else copied. Written to a temporary folder and renamed, so a half
    written candidate is never found.
    """
    if quantization != "int8":
        raise ValueError(f"unknown quantization {quantization!r}; expected int8")
    if read_marker(source) is not None:
        raise ValueError(f"{source} is quantized already")
    final = parent / f"{source.name}-{quantization}"
    if (final / MARKER).is_file():
        return final
    with candidate_directory(source, final) as tmp:
        marker = {"method": METHOD, "source": source.name}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return final


@contextlib.contextmanager
def candidate_directory(source: Path, final: Path) -> Iterator[Path]:
    """A temporary folder holding ``source``'s files, renamed to ``final`` if the block
    succeeds and removed either way: a half-written candidate is never found."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        link_files(source, tmp)
        yield tmp
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from a non-root server
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def link_files(source: Path, dest: Path) -> None:
    """Hard-link ``source``'s visible files into ``dest`` (copy where links fail): a
    candidate made from a 500 MB model then costs no space."""
    for item in sorted(source.iterdir()):
        if item.is_file() and not item.name.startswith("."):
            try:
                os.link(item, dest / item.name)
            except OSError:
                shutil.copy2(item, dest / item.name)


def _as_linear(module: nn.Module) -> nn.Linear | None:
    """GPT-2's ``Conv1D`` (weight stored (in, out)) as the ``nn.Linear`` it computes."""
    if type(module).__name__ != "Conv1D" or not hasattr(module, "nf"):
        return None
    weight, bias = module.weight, module.bias
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor | None):
        return None
    linear = nn.Linear(int(weight.shape[0]), int(weight.shape[1]), bias=bias is not None)
    linear.weight = nn.Parameter(weight.detach().t().contiguous(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return linear


def quantize_int8(model: nn.Module) -> int:
    """Quantize every linear layer of ``model`` to dynamic int8, in place; returns how many."""
    from torch.ao.quantization import quantize_dynamic

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            linear = _as_linear(child)
            if linear is not None:
                setattr(parent, name, linear)
    count = sum(isinstance(m, nn.Linear) for m in model.modules())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)  # type: ignore[no-untyped-call]
    return count
