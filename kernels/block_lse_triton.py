"""The log of each key block's attention mass, per query row, without the logits in memory.

lse[h, r, j] = log sum_t exp(scale * q[h, r] . k[h, j * B + t]) over the B keys of block j: the
question's exact block choice reads every stored key of a layer once (1 GiB per layer at 1M
tokens for a 7B model) against 64 queries per query head. A program holds one tile of query
rows and streams a run of key blocks through the tensor cores, reducing each block's logits to
one log-sum-exp in registers, so the [H, R, n * B] float32 logits (about 7 GB per layer at 1M
tokens) are never written.

Trust: tested on CPU under the Triton interpreter at small sizes and on an H200 at real sizes
(tests/kernels/test_block_lse.py). On the H200 it scores one layer of 1M stored tokens in 6.1 ms
in the layer's runs of keys and 3.7 ms in one launch, against 47.0 ms for the PyTorch path
(benchmarks/bench_exact_read.py, commit 4b284e5). The key loop has no branch: a branch around
the loads kept Triton from pipelining them (9.7 ms), and a CPU test compiles the kernel for
sm_90 to keep the loop pipelined. Used on CUDA by
`ssa_code.attention.layer_state.SSALayer._exact_scores` through `SSAConfig.kernels`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tier_attention_triton import alloc, dot_precision, interpreting, mma


@triton.jit
def ssa_block_lse_kernel(
    Q, K, OUT, sm_scale, R, NB,
    stride_qh, stride_qr, stride_kh, stride_kt, stride_oh, stride_or, stride_oj,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCKS_PER_PROG: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """Grid (row tiles, H, block groups): rows [pid_r * BLOCK_R, +BLOCK_R) of head h against
    key blocks [pid_b * BLOCKS_PER_PROG, +BLOCKS_PER_PROG)."""
    pid_r = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    pid_b = tl.program_id(2)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    # Rows past R repeat the last one (their results are not stored).
    rows_c = tl.minimum(rows, R - 1)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_t = tl.arange(0, BLOCK)
    q = tl.load(Q + h * stride_qh + rows_c[:, None] * stride_qr + offs_d[None, :])
    # No branch in the loop: a branch around the key load keeps Triton from pipelining it (the
    # next tile's load in flight during this tile's dot and exponentials). Blocks past NB load
    # zeros and store nothing.
    for i in range(BLOCKS_PER_PROG):
        j = pid_b * BLOCKS_PER_PROG + i
        keys = (j * BLOCK + offs_t).to(tl.int64)
        k = tl.load(K + h * stride_kh + keys[:, None] * stride_kt + offs_d[None, :],
                    mask=keys[:, None] < NB * BLOCK, other=0.0)
        s = mma(q, tl.trans(k), INPUT_PRECISION) * sm_scale  # [BLOCK_R, BLOCK] float32
        m = tl.max(s, 1)
        lse = m + tl.log(tl.sum(tl.exp(s - m[:, None]), 1))
        keep = (rows < R) & (tl.zeros_like(rows) + j < NB)
        tl.store(OUT + h * stride_oh + rows * stride_or + j * stride_oj, lse, mask=keep)


def block_lse_fwd(q, k, block_size, scale, blocks_per_prog=None):
    """Host launcher: q [H, R, D], k [H, n * B, D] (last dims contiguous) -> [H, R, n] float32.

    The result is a view of an [H, n, R] buffer (each program's stores are contiguous in r).
    """
    h, r, d = q.shape
    nb = k.shape[1] // block_size
    out = alloc((h, nb, r), torch.float32, q.device)
    if nb == 0:
        return out.transpose(1, 2)
    block_r = 32 if interpreting() else 64
    if blocks_per_prog is None:
        blocks_per_prog = 4 if interpreting() else 16
    grid = (triton.cdiv(r, block_r), h, triton.cdiv(nb, blocks_per_prog))
    ssa_block_lse_kernel[grid](
        q, k, out, float(scale), r, nb,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), out.stride(0), out.stride(2), out.stride(1),
        HEAD_DIM=d, BLOCK=block_size, BLOCK_R=block_r, BLOCKS_PER_PROG=blocks_per_prog,
        INPUT_PRECISION=dot_precision(q.dtype), num_warps=4, num_stages=2,
    )
    return out.transpose(1, 2)


def block_lse(q, k, block_size, scale, blocks_per_prog=None):
    """Triton block log-sum-exp (contract: `ssa_code.kernels.block_lse`)."""
    from .block_lse_ref import check_block_lse_args

    check_block_lse_args(q, k, block_size, scale, triton=True)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    return block_lse_fwd(q, k, block_size, scale, blocks_per_prog)
