"""Choose each linear-layer shape's layout and thread count by measuring here, as served.

Why measure at start: which matrix-multiply layout is fastest depends on the CPU,
its core count and the torch/oneDNN build, and a choice measured on one machine is
a guess on the next. Four layouts (inference/packed_linear.py): ``dense`` (the
model's own call, MKL), ``packed`` (oneDNN's blocked weight), ``weight-first``
(the weight as the left operand) and ``onednn`` (oneDNN over the plain weight).
On a 2-core Xeon (AVX-512) a GPT-2-small decode step at 1 row was fastest dense
and slowest packed, and at 16 rows the reverse, with weight-first close to the
best at both; an AMD EPYC ranked them otherwise.

How: the model's linear layers are called in the model's order, with every layer
of a shape set to one candidate, once at each of ``rows`` input rows, and each call
is timed; a shape's time under a candidate, at each row count, is its layers' summed
time. Run in order over all the real layers, each weight comes from memory as it
does when serving; one layer timed over and over sits in cache and misleads.

Candidates: the layouts on all of torch's threads, then, for the layout each shape
got, 1 and half of the threads. Only layers of at least ``MIN_PACKED_WEIGHTS``
weights may be packed (below it oneDNN's per-call cost outweighs its gain), and,
under "measure", never a tied layer (GPT-2's output layer shares the token
embedding's weight: a packed copy cannot replace it, so it would be held twice, 0.14
GiB more; weight-first and onednn share it). The layout of lowest relative cost
wins: at each row count, its time over the fastest candidate's there, summed over
the row counts, so every batch size counts alike (summed milliseconds would let the
largest batch decide alone). To replace the default (weight-first: no copy held
twice) a layout must cost ``MARGIN`` less, and where only one round was timed, the
default is timed again first, since a slow pass only makes a layout look slower.
Fewer threads need the same margin. Both are for costs a per-shape timing cannot
see: idle pool threads must be woken for the next layer, and a layout changes what
the next layer is given (a packed layer's output is contiguous, a weight-first
one's a transposed view; docs/performance.md, "The layout margin").

Cost: the layouts are timed in ``ROUNDS`` rounds, one after another; in each, at
each row count, a layout gets one warm-up pass and ``PASSES`` timed passes, and
its best pass over the rounds counts. Rounds, not passes back to back: a shared
machine has slow stretches of a second or more (another tenant, the host), and
passes back to back fall in the same stretch, so a layout timed during it looks
slow in every pass and loses for the server's lifetime (docs/performance.md,
"The layer choice, timed in rounds"). Seconds apart, one stretch rarely
slows a layout in both rounds. Once ``BUDGET_S`` is spent, no further round or
thread count starts, so a large model's start-up stays bounded. The first round
times every layout even then: one left untimed cannot be chosen, so the choice
would depend on how slow the machine was that day.
Candidates are built for one layout at a time and dropped after timing, so at
most one layout's copies are held beside the model.

Left out: per-layer (rather than per-shape) choices, attention and layer-norm
kernels, and GPU (nothing to choose: cuBLAS).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
from torch import nn

from inference.packed_linear import (
    MIN_PACKED_WEIGHTS,
    OneDnnLinear,
    PackedLinear,
    WeightFirstLinear,
    dense_weight,
    onednn_if_equal,
    own_weights_outside,
    packable,
    packed_if_equal,
    weight_first_if_equal,
)

Layout = Literal["packed", "dense", "weight-first", "onednn"]
LAYOUTS: tuple[Layout, ...] = ("weight-first", "dense", "packed", "onednn")
# "measure": choose by timing here; a layout's name: force it on all threads (tests pin
# the fast path they check; an operator can rule a layout out).
LayerPolicy = Literal["measure", "packed", "dense", "weight-first", "onednn"]
POLICIES: tuple[LayerPolicy, ...] = ("measure", *LAYOUTS)
DEFAULT_LAYOUT: Layout = "weight-first"
PASSES = 1
ROUNDS = 2
MARGIN = 0.9
# After this much measuring no further round or thread count starts: on an
# oversubscribed machine every timing is slow, and start-up must stay short.
BUDGET_S = 6.0
# Each layout but dense: the module that runs it, and how one is built from a layer
# (None where it does not reproduce the layer).
_KINDS: dict[Layout, type[nn.Module]] = {
    "packed": PackedLinear,
    "weight-first": WeightFirstLinear,
    "onednn": OneDnnLinear,
}
_BUILDERS: dict[Layout, Callable[[nn.Module], nn.Module | None]] = {
    "packed": packed_if_equal,
    "weight-first": weight_first_if_equal,
    "onednn": onednn_if_equal,
}
log = logging.getLogger(__name__)
Candidate = tuple[Layout, int]
# A candidate's ms per row count, in the order of the rows it was timed at.
Timings = dict[Candidate, tuple[float, ...]]


@dataclass(frozen=True)
class LayerChoice:
    """What one weight shape runs as, and the timings it was chosen by (ms per row count)."""

    shape: str  # "out x in"
    layers: int
    layout: Layout
    threads: int
    timings_ms: dict[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Slot:
    """One linear layer where it sits: ``parent.name`` is ``layer``."""

    parent: nn.Module
    name: str
    layer: nn.Module
    shape: str
    width: int
    may_pack: bool


class ThreadCapped(nn.Module):
    """Runs ``inner`` on ``threads`` torch threads and restores the count after."""

    def __init__(self, inner: nn.Module, threads: int) -> None:
        super().__init__()
        self.inner = inner
        self.threads = threads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        previous = torch.get_num_threads()
        use_threads(self.threads)
        try:
            result: torch.Tensor = self.inner(x)
        finally:
            use_threads(previous)
        return result


def use_threads(count: int) -> None:
    """Set torch's thread count, only if it changes.

    Why only then: every ``torch.set_num_threads`` call also sizes torch's global
    pthreadpool (QNNPACK/XNNPACK), creating it on the first call; created at more
    than one thread, its worker outlives the engine's thread
    (tests/inference/test_compute_thread.py counts threads).
    """
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def thread_options(threads: int) -> list[int]:
    """1, half and all of ``threads``: the counts worth a timing."""
    return sorted({1, max(1, threads // 2), threads})


def tune_linear_layers(
    model: nn.Module, rows: Sequence[int], policy: LayerPolicy = "measure"
) -> list[LayerChoice]:
    """Choose per shape, swap the model's layers in place accordingly; returns the choices.

    Empty where :func:`packed_linear.packable` is false (GPU, not fp32): the
    model is left as it is.
    """
    if not packable(model):
        return []
    started, full = time.perf_counter(), torch.get_num_threads()
    deadline = started + BUDGET_S
    slots = linear_slots(model, packing_tied=policy != "measure")
    timings: dict[str, Timings] = {slot.shape: {} for slot in slots}
    measuring = policy == "measure"
    try:
        if measuring:
            measure_layouts(slots, rows, full, deadline, timings)
        forced = None if measuring else cast(Layout, policy)
        plans = {
            shape: forced or _choose(measured, (DEFAULT_LAYOUT, full))[0]
            for shape, measured in timings.items()
        }
        layers = _swap_layouts(model, slots, plans)
        threads = dict.fromkeys(plans, full)
        if measuring:
            threads = _measure_threads(slots, layers, plans, rows, full, deadline, timings)
    finally:
        use_threads(full)
    choices = _cap_threads(slots, layers, plans, threads, full, timings)
    log.info(
        "layer choice (%s, rows %s) in %.0f ms: %s",
        policy, list(rows), 1000 * (time.perf_counter() - started),
        ", ".join(f"{c.shape} x{c.layers} {c.layout}/{c.threads}t" for c in choices),
    )  # fmt: skip
    for c in choices:
        log.info("layer %s timings (ms): %s", c.shape, c.timings_ms)
    return choices


def linear_slots(model: nn.Module, packing_tied: bool) -> list[_Slot]:
    """The model's linear layers in call order (module order, as transformers' models run)."""
    tied = tied_layers(model)
    slots = []
    for path, child in model.named_modules():
        found = dense_weight(child)
        if found is None or not path:
            continue
        parent_path, _, name = path.rpartition(".")
        out, inp = (int(n) for n in found[0].shape)
        may_pack = out * inp >= MIN_PACKED_WEIGHTS and (packing_tied or id(child) not in tied)
        parent = model.get_submodule(parent_path)
        slots.append(_Slot(parent, name, child, f"{out}x{inp}", inp, may_pack))
    return slots


@torch.inference_mode()
def measure_layouts(
    slots: Sequence[_Slot],
    rows: Sequence[int],
    threads: int,
    deadline: float,
    timings: dict[str, Timings],
) -> None:
    """Time every layout on ``threads`` threads into ``timings`` (per shape, ms per row count).

    Every layout is timed in the first round; a later round starts only before
    ``deadline``. Each layout's copies are dropped once timed, so start-up holds at
    most one layout's copies beside the model.
    """
    rounds = 0
    for _ in range(ROUNDS):
        if rounds and time.perf_counter() > deadline:
            break
        for layout in LAYOUTS:
            _time_layout(slots, layout, rows, threads, timings, deadline, keep_best=rounds > 0)
        rounds += 1
    default = (DEFAULT_LAYOUT, threads)
    if rounds == 1 and any(_choose(measured, default) != default for measured in timings.values()):
        # Timed in one round only (the budget ran out), the default is timed again
        # before it is left: one slow pass set must not decide a layout on its own.
        _time_layout(slots, DEFAULT_LAYOUT, rows, threads, timings, deadline, keep_best=True)


def _time_layout(
    slots: Sequence[_Slot],
    layout: Layout,
    rows: Sequence[int],
    threads: int,
    timings: dict[str, Timings],
    deadline: float,
    keep_best: bool,
) -> None:
    """Time ``layout`` (built for every slot, dropped after) into ``timings``."""
    built = [(slot.shape, _built(slot, layout), slot.width) for slot in slots]
    calls = [(shape, layer, width) for shape, layer, width in built if layer is not None]
    for shape, ms in _timed_passes(calls, rows, threads, deadline).items():
        earlier = timings[shape].get((layout, threads), ms) if keep_best else ms
        timings[shape][(layout, threads)] = tuple(map(min, ms, earlier))


@torch.inference_mode()
def _measure_threads(
    slots: Sequence[_Slot],
    layers: Sequence[nn.Module],
    plans: dict[str, Layout],
    rows: Sequence[int],
    full: int,
    deadline: float,
    timings: dict[str, Timings],
) -> dict[str, int]:
    """Time the swapped-in layers on fewer threads; per shape, the count to run on."""
    calls = [(slot.shape, layer, slot.width) for slot, layer in zip(slots, layers, strict=True)]
    for count in reversed(thread_options(full)[:-1]):
        if time.perf_counter() > deadline:
            break
        for shape, ms in _timed_passes(calls, rows, count, deadline).items():
            timings[shape][(plans[shape], count)] = ms
    return {
        shape: _choose(timings[shape], (layout, full))[1]
        if (layout, full) in timings[shape] else full
        for shape, layout in plans.items()
    }  # fmt: skip


def _built(slot: _Slot, layout: Layout) -> nn.Module | None:
    """``slot``'s layer in ``layout``; None where that layout is not allowed or differs."""
    if layout == "dense":
        return slot.layer
    return _BUILDERS[layout](slot.layer) if _replaces(layout, slot) else None


