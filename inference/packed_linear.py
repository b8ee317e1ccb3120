"""oneDNN-packed linear layers: the CPU fast path for a model's matrix multiplies.

Why: on CPU in fp32 a decode step is almost all matrix multiplies (about 88% of
a GPT-2-small step is ``addmm``/``mm``). For the skinny shapes of decoding (1-64
rows against a 768x3072 weight or the 50257-row output layer) oneDNN's linear
was 15-30% faster than the default MKL ``addmm`` on this project's CPU runners
(AMD EPYC, AVX-512), measured with the weights held as oneDNN tensors.

How: :func:`pack_linear_layers` swaps, in place, every ``nn.Linear`` and
transformers ``Conv1D`` (GPT-2's linear, weight stored transposed) inside a model
for a :class:`PackedLinear` holding the same weight as a oneDNN tensor. The
swap replaces the module, so the dense copy of an untied weight is freed; a tied
output layer (GPT-2's ``lm_head`` shares the token embedding) keeps the embedding
and adds one packed copy (154 MB for GPT-2-small).

The swap is checked: each packed layer must reproduce the original on a probe
input to float rounding, else the original is kept. It changes rounding, not
results; the engine's batched-equals-sequential guarantee holds because every
forward, batched or alone, runs through the same packed layers.

Which layers run packed, and on how many threads, is chosen by measuring on
the machine at engine start (inference/layer_tuning.py); :func:`pack_linear_layers`
is the unmeasured "pack everything large enough" path (probes, tests).

Left out: bf16/int8 packing (they change the model's numbers, not just speed),
and GPU (cuBLAS needs no help).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_PROBE_ROWS = 3
# Smaller layers stay dense: oneDNN's per-call cost outweighs the gain. Measured on
# the built-in model (128-wide layers): 1.0 ms per 1-row step dense, 1.6 ms packed.
MIN_PACKED_WEIGHTS = 1 << 18
# Rows the weight layout is tuned for; 16 and 64 measured alike, 1 was 1.5x slower at 16.
PACK_ROWS = 16
_PROBE_TOLERANCE = 1e-3


class PackedLinear(nn.Module):
    """``y = x @ weight.T + bias`` with ``weight`` (out, in) reordered for oneDNN.

    The weight is reordered once into oneDNN's blocked layout for ``PACK_ROWS``
    input rows (the decode batch it is tuned for; it works for any row count),
    and the input stays a plain tensor, so a call costs no conversions.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        dense = contiguous_copy(weight.detach())
        self.register_buffer(
            "packed_weight", torch.ops.mkldnn._reorder_linear_weight(dense, PACK_ROWS)
        )
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(
            rows, self.packed_weight, self.bias, "none", [], ""
        )
        result: torch.Tensor = out.view(*x.shape[:-1], self.out_features)
        return result


def contiguous_copy(weight: torch.Tensor, block: int = 64) -> torch.Tensor:
    """``weight`` as a contiguous tensor; a transposed 2-D view copied ``block`` columns at a time.

    Why blocks: a transposed view's plain ``.contiguous()`` reads memory with a
    stride of a whole row; copying 64 source rows at a time keeps the reads within
    cache. GPT-2-small's 768x3072 transposed copy: 3.1-5.4 ms against 8.9 ms, and the
    start-up layer tuning makes three such copies of every ``Conv1D`` weight.
    """
    if weight.is_contiguous() or weight.dim() != 2 or weight.stride(0) != 1:
        return weight.contiguous()
    out = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    for start in range(0, weight.shape[1], block):
        out[:, start : start + block].copy_(weight[:, start : start + block])
    return out


def hold_weight(layer: nn.Module, weight: torch.Tensor) -> None:
    """Give ``layer`` its (out, in) ``weight`` contiguous: a contiguous parameter is
    shared, not copied (a tied embedding keeps one copy); anything else (a ``Conv1D``'s
    transposed view) becomes one contiguous copy in place of the original."""
    if isinstance(weight, nn.Parameter) and weight.is_contiguous():
        layer.weight = weight
    else:
        layer.register_buffer("weight", contiguous_copy(weight.detach()))


def packable(model: Any) -> bool:
    """True where packing is worth it: fp32 on CPU with oneDNN available."""
    try:
        parameter = next(model.parameters())
    except (StopIteration, AttributeError):
        return False
    return bool(
        torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and parameter.device.type == "cpu"
        and parameter.dtype == torch.float32
    )


def dense_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight as (out, in), bias) for the layer kinds we know, else None."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers' GPT-2 linear
        weight, bias = module.weight, module.bias
        if isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor):
            return weight.t(), bias
    return None


