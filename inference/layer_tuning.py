"""Choose packed or dense weights, and a thread count, per linear-layer shape, by measuring here.

Why measure at start: oneDNN-packed weights (inference/packed_linear.py) beat
MKL's dense ``addmm`` by 15-30% on this project's AVX-512 runners, but an AVX2
CPU, another core count or another oneDNN build may answer differently, and a
choice measured on one machine is a guess on the next. So when the engine
starts, each distinct weight shape (GPT-2-small has five: 12 layers share each
of four, plus the output layer) is timed in every candidate configuration, at
one input row and at the decode batch's rows, and the fastest wins.

Candidates: packed or dense layout (layers under ``MIN_PACKED_WEIGHTS`` weights
stay dense: oneDNN's per-call cost outweighs its gain there; so does a tied
layer, see below), times thread
counts 1, half and all of torch's threads. A configuration other than the
default (packed where allowed, all threads) must be at least ``MARGIN`` faster
to be chosen: a layer run on fewer threads leaves the pool's other threads idle,
and waking them for the next layer costs time this isolated timing cannot see.

Cost: each candidate is timed ``REPEATS`` times after one warm-up call and the
best is kept (robust to a preempted call); a layer wider than ``PROBE_OUT``
outputs (GPT-2's 50257-row output layer) is timed on a slice of its rows, and
past ``BUDGET_S`` of measuring the remaining shapes take the default unmeasured.

Tied layers (GPT-2's output layer shares the token embedding's weight): a packed
copy cannot replace the weight, since the embedding still reads it, so packing
would hold the weight twice (0.14 GiB more for GPT-2-small). Measuring trades
time only, not memory, so under "measure" a tied layer stays dense (dense
layouts still choose their thread count); ``--layer-policy packed`` still packs it.
With the copy, peak RSS at 64 clients was 1.48-1.49 GiB against the 1.46 that
the memory target allows (docs/performance.md).

Left out: per-layer (rather than per-shape) choices, attention and layer-norm
kernels, and GPU (nothing to choose: cuBLAS).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from inference.packed_linear import (
    MIN_PACKED_WEIGHTS,
    PackedLinear,
    dense_weight,
    own_weights_outside,
    packable,
    packed_if_equal,
)

Layout = Literal["packed", "dense"]
# "measure": choose by timing here; "packed"/"dense": force a layout on all threads
# (tests pin the fast path they check; an operator can rule a layout out).
LayerPolicy = Literal["measure", "packed", "dense"]
POLICIES: tuple[LayerPolicy, ...] = ("measure", "packed", "dense")
REPEATS = 3
MARGIN = 0.9
# A wider layer is timed on its first PROBE_OUT output rows: a matmul's time grows
# linearly in them, and GPT-2's 50257-row output layer would cost more than all others.
PROBE_OUT = 4096
# Past this much measuring, the remaining shapes take the default unmeasured (and say
# so): on an oversubscribed machine every timing is slow, and start-up must stay short.
BUDGET_S = 1.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerChoice:
    """What one weight shape runs as, and the timings it was chosen by (ms, summed over rows)."""

    shape: str  # "out x in"
    layers: int
    layout: Layout
    threads: int
    timings_ms: dict[str, float] = field(default_factory=dict)


class ThreadCapped(nn.Module):
    """Runs ``inner`` on ``threads`` torch threads and restores the count after."""

    def __init__(self, inner: nn.Module, threads: int) -> None:
        super().__init__()
        self.inner = inner
        self.threads = threads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            result: torch.Tensor = self.inner(x)
        finally:
            torch.set_num_threads(previous)
        return result


def thread_options(threads: int) -> list[int]:
    """1, half and all of ``threads``: the counts worth a timing."""
    return sorted({1, max(1, threads // 2), threads})


def _best_ms(layer: nn.Module, x: torch.Tensor, threads: int, deadline: float) -> float:
    """Best of ``REPEATS`` timed calls after a warm-up; past ``deadline``, of those made."""
    torch.set_num_threads(threads)
    layer(x)
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        layer(x)
        best = min(best, time.perf_counter() - started)
        if started > deadline:
            break
    return 1000 * best


@torch.inference_mode()
def _measure(
    module: nn.Module,
    packed: PackedLinear | None,
    width: int,
    rows: Sequence[int],
    threads: Sequence[int],
    deadline: float,
) -> dict[tuple[Layout, int], float]:
    """ms (summed over ``rows`` input rows of ``width``) per (layout, threads) candidate."""
    inputs = [torch.randn(n, width) for n in rows]
    layers: list[tuple[Layout, nn.Module]] = [("dense", module)]
    if packed is not None:
        layers.append(("packed", packed))
    timings = {}
    for (layout, layer), count in itertools.product(layers, threads):
        timings[(layout, count)] = sum(_best_ms(layer, x, count, deadline) for x in inputs)
    return timings


def _choose(
    timings: dict[tuple[Layout, int], float], default: tuple[Layout, int]
) -> tuple[Layout, int]:
    fastest = min(timings, key=timings.__getitem__)
    return fastest if timings[fastest] < MARGIN * timings[default] else default


def tune_linear_layers(
    model: nn.Module, rows: Sequence[int], policy: LayerPolicy = "measure"
) -> list[LayerChoice]:
    """Choose per shape, swap the model's layers in place accordingly; returns the choices.

    Empty where :func:`packed_linear.packable` is false (GPU, not fp32): the
    model is left as it is.
    """
    if not packable(model):
        return []
    groups: dict[tuple[int, int], list[tuple[nn.Module, str, nn.Module]]] = {}
    tied = tied_layers(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            found = dense_weight(child)
            if found is not None:
                out, inp = found[0].shape
                groups.setdefault((int(out), int(inp)), []).append((parent, name, child))
    full, started = torch.get_num_threads(), time.perf_counter()
    plans: list[tuple[LayerChoice, list[tuple[nn.Module, str, nn.Module]]]] = []
    try:
        for (out, inp), members in groups.items():
            late = policy == "measure" and time.perf_counter() > started + BUDGET_S
            may_pack = not (policy == "measure" and any(id(c) in tied for _, _, c in members))
            plan = _plan(out, inp, members, rows, "packed" if late else policy, full, started,
                         may_pack)  # fmt: skip
            plans.append((plan, members))
    finally:
        torch.set_num_threads(full)
    packed_ids = {id(c) for choice, ms in plans if choice.layout == "packed" for _, _, c in ms}
    if packed_ids:
        own_weights_outside(model, packed_ids)
    choices = [_apply(choice, members, full) for choice, members in plans]
    log.info(
        "layer choice (%s, rows %s) in %.0f ms: %d of %d linear layers packed",
        policy, list(rows), 1000 * (time.perf_counter() - started),
        sum(c.layers for c in choices if c.layout == "packed"), sum(c.layers for c in choices),
    )  # fmt: skip
    for c in choices:
        log.info("layer %s x%d: %s, %d threads %s", c.shape, c.layers, c.layout, c.threads,
                 c.timings_ms)  # fmt: skip
    return choices


def _plan(
    out: int,
    inp: int,
    members: list[tuple[nn.Module, str, nn.Module]],
    rows: Sequence[int],
    policy: LayerPolicy,
    full: int,
    started: float,
    may_pack: bool = True,
) -> LayerChoice:
    allowed = may_pack and policy != "dense" and out * inp >= MIN_PACKED_WEIGHTS
    default: tuple[Layout, int] = ("packed" if allowed else "dense", full)
    if policy != "measure":
        return LayerChoice(f"{out}x{inp}", len(members), *default)
    probe, packed = _probes(members[0][2], allowed)
    if packed is None:
        default = ("dense", full)
    timings = _measure(probe, packed, inp, rows, thread_options(full), started + BUDGET_S)
    layout, threads = _choose(timings, default)
    shown = {f"{lay}/{n}t": round(ms, 3) for (lay, n), ms in timings.items()}
    return LayerChoice(f"{out}x{inp}", len(members), layout, threads, shown)


def tied_layers(model: nn.Module) -> set[int]:
    """ids of the linear layers whose weight another kind of module also holds (an embedding)."""
    held_elsewhere = {
        tensor.data_ptr()
        for module in model.modules()
        if dense_weight(module) is None
        for tensor in module.parameters(recurse=False)
    }
    return {
        id(module)
        for module in model.modules()
        if (found := dense_weight(module)) is not None and found[0].data_ptr() in held_elsewhere
    }


@torch.inference_mode()
def _probes(module: nn.Module, allowed: bool) -> tuple[nn.Module, PackedLinear | None]:
    """(dense layer to time, packed layer to time or None); sliced to ``PROBE_OUT`` rows.

    An unsliced packed probe must reproduce the layer (else packing is ruled
    out); a sliced one is checked when the layers are swapped (:func:`_apply`).
    """
    found = dense_weight(module)
    assert found is not None
    weight, bias = found
    if weight.shape[0] <= PROBE_OUT:
        return module, packed_if_equal(module) if allowed else None
    part = weight[:PROBE_OUT].contiguous()
    part_bias = None if bias is None else bias[:PROBE_OUT].contiguous()
    return _DenseProbe(part, part_bias), PackedLinear(part, part_bias) if allowed else None


class _DenseProbe(nn.Module):
    """``nn.Linear``'s computation on a weight slice (plain tensors: timing only)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


def _apply(
    choice: LayerChoice, members: list[tuple[nn.Module, str, nn.Module]], full: int
) -> LayerChoice:
    """Swap each layer of ``choice``'s shape; a layer whose packed copy differs stays dense."""
    layout = choice.layout
    for parent, name, child in members:
        layer: nn.Module = child
        if layout == "packed":
            packed = packed_if_equal(child)
            layer = packed if packed is not None else child
        if choice.threads != full:
            layer = ThreadCapped(layer, choice.threads)
        if layer is not child:
            setattr(parent, name, layer)
    return choice
