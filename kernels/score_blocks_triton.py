"""Relevance scoring of index entries against a query chunk, with the max fused into the matmul.

scores[kvh, n] = max over the group's query heads and the chunk's queries of scale * q . rep[n]
(the "relevance scoring" step of SSA: a cheap score per distant block, as InfLLM / Quest score
blocks by representative keys). A program holds one tile of representatives and streams every
query row of its KV group through the tensor cores, keeping a running column max, so the
[Hq, M, N] logits never reach memory. When the N tiles alone cannot fill the GPU, the query rows
are split too and the partial maxima are reduced on the host side with one `amax`.

Trust: tested on CPU under the Triton interpreter at small sizes and against the reference on
CUDA at real sizes when a GPU is present; the autotune space is a guess for Hopper.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tier_attention_triton import alloc, dot_precision, interpreting, mma, num_sms


@triton.jit
def ssa_score_blocks_kernel(
    Q, REPS, PART, sm_scale, M, N, n_valid, ROWS_PER_SPLIT,
    stride_qh, stride_qm, stride_rh, stride_rn, stride_ps, stride_ph,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Grid (N tiles, Hkv, row splits). Rows r of KV head kvh are query r % M of head
    kvh * GROUP + r // M; split s covers rows [s * ROWS_PER_SPLIT, (s + 1) * ROWS_PER_SPLIT)."""
    pid_n = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    best = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    if pid_n * BLOCK_N < n_valid:
        # Elementwise running max in registers; the cross-warp reduction over rows runs once,
        # after the loop, instead of once per row tile.
        best_tile = tl.full([BLOCK_M, BLOCK_N], float("-inf"), dtype=tl.float32)
        n_c = tl.minimum(offs_n, N - 1)
        reps = tl.load(REPS + kvh.to(tl.int64) * stride_rh + n_c[:, None] * stride_rn + offs_d[None, :])
        reps_t = tl.trans(reps)
        n_rows = GROUP * M
        r_lo = split * ROWS_PER_SPLIT
        r_hi = tl.minimum(r_lo + ROWS_PER_SPLIT, n_rows)
        for r0 in range(r_lo, r_hi, BLOCK_M):
            # Rows past r_hi repeat the last one: a duplicate cannot change a max, so no mask.
            rows = tl.minimum(r0 + tl.arange(0, BLOCK_M), r_hi - 1)
            head = kvh * GROUP + rows // M
            q = tl.load(Q + head[:, None].to(tl.int64) * stride_qh + (rows % M)[:, None] * stride_qm
                        + offs_d[None, :])
            best_tile = tl.maximum(best_tile, mma(q, reps_t, INPUT_PRECISION))
        best = tl.max(best_tile, 0)
        # scale > 0 (checked by the caller), so max(scale * x) = scale * max(x).
        best = tl.where(offs_n < n_valid, best * sm_scale, float("-inf"))
    tl.store(PART + split.to(tl.int64) * stride_ps + kvh * stride_ph + offs_n, best, mask=offs_n < N)


_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=4, num_stages=4),
    # The SSA index scores at twice the head dim (256 for head_dim 128): the first config needs
    # 256 KB of shared memory there (over Hopper's 227 KB) and is skipped by the autotuner;
    # this one leaves room (benchmarks/sm90_resource_report.py).
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
]
_score_fwd = triton.autotune(_CONFIGS, key=["GROUP", "HEAD_DIM", "INPUT_PRECISION"])(
    ssa_score_blocks_kernel)
# Row splits are multiples of this (the largest BLOCK_M), and at least this many rows each.
_ROW_QUANTUM = 128
_MIN_ROWS_PER_SPLIT = 1024


def score_blocks_fwd(q, reps, n_valid, scale, num_splits=None):
    """Host launcher: q [Hq, M, D], reps [Hkv, N, D] (last dims contiguous) -> [Hkv, N] fp32."""
    hq, m, d = q.shape
    hkv, n, _ = reps.shape
    group = hq // hkv
    n_rows = group * m
    dev = q.device
    if num_splits is None:
        # Enough programs for two waves, with at least _MIN_ROWS_PER_SPLIT rows in each.
        n_tiles = triton.cdiv(max(int(n_valid), 1), 128)
        num_splits = max(1, min(triton.cdiv(2 * num_sms(dev), n_tiles * hkv),
                                triton.cdiv(n_rows, _MIN_ROWS_PER_SPLIT)))
    rows_per_split = triton.cdiv(triton.cdiv(n_rows, num_splits), _ROW_QUANTUM) * _ROW_QUANTUM
    num_splits = triton.cdiv(n_rows, rows_per_split)
    part = alloc((num_splits, hkv, n), torch.float32, dev)
    args = (q, reps, part, float(scale), m, n, int(n_valid), rows_per_split,
            q.stride(0), q.stride(1), reps.stride(0), reps.stride(1), part.stride(0), part.stride(1))
    if interpreting():
        grid = (triton.cdiv(n, 32), hkv, num_splits)
        ssa_score_blocks_kernel[grid](*args, GROUP=group, HEAD_DIM=d, BLOCK_M=32, BLOCK_N=32,
                                      INPUT_PRECISION=dot_precision(q.dtype))
    elif q.dtype == torch.float32:
        # float32 (a test dtype): small fixed tiles, the Hopper configs' shared memory would
        # overflow at 4 bytes an element.
        grid = (triton.cdiv(n, 64), hkv, num_splits)
        ssa_score_blocks_kernel[grid](*args, GROUP=group, HEAD_DIM=d, BLOCK_M=64, BLOCK_N=64,
                                      INPUT_PRECISION=dot_precision(q.dtype), num_warps=4,
                                      num_stages=2)
    else:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), hkv, num_splits)
        _score_fwd[grid](*args, GROUP=group, HEAD_DIM=d, INPUT_PRECISION=dot_precision(q.dtype))
    return part[0] if num_splits == 1 else part.amax(0)


def score_blocks(q, reps, n_valid, scale, num_splits=None):
    """Triton relevance scoring (contract: `ssa_code.kernels.score_blocks`).

    q [Hq, M, D]; reps [Hkv, N, D]; n_valid int; scale > 0 -> scores [Hkv, N] float32.
    """
    from .score_blocks_ref import check_score_blocks_args

    check_score_blocks_args(q, reps, n_valid, scale)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if reps.stride(-1) != 1:
        reps = reps.contiguous()
    return score_blocks_fwd(q, reps, n_valid, scale, num_splits)
