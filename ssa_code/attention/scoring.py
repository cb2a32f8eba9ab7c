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
    order = torch.argsort(s, dim=-1, descending=True, stable=True)
    sizes = (hi[:n_valid] - lo[:n_valid]).to(order.device)[order]
    keep = (share.gather(1, order) >= threshold) & (sizes <= top_k)
    # Greedy in score order: an entry fits if the blocks taken before it plus its own fit.
    taken = torch.cumsum(sizes * keep, dim=-1)
    keep &= taken <= top_k
    order, keep = order.cpu(), keep.cpu()
    lo_c, hi_c = lo[:n_valid].cpu(), hi[:n_valid].cpu()
    for h in range(heads):
        entries = order[h][keep[h]]
        if entries.numel() == 0:
            continue
        starts, ends = lo_c[entries], hi_c[entries]
        if bool(((ends - starts) == 1).all()):
            ids = starts
        else:
            ids = torch.cat([torch.arange(a, b) for a, b in zip(starts.tolist(), ends.tolist())])
        out[h, : ids.numel()] = ids[:top_k]
    return out