def _timed_passes(
    calls: Sequence[tuple[str, Callable[[torch.Tensor], torch.Tensor], int]],
    rows: Sequence[int],
    threads: int,
    deadline: float = float("inf"),
) -> dict[str, tuple[float, ...]]:
    """ms per shape at each of ``rows``: the best of ``PASSES`` passes at that count.

    A pass runs every call once at one row count, as a forward at one batch size
    does; the first pass at each count is a warm-up (allocations, pool start).
    Past ``deadline``, one timed pass per row count is enough (a large model's
    start-up stays bounded).
    """
    use_threads(threads)
    per_count: dict[str, list[float]] = {}
    for count in rows:
        inputs = {width: torch.randn(count, width) for _, _, width in calls}
        best: dict[str, float] = {}
        for index in range(PASSES + 1):
            spent: dict[str, float] = {}
            for shape, layer, width in calls:
                begun = time.perf_counter()
                layer(inputs[width])
                spent[shape] = spent.get(shape, 0.0) + time.perf_counter() - begun
            if index:
                best = {k: min(best.get(k, float("inf")), 1000 * v) for k, v in spent.items()}
                if time.perf_counter() > deadline:
                    break
        for shape, ms in best.items():
            per_count.setdefault(shape, []).append(ms)
    return {shape: tuple(ms) for shape, ms in per_count.items()}


