"""Relevance scoring: which evicted blocks a query chunk attends to at full resolution.

SSA's first mechanism. Every index entry (one representative key per evicted block, or
per run of blocks once the index has consolidated) is scored against the chunk's
queries, per KV-head group: ``score = max over the group's heads and the chunk's queries
of scale * q . rep`` (the max keeps a block that a single query needs, as in Quest, Tang
et al. 2024). Entries whose softmax share is at least ``threshold`` take part, best
first, until ``top_k`` blocks are chosen. The threshold is a parameter today and can be
learned later.

The scores come from ``ssa_code.kernels.score_blocks`` (Triton on CUDA, PyTorch elsewhere).
"""

from __future__ import annotations

import torch


def select_blocks(
    scores: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, n_valid: int, top_k: int, threshold: float
) -> torch.Tensor:
    """Choose up to ``top_k`` block ids per head.

    Args:
        scores: ``[H, N]`` float32 entry scores (entries ``>= n_valid`` are ignored).
        lo, hi: ``[N]`` the half-open block-id span of each entry.
        n_valid: number of valid entries.
        top_k: blocks to choose per head.
        threshold: minimum softmax share of an entry (0 keeps the best ``top_k``).

    Returns ``[H, top_k]`` int64 block ids, best entry first, padded with ``-1``. An entry
    that covers several blocks contributes all of them, or is skipped if they do not fit.
    """
    heads = scores.shape[0]
    out = torch.full((heads, top_k), -1, dtype=torch.int64)
    if n_valid == 0 or top_k == 0:
        return out
    s = scores[:, :n_valid].float()
    share = torch.softmax(s, dim=-1)
    # Every entry holds at least one block, so the best top_k entries are all that can be taken.
    k = min(top_k, n_valid)
    top_i = torch.topk(s, k, dim=-1).indices  # best first
    lo_d, hi_d = lo[:n_valid].to(s.device), hi[:n_valid].to(s.device)
    sizes = (hi_d - lo_d)[top_i]
    keep = (share.gather(1, top_i) >= threshold) & (sizes <= top_k)
    # Greedy in score order: an entry is taken if the blocks before it plus its own fit.
    keep &= torch.cumsum(sizes * keep, dim=-1) <= top_k
    starts = lo_d[top_i]
    # One small transfer to the host (block ids address the host store).
    starts, sizes, keep = torch.stack([starts, sizes, keep.long()]).cpu().unbind(0)
    keep = keep.bool()
    if bool((sizes == 1).all()):
        out[:, :k] = torch.where(keep, starts, -1)
        return out
    for h in range(heads):
        firsts, counts = starts[h][keep[h]].tolist(), sizes[h][keep[h]].tolist()
        ids = [b for first, c in zip(firsts, counts) for b in range(first, first + c)][:top_k]
        out[h, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return out
