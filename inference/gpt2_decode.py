"""GPT-2's decode step as plain torch calls over the engine's own cache.

Why: at one row a GPT-2-small decode step is memory-bound matrix multiplies
plus the Python of transformers' modules (mask building, cache bookkeeping,
attention dispatch, output objects), and on a 2-core CPU that Python is a
measurable share of the step, which the one-client latency target has no room
for (docs/performance.md, "One decode step without transformers' modules"
has the figures). This step calls the same layer objects the engine tuned
(inference/layer_tuning.py: packed, weight-first or dense), the model's
activation (torch's one-kernel GELU where the model's is its tanh approximation)
and layer norms' parameters, and writes the engine's
:class:`inference.kv_cache.GrowingLayer` caches in place, so it computes what
the model's forward computes (tested against it, padded batches included). Serving
systems do the same per model family (text-generation-inference's custom
modelling); transformers' forward stays the path for every other family and for
the prefill.

Left out on purpose: GPT-2 variants this step does not reproduce (attention
scaled by layer index, upcast-and-reorder attention, cross-attention); for those
:func:`gpt2_decode_step` returns ``None`` and the engine keeps the model's forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F

from inference.kv_cache import cache_layers

# "auto": the plain step where the model is one it reproduces; "model": always the
# model's own forward (to compare, or to rule the plain step out).
DecodeStep = Literal["auto", "model"]


class Gpt2DecodeStep:
    """``step(tokens, positions, mask, cache) -> logits`` for one new token per row."""

    def __init__(self, model: Any) -> None:
        config = model.config
        self._body = model.transformer
        self._head = model.lm_head
        self._width = int(config.n_embd)
        self._heads = int(config.n_head)
        self._eps = float(config.layer_norm_epsilon)
        self._activation = _fused_activation(config)

    def __call__(
        self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """Logits (B, vocab) for ``tokens`` (B, 1) at ``positions`` (B, 1).

        ``mask`` (B, T + 1) marks real tokens (1) and left padding (0), the new
        token's column included; ``cache`` (T columns) grows by one column per layer.
        """
        body, width = self._body, self._width
        x = body.wte(tokens) + body.wpe(positions)
        # None lets scaled_dot_product_attention take its fused kernel when no row is padded.
        attend = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        for block, layer in zip(body.h, cache_layers(cache), strict=True):
            x = self._block(block, layer, x, attend)
        x = F.layer_norm(x, (width,), body.ln_f.weight, body.ln_f.bias, self._eps)
        logits: torch.Tensor = self._head(x)[:, -1, :]
        return logits

    def _block(self, block: Any, layer: Any, x: torch.Tensor, attend: Any) -> torch.Tensor:
        width, heads, eps = self._width, self._heads, self._eps
        rows = x.shape[0]
        h = F.layer_norm(x, (width,), block.ln_1.weight, block.ln_1.bias, eps)
        q, k, v = block.attn.c_attn(h).view(rows, 1, 3, heads, width // heads).unbind(2)
        keys, values = layer.update(k.transpose(1, 2), v.transpose(1, 2))
        # A weight-first layer returns a transposed view (stride ``rows`` along the
        # features); the fused CPU attention kernel wants unit stride there and
        # otherwise falls back to the unfused math path, so q gets one small copy.
        query = q.transpose(1, 2).contiguous()
        attended = F.scaled_dot_product_attention(query, keys, values, attend)
        x = x + block.attn.c_proj(attended.transpose(1, 2).reshape(rows, 1, width))
        h = F.layer_norm(x, (width,), block.ln_2.weight, block.ln_2.bias, eps)
        hidden = block.mlp.c_fc(h)
        hidden = block.mlp.act(hidden) if self._activation is None else self._activation(hidden)
        out: torch.Tensor = x + block.mlp.c_proj(hidden)
        return out


# transformers' names for GELU's tanh approximation: its NewGELUActivation spells the
# formula out in eight tensor ops (and four scalar conversions) per call, where
# torch's fused kernel is one.
TANH_GELU = frozenset({"gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh"})


def _fused_activation(config: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torch's one-kernel tanh GELU where the model's activation is that function, else
    ``None`` (the model's own activation module is called)."""
    if getattr(config, "activation_function", None) in TANH_GELU:
        return functools.partial(F.gelu, approximate="tanh")
    return None


def model_decode_step(
    model: Any, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Any
) -> torch.Tensor:
    """The same step through the model's own forward: the fallback, and the reference."""
    out = model(
        input_ids=tokens,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,  # a transformers Cache: updated in place
        use_cache=True,
    )
    logits: torch.Tensor = out.logits[:, -1, :]
    return logits


def gpt2_decode_step(model: Any) -> Gpt2DecodeStep | None:
    """The plain step for a GPT-2 model it reproduces; ``None`` for anything else."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "gpt2":
        return None
    if (
        getattr(config, "scale_attn_by_inverse_layer_idx", False)
        or getattr(config, "reorder_and_upcast_attn", False)
        or getattr(config, "add_cross_attention", False)
        or not getattr(config, "scale_attn_weights", True)
    ):
        return None
    if not hasattr(model, "transformer") or not hasattr(model, "lm_head"):
        return None
    return Gpt2DecodeStep(model)