def relative_costs(timings: Timings) -> dict[Candidate, float]:
    """Per candidate: at each row count its time over the fastest candidate's, summed."""
    counts = range(min(len(ms) for ms in timings.values()))
    floors = [max(min(ms[i] for ms in timings.values()), 1e-9) for i in counts]
    return {c: sum(ms[i] / floors[i] for i in counts) for c, ms in timings.items()}


def _choose(timings: Timings, default: Candidate, margin: float = MARGIN) -> Candidate:
    """The candidate of lowest relative cost if it beats ``default``'s by ``margin``;
    else ``default``."""
    if default not in timings:
        return default
    cost = relative_costs(timings)
    best = min(cost, key=cost.__getitem__)
    return best if cost[best] < margin * cost[default] else default


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


def _swap_layouts(
    model: nn.Module,
    slots: Sequence[_Slot],
    plans: dict[str, Layout],
) -> list[nn.Module]:
    """Swap each layer for its shape's planned layout; the layers now in place, in order.

    A layer stays dense where its layout is not allowed (packing a small or, under
    "measure", a tied layer) or would not reproduce it.
    """
    replaced = {id(s.layer) for s in slots if _replaces(plans[s.shape], s)}
    if replaced:
        own_weights_outside(model, replaced)
    layers = []
    for slot in slots:
        layout = plans[slot.shape]
        built = _built(slot, layout)
        layer = slot.layer if built is None else built
        if layer is not slot.layer:
            setattr(slot.parent, slot.name, layer)
        layers.append(layer)
    return layers