class WeightFirstLinear(nn.Module):
    """``y = (weight @ x.T).T + bias``: the weight, (out, in) and contiguous, as the left operand.

    Why: for the few rows of a decode batch, MKL's ``sgemm`` runs the product with
    the weight on the left (its rows become the long dimension, the batch the
    short one) markedly faster than ``x @ weight.T``: on a 2-core Xeon (AVX-512),
    16 rows against twelve 768x3072 weights 1.09 ms a layer against 1.49 dense
    and 1.13 oneDNN-packed, while one row stays near the dense call (0.61 against
    0.51-0.59 ms). It needs no packed copy: an ``nn.Linear`` (a tied output layer
    included) keeps its own weight; a transformers ``Conv1D`` (weight stored
    (in, out)) holds one transposed copy in place of the original.

    The result is the transpose of a contiguous (out, rows) product: a view, so
    the next layer's ``x.T`` is contiguous again. For more than one row its
    features are strided, which torch's fused CPU attention refuses: the plain
    GPT-2 step copies the query (inference/gpt2_decode.py). Left out: the same
    copy inside transformers' attention, so the model's own forward on these
    layers attends through the unfused math kernel; copying every layer's output
    instead cost the plain step 10% at 64 rows (docs/performance.md).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        hold_weight(self, weight)
        column = None if bias is None else bias.detach().reshape(-1, 1).clone()
        self.register_buffer("bias", column)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] == 1:  # a one-row decode step: a matrix-vector product, fewer ops
            return self._one_row(rows[0]).view(*x.shape[:-1], self.out_features)
        if self.bias is None:
            product = torch.mm(self.weight, rows.t())
        else:
            product = torch.addmm(self.bias, self.weight, rows.t())
        result: torch.Tensor = product.t().view(*x.shape[:-1], self.out_features)
        return result

    def _one_row(self, row: torch.Tensor) -> torch.Tensor:
        """The same product for one row, without the transposes and views around ``mm``:
        at one row a GPT-2-small step makes 49 of these calls, and each op saved is
        dispatcher time the one-client latency target has no room for."""
        if self.bias is None:
            return torch.mv(self.weight, row)
        return torch.addmv(self.bias.view(-1), self.weight, row)


class OneDnnLinear(nn.Module):
    """``y = x @ weight.T + bias`` through oneDNN's linear, over the plain (out, in) weight.

    Why: the same oneDNN kernel as :class:`PackedLinear`, but the weight is read in
    its own layout, so no second copy is made: a tied output layer keeps sharing the
    embedding's weight, which a packed copy cannot. On a 2-core AMD EPYC (AVX-512),
    GPT-2-small's 50257x768 output layer took 6.8 / 11.9 / 30.3 ms at 1 / 16 / 64
    rows this way, against 12.6 / 21.0 / 54.0 weight-first, whose MKL product is the
    slower one on that CPU (docs/performance.md, "The oneDNN layout"). A
    transformers ``Conv1D`` (weight stored (in, out)) holds one transposed copy in
    place of the original, as weight-first does.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        hold_weight(self, weight)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        out = torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, "none", [], "")
        result: torch.Tensor = out.view(*x.shape[:-1], self.out_features)
        return result


@torch.inference_mode()
def packed_if_equal(module: nn.Module) -> PackedLinear | None:
    found = dense_weight(module)
    return None if found is None else _if_equal(PackedLinear(*found), module)


@torch.inference_mode()
def weight_first_if_equal(module: nn.Module) -> WeightFirstLinear | None:
    found = dense_weight(module)
    return None if found is None else _if_equal(WeightFirstLinear(*found), module)


@torch.inference_mode()
def onednn_if_equal(module: nn.Module) -> OneDnnLinear | None:
    found = dense_weight(module)
    return None if found is None else _if_equal(OneDnnLinear(*found), module)


def _if_equal(candidate: Any, module: nn.Module) -> Any:
    """``candidate`` if it reproduces ``module`` on a probe input to float rounding, else None."""
    width = candidate.in_features
    probe = torch.randn(_PROBE_ROWS, width, generator=torch.Generator().manual_seed(0))
    expected = module(probe)
    if not torch.allclose(candidate(probe), expected, rtol=_PROBE_TOLERANCE, atol=_PROBE_TOLERANCE):
        return None
    return candidate


def pack_linear_layers(model: nn.Module, min_weights: int = MIN_PACKED_WEIGHTS) -> int:
    """Swap the model's linear layers for packed ones, in place; returns how many.

    Layers with fewer than ``min_weights`` weights stay as they are. A no-op (0)
    where :func:`packable` is false or the layers are packed already.
    """
    if not packable(model):
        return 0
    targets = [
        (parent, name, child)
        for parent in list(model.modules())
        for name, child in list(parent.named_children())
        if (found := dense_weight(child)) is not None and found[0].numel() >= min_weights
    ]
    if not targets:
        return 0
    own_weights_outside(model, {id(child) for _, _, child in targets})
    swapped = 0
    for parent, name, child in targets:
        packed = packed_if_equal(child)
        if packed is not None:
            setattr(parent, name, packed)
            swapped += 1
    return swapped


@torch.inference_mode()
def own_weights_outside(model: nn.Module, targets: set[int]) -> None:
    """Copy the weights that stay dense (embeddings, norms) into memory of their own.

    Why: weights loaded from safetensors are views into one mapping of the file,
    and its pages stay resident while any tensor views it. Copying the weights
    that stay dense first lets the mapping go once the last packed layer drops its
    original, so the dense originals do not stay resident next to their packed
    copies (GPT-2-small: 1.15 GB resident after packing instead of 1.47 GB).
    A tied output layer shares its weight with the embedding, which is copied.
    """
    for module in model.modules():
        if id(module) in targets:
            continue
        for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
            if tensor.layout == torch.strided:
                tensor.data = tensor.data.clone()
