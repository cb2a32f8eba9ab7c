"""Relevance scoring: which evicted blocks a query chunk attends to at full resolution.

SSA's first mechanism. Every index entry (one representative key per evicted block, or
per run of blocks once the index has consolidated) is scored against the chunk's
queries, per KV-head group: ``score = max over the group's heads and the chunk's queries
of scale * q . rep`` (the max keeps a block that a single query needs, as in Quest, Tang
et al. 2024). Entries whose softmax share is at least ``threshold`` take part, best
first, until ``top_k`` blocks are chosen. The threshold is a parameter today and can be
learned later.

Selection is split in two so that decode never waits for it (see ``staging.py``):
:func:`top_entries` runs on the device with fixed shapes (a CUDA graph can hold it), and
:func:`expand_entries` turns the chosen entries into block ids on the host, where the store
that holds the blocks lives.

The scores come from ``ssa_code.kernels.score_blocks`` (Triton on CUDA, PyTorch elsewhere).
"""

from __future__ import annotations

import numpy as np
import torch


def top_entries(scores: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, top_k: int,
                threshold: float) -> torch.Tensor:
    """The best ``top_k`` entries per head, on the scores' device, without synchronising.

    Args:
        scores: ``[H, N]`` float32 entry scores; ``-inf`` marks entries that do not exist.
        lo, hi: ``[N]`` the half-open block-id span of each entry.
        top_k: blocks to choose per head.
        threshold: minimum softmax share of an entry (0 keeps the best ``top_k``).

    Returns ``[3, H, k]`` int64 with ``k = min(top_k, N)``: first block, block count and a
    0/1 flag per entry, best first. An entry is flagged when it exists, passes the
    threshold and fits, greedily in score order, with the entries before it into ``top_k``.
    """
    s = scores.float()
    # Every entry holds at least one block, so the best top_k entries are all that can be taken.
    k = min(top_k, s.shape[-1])
    best, top_i = torch.topk(s, k, dim=-1)
    share = torch.softmax(s, dim=-1).gather(1, top_i)
    lo_d, hi_d = lo.to(s.device), hi.to(s.device)
    sizes = (hi_d - lo_d)[top_i]
    # A head whose entries are all -inf has NaN shares; the finiteness test drops them.
    keep = torch.isfinite(best) & (share >= threshold) & (sizes <= top_k)
    keep &= torch.cumsum(sizes * keep, dim=-1) <= top_k
    return torch.stack([lo_d[top_i], sizes, keep.long()])


def expand_entries(entries: np.ndarray, top_k: int) -> np.ndarray:
    """``[3, H, k]`` entries from :func:`top_entries` (on the host) -> ``[H, top_k]`` block ids.

    Block ids follow the entries' order (best first), an entry contributing all its blocks;
    the rest is padded with ``-1``.
    """
    starts, sizes, keep = entries
    heads, k = starts.shape
    out = np.full((heads, top_k), -1, dtype=np.int64)
    keep = keep.astype(bool)
    if (sizes[keep] == 1).all():
        out[:, :k] = np.where(keep, starts, -1)
        return out
    for h in range(heads):
        ids = [b for first, c in zip(starts[h][keep[h]], sizes[h][keep[h]]) for b in range(first, first + c)]
        out[h, : len(ids)] = ids[:top_k]
    return out


def select_blocks(
    scores: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, n_valid: int, top_k: int, threshold: float
) -> torch.Tensor:
    """Choose up to ``top_k`` block ids per head (:func:`top_entries`, then :func:`expand_entries`).

    Args:
        scores: ``[H, N]`` float32 entry scores (entries ``>= n_valid`` are ignored).
        lo, hi: ``[N]`` the half-open block-id span of each entry.
        n_valid: number of valid entries.

    Returns ``[H, top_k]`` int64 block ids on the CPU, best entry first, padded with ``-1``.
    """
    heads = scores.shape[0]
    if n_valid == 0 or top_k == 0:
        return torch.full((heads, top_k), -1, dtype=torch.int64)
    entries = top_entries(scores[:, :n_valid], lo[:n_valid], hi[:n_valid], top_k, threshold)
    return torch.from_numpy(expand_entries(entries.cpu().numpy(), top_k))
