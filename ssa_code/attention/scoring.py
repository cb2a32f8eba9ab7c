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

Exact question-time selection (:func:`exact_block_scores`, :func:`pick_with_neighbours`):
for the question chunk only (``SSACache.select_exact``), blocks are ranked by the attention
the question's last ``observe`` queries would really give them, read from the whole store,
instead of by the index's bounds. On the bundled tiny model (CPU, needle benchmark, issue 6)
the bounds of a 64-token block ranked the needle's block about at chance in the heads that
retrieve (34th-199th of 224), exact attention 0-45th. It costs one read of every stored
key per layer and question, so decode never uses it: the answer keeps the question's blocks.
Experimental: measured on the tiny model only.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

import ssa_code.kernels as kernels


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


def exact_block_scores(q: torch.Tensor, key_runs: Iterable[tuple], n_blocks: int,
                       block_size: int, scale: float, prefer: str = "torch") -> torch.Tensor:
    """Each stored block's largest share of one query's attention over all stored blocks.

    Args:
        q: ``[Hq, M, D]`` queries (a group of ``Hq / H`` query heads per KV head, as in
            ``score_blocks``).
        key_runs: ``(first block id, keys [H, n * B, D])`` covering blocks ``0 .. n_blocks - 1``
            once each, on ``q``'s device, rotated to the positions attention shows them at; or
            ``(first, keys, q_run)``, where ``q_run [Hq, M, D]`` replaces ``q`` for that run (the
            caller may rotate the queries back instead of every key forward, see
            ``SSALayer._exact_scores``).
        n_blocks: ``N``, blocks in the store.
        block_size: ``B``, tokens per block.
        prefer: kernel choice for the per-block log-sum-exp (``ssa_code.kernels.block_lse``;
            the ``SSA_CODE_KERNELS`` variable overrides it). The PyTorch path multiplies in
            float32; the Triton kernel takes the queries in the keys' dtype.

    Returns ``[H, N]`` float32: ``max`` over the group's heads and the ``M`` queries of the
    log of the share of that query's attention (softmax over the keys of all ``N`` blocks)
    that falls on the block. A share per query row (not a raw logit) so that a query that
    attends everywhere alike decides nothing. Memory: ``Hq * M * N`` floats besides
    one run of keys.
    """
    hq, m, d = q.shape
    lse: torch.Tensor | None = None
    path = kernels.backend(q.device, prefer)
    # (id(queries), dtype) -> [H, G * M, D] as block_lse takes them, cast once for all runs.
    grouped: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def group(x: torch.Tensor, h: int, dtype: torch.dtype) -> torch.Tensor:
        key = (id(x), dtype)
        if key not in grouped:
            grouped[key] = x.reshape(h, hq // h * m, d).to(dtype)
        return grouped[key]

    for run in key_runs:
        first, k = run[0], run[1]
        q_run = run[2] if len(run) > 2 and run[2] is not None else q
        h = k.shape[0]
        # The kernel reads the keys as stored; the PyTorch path multiplies in float32.
        k = k if path == "triton" else k.float()
        qg = group(q_run, h, k.dtype)  # [H, G * M, D]
        if lse is None:
            lse = torch.full((h, qg.shape[1], n_blocks), float("-inf"), dtype=torch.float32, device=q.device)
        n = k.shape[1] // block_size
        # Per row and block: the log of the (unnormalised) attention mass the block receives.
        lse[:, :, first:first + n] = kernels.block_lse(qg, k, block_size, scale, path)
    if lse is None:
        raise ValueError("key_runs is empty: there is no stored block to score")
    return (lse - lse.logsumexp(-1, keepdim=True)).amax(1)


def pick_with_neighbours(scores: torch.Tensor, top_k: int, before: int = 0, after: int = 1,
                         margin: float = 0.0) -> np.ndarray:
    """``[H, N]`` block scores -> ``[H, top_k]`` block ids (``-1`` = none), on the host.

    The best ``top_k // (1 + before + after)`` blocks (at least one), each with the ``before``
    blocks in front of it and the ``after`` blocks behind it, then the next best blocks until
    ``top_k`` distinct ids are chosen. The neighbours keep a line that straddles a block
    boundary whole: a needle's value after its key (``after``), or a key whose first tokens
    end the block before (``before``). Scores of ``-inf`` (blocks not worth staging) are never
    chosen, neighbours included. ``margin > 0``: only blocks scoring within ``margin`` of the
    head's best lead or fill; their neighbours need only a finite score.
    """
    h, n = scores.shape
    out = np.full((h, top_k), -1, dtype=np.int64)
    if n == 0 or top_k == 0:
        return out
    # The 2 * top_k best blocks are candidates enough: they alone hold top_k distinct ids.
    best_s, best_i = torch.topk(scores.float(), min(n, 2 * top_k), dim=-1)
    # Which neighbours of each candidate may be staged: [H, 2 * top_k, span] to the host, not [H, N].
    offsets = [d for d in range(-before, after + 1) if d != 0]
    near = best_i[..., None] + torch.tensor(offsets, dtype=best_i.dtype, device=best_i.device)
    near_ok = (near >= 0) & (near < n)
    if offsets:
        near_ok &= torch.isfinite(scores.gather(1, near.clamp(0, n - 1).flatten(1))).view_as(near)
    ok = torch.isfinite(best_s)
    if margin > 0:
        ok &= best_s >= best_s[:, :1] - margin
    ok, best, near, near_ok = (t.cpu().numpy() for t in (ok, best_i, near, near_ok))
    lead = max(1, top_k // (1 + len(offsets)))
    for head in range(h):
        row: list[int] = []
        for j in np.flatnonzero(ok[head])[:lead]:
            row.append(int(best[head, j]))
            row.extend(near[head, j][near_ok[head, j]].tolist())
        row = list(dict.fromkeys(row + best[head][ok[head]].tolist()))[:top_k]
        out[head, : len(row)] = row
    return out
