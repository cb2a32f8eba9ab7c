"""Chunked prefill: a long token sequence through the model into an SSACache, one chunk at a time.

The model never holds more than the fixed SSA state plus one chunk's activations, so a
1M-token context needs the memory of a ``chunk_size`` one.
"""

from __future__ import annotations

import inspect
from typing import Callable, Iterable

import torch

from ssa_code.attention.cache import SSACache
from ssa_code.attention.integration import ATTN_NAME

ProgressFn = Callable[[int, int], None]


def _cache_kwarg(model: torch.nn.Module) -> str:
    """``cache`` on transformers >= 5.24 (``past_key_values`` is deprecated there), else ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward_chunk(model: torch.nn.Module, cache: SSACache, ids: torch.Tensor, start: int,
                  logits: bool = True) -> torch.Tensor | None:
    """Run ``ids [1, M]`` at positions ``start ..`` through the model into ``cache``.

    Returns the logits of the last position ``[1, V]`` (float32) when ``logits`` is set.
    """
    m = ids.shape[1]
    positions = torch.arange(start, start + m, device=ids.device)
    kwargs = {_cache_kwarg(model): cache}
    if logits:
        out = model(input_ids=ids, position_ids=positions[None], use_cache=True, logits_to_keep=1, **kwargs)
        return out.logits[:, -1].float()
    inner = getattr(model, "model", None)
    if inner is None:
        model(input_ids=ids, position_ids=positions[None], use_cache=True, logits_to_keep=1, **kwargs)
    else:
        inner(input_ids=ids, position_ids=positions[None], use_cache=True, **kwargs)
    return None


@torch.no_grad()
def prefill(model: torch.nn.Module, cache: SSACache, input_ids: torch.Tensor, *, chunk_size: int | None = None,
            anchors: Iterable[tuple[int, int]] = (), progress: ProgressFn | None = None) -> torch.Tensor:
    """Feed ``input_ids [1, T]`` (or ``[T]``) through ``model`` into ``cache`` in chunks.

    Args:
        anchors: token spans ``[start, end)`` (absolute, counting tokens already in the cache)
            to pin before they can be evicted: file headers, the repository map, the question.
        progress: called as ``progress(done_tokens, total_tokens)`` after each chunk.
    Returns the float32 logits ``[1, V]`` of the last token.
    """
    if getattr(model.config, "_attn_implementation", None) != ATTN_NAME:
        raise ValueError("prefill needs a model patched with ssa_code.patch(model, ssa_config)")
    cache.check_model(model.config)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be [1, T], got shape {tuple(input_ids.shape)}")
    total = input_ids.shape[1]
    if total == 0:
        raise ValueError("input_ids is empty: nothing to prefill")
    chunk = chunk_size or cache.ssa_config.chunk_size
    if chunk <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk}")
    for start, end in anchors:
        cache.pin(int(start), int(end))
    device = next(model.parameters()).device
    offset = cache.get_seq_length()
    logits = None
    for i in range(0, total, chunk):
        ids = input_ids[:, i:i + chunk].to(device)
        last = i + chunk >= total
        logits = forward_chunk(model, cache, ids, offset + i, logits=last)
        if progress is not None:
            progress(min(i + chunk, total), total)
    assert logits is not None
    return logits
