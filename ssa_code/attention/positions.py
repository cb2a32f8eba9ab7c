"""Positions: rotary embeddings undone and redone, and the distances far tiers are shown at.

Keys reach the cache already rotated (RoPE) at their absolute position ``p``:
``k_p = R(p) k``. Rotations compose (``R(a) R(b) = R(a + b)``), so a key can be
un-rotated when it leaves the window (``R(-p) k_p``) and rotated again to any
*effective* position when it is attended.

Why: a model trained on ``L`` positions has never seen a query-key distance above ``L``.
Like InfLLM (Xiao et al., 2024, "InfLLM: Training-Free Long-Context Extrapolation for LLMs
with an Efficient Context Memory") we show every far-tier key (sinks, pinned, heavy
hitters, summaries, retrieved blocks) at a distance of at most ``far_distance`` from the
current chunk: ``eff = max(p, ref - far_distance)``. While the whole context fits the
trained range nothing moves (``eff == p``) and attention is exact.

Only the rotate-half convention of Llama, Qwen2, Qwen3 and Mistral is handled; the
rotation covers the first ``2 * len(inv_freq)`` channels (partial rotary factors).
"""

from __future__ import annotations

from typing import Any

import torch


def rope_parameters(model_config: Any) -> tuple[torch.Tensor, float]:
    """Inverse frequencies ``[D_rot / 2]`` (float32, CPU) and attention scaling of a model config.

    Uses transformers' own RoPE initialisers, so scaled variants (linear, llama3, yarn)
    get the same frequencies the model uses.
    """
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = getattr(model_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        base = params.get("rope_theta", getattr(model_config, "rope_theta", 10000.0))
        head_dim = getattr(model_config, "head_dim", None) or (
            model_config.hidden_size // model_config.num_attention_heads
        )
        factor = params.get("partial_rotary_factor", getattr(model_config, "partial_rotary_factor", 1.0))
        dim = int(head_dim * factor)
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        return inv_freq.float(), 1.0
    if rope_type == "dynamic":
        raise ValueError("rope_type 'dynamic' changes frequencies with length; SSA needs fixed frequencies")
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](model_config, torch.device("cpu"))
    return inv_freq.float(), float(scaling)


def rotate(x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate vectors by ``R(delta)`` in the rotate-half convention.

    Args:
        x: ``[..., N, D]`` keys (any float dtype).
        delta: ``[..., N]`` integer (or float) position offsets, broadcastable to ``x[..., 0]``.
        inv_freq: ``[D_rot / 2]`` float32 inverse frequencies on ``x.device``.

    Returns ``[..., N, D]`` in ``x.dtype``; the arithmetic is float32 (float64 for float64 input).
    """
    half = inv_freq.shape[0]
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    # Angles in float64 first: positions reach 1M and float32 would lose the low bits of p * f.
    angle = (delta.to(torch.float64)[..., None] * inv_freq.to(device=x.device, dtype=torch.float64)).to(work)
    cos, sin = angle.cos(), angle.sin()
    xf = x.to(work)
    x1, x2 = xf[..., :half], xf[..., half:2 * half]
    out = torch.empty_like(xf)
    out[..., :half] = x1 * cos - x2 * sin
    out[..., half:2 * half] = x2 * cos + x1 * sin
    if 2 * half < x.shape[-1]:
        out[..., 2 * half:] = xf[..., 2 * half:]
    return out.to(x.dtype)


def rotate_box(hi: torch.Tensor, lo: torch.Tensor, delta: torch.Tensor,
               inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of every vector of the box ``[lo, hi]`` (per channel) after rotation by ``R(delta)``.

    Each rotate-half channel pair ``(x, y)`` is a rectangle; a rotated rectangle's extreme in
    any channel is reached at a corner, so the new bounds are exact for the rectangle and
    conservative for the keys inside it. Shapes as in :func:`rotate`; returns ``(hi', lo')``.
    """
    half = inv_freq.shape[0]
    work = torch.float64 if hi.dtype == torch.float64 else torch.float32
    angle = (delta.to(torch.float64)[..., None] * inv_freq.to(device=hi.device, dtype=torch.float64)).to(work)
    cos, sin = angle.cos(), angle.sin()
    h, l = hi.to(work), lo.to(work)
    xh, yh, xl, yl = h[..., :half], h[..., half:2 * half], l[..., :half], l[..., half:2 * half]
    cpos, spos = cos >= 0, sin >= 0
    # x' = x cos - y sin;  y' = y cos + x sin: pick the corner that extremises each.
    out_h, out_l = h.clone(), l.clone()
    out_h[..., :half] = torch.where(cpos, xh, xl) * cos - torch.where(spos, yl, yh) * sin
    out_l[..., :half] = torch.where(cpos, xl, xh) * cos - torch.where(spos, yh, yl) * sin
    out_h[..., half:2 * half] = torch.where(cpos, yh, yl) * cos + torch.where(spos, xh, xl) * sin
    out_l[..., half:2 * half] = torch.where(cpos, yl, yh) * cos + torch.where(spos, xl, xh) * sin
    return out_h.to(hi.dtype), out_l.to(lo.dtype)


def effective_positions(pos: torch.Tensor, ref: int, far_distance: int) -> torch.Tensor:
    """Where far-tier keys are shown to queries starting at ``ref``: ``max(pos, ref - far_distance)``.

    ``pos`` holds true positions (``-1`` for empty slots, left as they are).
    """
    floor = ref - far_distance
    if floor <= 0:
        return pos
    return torch.where(pos >= 0, pos.clamp(min=floor), pos)


def default_far_distance(model_config: Any, chunk_size: int, rebase_every: int) -> int:
    """The farthest distance a far key may be shown at so no query leaves the trained range.

    Queries of a chunk sit up to ``chunk_size - 1`` (decode: ``rebase_every - 1``) past the
    reference the far keys were placed against.
    """
    trained = int(getattr(model_config, "max_position_embeddings", 4096) or 4096)
    return max(1, trained - max(chunk_size, rebase_every))
