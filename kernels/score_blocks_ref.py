"""Plain PyTorch reference for `score_blocks_triton.py`: relevance of index entries to a query chunk.

scores[kvh, n] = max over the group's query heads h and the chunk's queries m of
scale * q[h, m] . reps[kvh, n]; entries n >= n_valid are -inf. Queries are processed in
sub-chunks so the [G, M, N] logits never exist at once (M and N up to 16K).
"""
from __future__ import annotations

import torch

from .checks import check_3d, check_dtype, check_head_dim, check_like_q, check_scale

# Budget for one sub-chunk's logits [Hkv, G * chunk, N], in elements (~0.5 GiB in float32).
_LOGIT_ELEMS = 1 << 27


def check_score_blocks_args(q, reps, n_valid, scale) -> None:
    """ValueError naming the bad argument, for the public score_blocks functions."""
    check_3d("q", q, "[Hq, M, D]")
    check_3d("reps", reps, "[Hkv, N, D]")
    hq, m, d = q.shape
    hkv, n, dr = reps.shape
    if dr != d:
        raise ValueError(f"reps has head_dim {dr}, q has {d}")
    check_head_dim(d)
    if hkv < 1 or hq % hkv:
        raise ValueError(f"{hq} query heads are not a multiple of {hkv} KV heads")
    if m < 1:
        raise ValueError(f"q has {m} queries, expected at least 1")
    check_like_q("reps", reps, q)
    check_dtype(q)
    if not (0 <= int(n_valid) <= n):
        raise ValueError(f"n_valid {n_valid} is outside [0, {n}]")
    check_scale(scale)


def score_blocks_ref(q, reps, n_valid, scale, *, compute_dtype=torch.float32):
    """q [Hq, M, D]; reps [Hkv, N, D]; n_valid int -> scores [Hkv, N] float32."""
    hq, m, d = q.shape
    hkv, n, _ = reps.shape
    group = hq // hkv
    ct = compute_dtype
    nv = int(n_valid)
    out_t = torch.float64 if ct == torch.float64 else torch.float32
    scores = torch.full((hkv, n), float("-inf"), dtype=out_t, device=q.device)
    if nv == 0:
        return scores.float()
    r = reps[:, :nv].to(ct)
    qg = q.reshape(hkv, group, m, d)
    step = max(1, min(m, _LOGIT_ELEMS // max(1, hq * nv)))
    for i0 in range(0, m, step):
        qc = qg[:, :, i0:i0 + step].to(ct).reshape(hkv, -1, d)  # [Hkv, G * c, D]
        s = (torch.matmul(qc, r.transpose(1, 2)).to(out_t) * scale).amax(1)  # [Hkv, nv]
        scores[:, :nv] = torch.maximum(scores[:, :nv], s)
    return scores.float()