def _cap_threads(
    slots: Sequence[_Slot],
    layers: Sequence[nn.Module],
    plans: dict[str, Layout],
    threads: dict[str, int],
    full: int,
    timings: dict[str, Timings],
) -> list[LayerChoice]:
    """Wrap the layers of shapes chosen to run on fewer threads; one choice per shape."""
    kinds: dict[str, set[Layout]] = {}
    for slot, layer in zip(slots, layers, strict=True):
        kinds.setdefault(slot.shape, set()).add(_layout_of(layer))
        if threads[slot.shape] != full:
            setattr(slot.parent, slot.name, ThreadCapped(layer, threads[slot.shape]))
    return [
        LayerChoice(
            shape,
            sum(s.shape == shape for s in slots),
            layout if kinds[shape] == {layout} else "dense",
            threads[shape],
            {
                f"{lay}/{n}t": tuple(round(t, 3) for t in ms)
                for (lay, n), ms in timings[shape].items()
            },
        )
        for shape, layout in plans.items()
    ]


def _layout_of(layer: nn.Module) -> Layout:
    return next((layout for layout, kind in _KINDS.items() if type(layer) is kind), "dense")


def _replaces(layout: Layout, slot: _Slot) -> bool:
    """Whether ``layout`` swaps a module in: every layout but dense, packed only where allowed."""
    return layout != "dense" and (layout != "packed" or slot.may_pack)
