"""Plain PyTorch reference for `block_lse_triton.py`: the log of the attention mass of each key block.

lse[h, r, j] = log sum over the B keys of block j of exp(scale * q[h, r] . k[h, j * B + t]), per
query row r of KV head h, unnormalised. The question's exact block choice
(`ssa_code.attention.scoring.exact_block_scores`) normalises these over all blocks and keeps
each block's largest share.
"""
from __future__ import annotations

import torch

from .checks import check_3d, check_dtype, check_head_dim, check_like_q, check_scale


def check_block_lse_args(q, k, block_size, scale, *, triton: bool = False) -> None:
    """ValueError naming the bad argument, for the public block_lse functions (``triton``: also
    the head_dim and block sizes the kernel's tiles support)."""
    check_3d("q", q, "[H, R, D]")
    check_3d("k", k, "[H, n * B, D]")
    h, r, d = q.shape
    hk, t, dk = k.shape
    if hk != h or dk != d:
        raise ValueError(f"k has shape {tuple(k.shape)}, q has {tuple(q.shape)}: heads and head_dim must match")
    if triton:
        check_head_dim(d)
    if triton and block_size not in (16, 32, 64, 128):
        raise ValueError(f"block_size {block_size} is not supported (16, 32, 64 or 128)")
    if block_size < 1 or t % block_size:
        raise ValueError(f"k has {t} keys, not a whole number of blocks of {block_size}")
    if r < 1:
        raise ValueError(f"q has {r} rows, expected at least 1")
    check_like_q("k", k, q)
    check_dtype(q)
    check_scale(scale)


def block_lse_ref(q, k, block_size, scale, *, compute_dtype=torch.float32):
    """q [H, R, D]; k [H, n * B, D] -> [H, R, n] float32 (float64 when computed in float64)."""
    h, r, _ = q.shape
    n = k.shape[1] // block_size
    ct = compute_dtype
    logits = torch.bmm(q.to(ct), k.to(ct).transpose(1, 2)) * scale  # [H, R, n * B]
    out = logits.view(h, r, n, block_size).logsumexp(-1)
    return out if ct == torch.float64 else out.float()
