"""The running batch's key/value cache: left-padded rows that grow in place.

Why not transformers' DynamicLayer as is: it concatenates on every decode step,
copying the whole cache each time; :class:`GrowingLayer` keeps spare columns and
copies only when they run out. Rows join (left-padded to a common width) and leave
(dropped, with all-padding columns trimmed) through :func:`append_rows` and
:func:`keep_rows`, which the running batch calls (inference/running_batch.py).

How many spare columns: at most what the batch can still use (the running batch
passes its longest remaining generation), capped at ``SPARE_COLUMNS``. Spare columns are
memory held for every row of every layer: with a fixed 64 spare, 64 GPT-2-small
sequences of 48 tokens held 0.53 GB of cache instead of 0.23 GB, and the
benchmark's peak RSS at 64 clients was 1.84 GiB instead of the 1.46 the memory
target allows (docs/performance.md).

Left out: sliding-window and quantised caches (models needing them are not
supported by this engine).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

SPARE_COLUMNS = 64


class GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A KV cache layer with spare columns, so a decode step writes in place.

    transformers' DynamicLayer concatenates on every step, copying the whole cache
    each time; here the copy happens only every ``SPARE_COLUMNS`` steps.
    """

    def __init__(
        self, keys: torch.Tensor, values: torch.Tensor, spare: int = SPARE_COLUMNS
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.reset_to(keys, values, spare)

    def reset_to(
        self, keys: torch.Tensor, values: torch.Tensor, spare: int = SPARE_COLUMNS
    ) -> None:
        """Hold ``keys``/``values`` in new buffers with ``spare`` (capped) empty columns."""
        batch, heads, length, dim = keys.shape
        shape = (batch, heads, length + max(1, min(spare, SPARE_COLUMNS)), dim)
        self._k = keys.new_empty(shape)
        self._v = values.new_empty((*shape[:3], values.shape[-1]))
        self._k[:, :, :length] = keys
        self._v[:, :, :length] = values
        self._length = length
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._expose()

    def _expose(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Publish the filled part where transformers reads it; returns it too."""
        keys, values = self.current()
        self.keys, self.values = keys, values
        return keys, values

    @property
    def capacity(self) -> int:
        """Columns the buffers hold: filled and spare."""
        return int(self._k.shape[2])

    def current(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled part of the buffers (views, no copy)."""
        return self._k[:, :, : self._length], self._v[:, :, : self._length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self._length + key_states.shape[-2]
        if end > self._k.shape[2]:  # out of spare columns: one copy into a larger buffer
            if key_states.shape[-2] > SPARE_COLUMNS:
                keys, values = self.current()
                self.reset_to(
                    torch.cat([keys, key_states], dim=-2),
                    torch.cat([values, value_states], dim=-2),
                )
                return self.current()
            self.reset_to(*self.current())
        columns = end - self._length
        self._k.narrow(2, self._length, columns).copy_(key_states)
        self._v.narrow(2, self._length, columns).copy_(value_states)
        self._length = end
        return self._expose()


def cache_layers(cache: Any, spare: int = SPARE_COLUMNS) -> list[GrowingLayer]:
    """The cache's layers, converted in place to :class:`GrowingLayer` on first use."""
    layers: list[GrowingLayer] = []
    for index, layer in enumerate(cache.layers):
        if not isinstance(layer, GrowingLayer):
            layer = GrowingLayer(layer.keys, layer.values, spare)
            cache.layers[index] = layer
        layers.append(layer)
    return layers


def pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def keep_rows(
    cache: Any, mask: torch.Tensor, index: torch.Tensor, spare: int = SPARE_COLUMNS
) -> torch.Tensor:
    """Keep rows ``index`` of ``cache`` in place, trim all-padding columns; the new mask."""
    mask = mask.index_select(0, index)
    start = int((mask.cumsum(dim=1) == 0).sum(dim=1).min().item())  # all-padding columns
    for layer in cache_layers(cache):
        keys, values = layer.current()
        layer.reset_to(
            keys.index_select(0, index)[:, :, start:],
            values.index_select(0, index)[:, :, start:],
            spare,
        )
    return mask[:, start:]


def append_rows(
    batch_cache: Any,
    batch_mask: torch.Tensor | None,
    cache: Any,
    mask: torch.Tensor,
    rows: list[int],
    spare: int = SPARE_COLUMNS,
) -> tuple[Any, torch.Tensor]:
    """Rows ``rows`` of a prefilled ``cache`` appended below the batch's; its cache and mask.

    Both sides are left-padded to a common width, so every row's real tokens end
    at the last column. With no running batch (``batch_cache`` None), the
    prefilled rows become the batch. A prefill row left out of ``rows`` (it
    finished at its first token) is dropped.
    """
    index = torch.tensor(rows, dtype=torch.long, device=mask.device)
    new_mask = mask.index_select(0, index)
    new_layers = cache_layers(cache, spare)
    if len(rows) < mask.shape[0]:
        for layer in new_layers:
            keys, values = layer.current()
            layer.reset_to(keys.index_select(0, index), values.index_select(0, index), spare)
    if batch_cache is None or batch_mask is None:
        return cache, new_mask
    width = max(batch_mask.shape[1], new_mask.shape[1])
    for old, new in zip(cache_layers(batch_cache), new_layers, strict=True):
        (old_k, old_v), (new_k, new_v) = old.current(), new.current()
        old.reset_to(
            torch.cat([pad_left(old_k, width, 2), pad_left(new_k, width, 2)]),
            torch.cat([pad_left(old_v, width, 2), pad_left(new_v, width, 2)]),
            spare,
        )
    return batch_cache, torch.cat([pad_left(batch_mask, width, 1), pad_left(new_mask, width, 1)])
