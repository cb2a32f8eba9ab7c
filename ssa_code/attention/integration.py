"""Plugging SSA into transformers without touching any model's ``forward``.

transformers 5.x attention modules apply RoPE, call ``cache.update(key, value, layer_idx)``
and then the registered attention function with what ``update`` returned. The function
is not handed the cache, so :meth:`SSALayer.update` leaves the layer in a thread-local
hand-off slot (``handoff.py``) together with the exact key tensor it returned;
:func:`ssa_attention` accepts the hand-off only for that tensor. Anything else (no cache, another cache
class) falls back to PyTorch SDPA, i.e. dense attention.

Tested with transformers 5.17 (``update(key, value, layer_idx)``), 5.24 and 5.25 (``update`` gets
``kwargs``) on the Llama, Mistral, Qwen2 and Qwen3 families.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ssa_code.attention import handoff
from ssa_code.attention.cache import SUPPORTED_FAMILIES, SSACache, check_family
from ssa_code.attention.config import SSAConfig

ATTN_NAME = "ssa"

def ssa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The function registered as ``attn_implementation="ssa"``.

    Args:
        query: ``[1, Hq, M, D]``; key, value: ``[1, Hkv, M, D]`` (the chunk only).
    Returns ``([1, M, Hq, D], None)`` like transformers' own attention functions.
    """
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    layer = handoff.take(key)
    if layer is None:
        return _dense_fallback(query, key, value, attention_mask, scale)
    layer.cache.check_model(module.config)
    out = layer.attend(query[0], scale)  # [Hq, M, D]
    return out.transpose(0, 1).unsqueeze(0), None


def _dense_fallback(query, key, value, attention_mask, scale):
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    causal = attention_mask is None and query.shape[2] > 1
    mask = None
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=causal, scale=scale)
    return out.transpose(1, 2).contiguous(), None


def ssa_mask(*args: Any, **kwargs: Any) -> None:
    """SSA builds causality itself (chunk-causal, tiers fully visible): no mask tensor."""
    return None


_registered = False


def register() -> None:
    """Register ``"ssa"`` with transformers' attention and mask interfaces (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, ssa_attention)
    AttentionMaskInterface.register(ATTN_NAME, ssa_mask)
    _registered = True


def patch(model: torch.nn.Module, ssa_config: SSAConfig | None = None) -> torch.nn.Module:
    """Switch ``model`` to SSA attention and return it.

    The model's own modules are untouched: only ``attn_implementation`` changes. Fill an
    :class:`SSACache` built from ``model.config`` and the same ``ssa_config``.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("patch() needs a transformers model with a .config")
    check_family(config)
    if ssa_config is not None and not isinstance(ssa_config, SSAConfig):
        raise ValueError(f"ssa_config must be an SSAConfig, got {type(ssa_config).__name__}")
    register()
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(ATTN_NAME)
    else:  # pragma: no cover - older transformers
        config._attn_implementation = ATTN_NAME
    model.ssa_config = ssa_config or SSAConfig()
    return model


__all__ = ["patch", "register", "ssa_attention", "SSACache", "SUPPORTED_FAMILIES"]
