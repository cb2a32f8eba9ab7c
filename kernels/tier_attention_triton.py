"""Fused tier attention for Streaming Sparse Attention: one online-softmax pass over the occupied
slot ranges of a layer's tier buffer (non-causal, additive per-slot bias) and the chunk's own
keys (causal).

Method: FlashAttention-2 (Dao, 2023) forward: fp32 online softmax in base 2, one program per
block of query rows, K/V tiles streamed through the inner loop. GQA: the G query heads of a KV
group are packed into the row dimension (row r = g * M + m), so a program's K/V tile serves
every head whose rows it holds and decode (M = 1) still fills a tensor-core tile. Decode and
short chunks use split-K over the attended keys (flash-decoding, Dao et al. 2023): each split
takes an equal share of the flattened key index (all ranges concatenated), walks it in one loop
of tiles whose rows are gathered from their slots (as paged attention gathers pages), and writes
a partial (out, lse) in fp32. The partials are merged (`combine`) by a small combine kernel
("separate") or by the same kernel launched early with programmatic dependent launch
("separate_pdl", the default; "separate" where PDL is unavailable).

Contract details (see docs/INTERFACES.md): ranges are read straight from the buffer (no
gathered copy); a slot whose bias is -inf contributes nothing, provided its K/V hold finite
values (0 * NaN is NaN inside the P @ V product, so buffers must be zero-initialised, not
torch.empty); ranges must lie inside the buffer and not overlap (validated only when `ranges`
is a CPU tensor, to avoid a device sync per call).

Trust: correctness is tested on CPU under the Triton interpreter (small sizes, fp32/bf16/fp16,
head_dim 64/128) and against the PyTorch reference at real sizes on CUDA when a GPU is present
(tests marked gpu, and the checks in benchmarks/bench_kernels.py). Prefill autotunes over
three Hopper configs; the split-K path's flat loop takes its config from a rule measured on the
H200 (`split_config`). The flat key loop of the split-K path measured
1.01-1.21x faster than the per-range loop it replaced (`key_loop="ranges"`) on the H200
(BENCHMARKS.md). "separate_pdl" runs as "separate" on CPU (no PDL under the interpreter) and
passed the decode tests on the H200 (repeated launches, graph replays), where it is the faster
merge at every size (0.3-0.7 us ahead of "separate"; BENCHMARKS.md).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def mma(a, b, INPUT_PRECISION: tl.constexpr):
    """a @ b with fp32 accumulation. INPUT_PRECISION "ieee" keeps fp32 inputs exact on GPU; the
    string "interp" upcasts the operands because the Triton interpreter (3.9) returns garbage
    for tl.dot on bf16/fp16 operands."""
    if INPUT_PRECISION == "interp":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=INPUT_PRECISION)


@triton.jit
def cast(x, DTYPE: tl.constexpr, INTERP: tl.constexpr):
    """x.to(DTYPE) rounding to nearest even. The GPU cast already does; the Triton interpreter
    (3.9) truncates to bfloat16, which doubled the rounding error in tests, so there the
    rounding is done on the bits first (the final cast is then exact)."""
    if INTERP and DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


@triton.jit
def _attn_tile(acc, l_i, m_i, q, k_ptrs, v_ptrs, bias_l2, qk_scale,
               INPUT_PRECISION: tl.constexpr):
    """One online-softmax step over a K/V tile; bias_l2 is [BLOCK_M|1, BLOCK_N] in log2 units."""
    k = tl.load(k_ptrs)
    v = tl.load(v_ptrs)
    qk = mma(q, tl.trans(k), INPUT_PRECISION) * qk_scale + bias_l2
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    # P is rounded to V's dtype before the product, as on the GPU path.
    acc = acc * alpha[:, None] + mma(cast(p, v.dtype, INPUT_PRECISION == "interp"), v, INPUT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def ssa_attn_fwd_kernel(
    Q, K, V, BIAS, RANGES, KN, VN, OUT, LSE, O_PART, LSE_PART,
    sm_scale, M, N_RANGES, NUM_SPLITS,
    stride_qh, stride_qm, stride_kh, stride_kn, stride_vh, stride_vn, stride_bh,
    stride_knh, stride_knm, stride_vnh, stride_vnm, stride_oh, stride_om, stride_lh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr, FLAT_KEYS: tl.constexpr, RANGES_PAD: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, WITH_NEW: tl.constexpr = True,
    LAUNCH_DEPENDENTS: tl.constexpr = False,
):
    """Grid (row blocks, Hkv, splits). Rows r in [0, GROUP * M) of KV head `kvh` are query m = r % M
    of head kvh * GROUP + r // M. Split s covers an equal share, in whole tiles, of the buffer's
    attended keys counted in range order (the flat key index); the last split also covers the
    chunk's own keys (causal) unless WITH_NEW is off (a pass over buffer ranges only, merged
    with another pass by the caller through the lse).

    FLAT_KEYS: one loop over the split's tiles of the flat index, each key mapped to its slot
    through the ranges' prefix sums (held in registers, RANGES_PAD >= N_RANGES entries), so the
    load pipeline never restarts at a range boundary and no tile is cut short by one; K/V rows
    are gathered (each row HEAD_DIM contiguous elements), as in paged attention. Otherwise one
    loop per range (the prefill path, and the split path's previous form, kept to compare).

    SPLIT: each program writes its partial (out, lse) to O_PART/LSE_PART, which the combine
    kernel merges.

    LAUNCH_DEPENDENTS (combine "separate_pdl"): lets the combine kernel, launched with
    programmatic dependent launch, start now; it waits (griddepcontrol.wait) for this grid to
    finish and flush before reading the partials, so its launch overlaps this kernel."""
    if LAUNCH_DEPENDENTS:
        tl.extra.cuda.gdc_launch_dependents()
    pid_m = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    n_rows = GROUP * M
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    # Clamped rows duplicate the last valid one: loads need no mask, stores are masked.
    rows_c = tl.minimum(rows, n_rows - 1)
    head = kvh * GROUP + rows_c // M
    qm = rows_c % M
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + head[:, None] * stride_qh + qm[:, None] * stride_qm + offs_d[None, :])

    qk_scale = sm_scale * 1.4426950408889634
    # Finite start for the running max: a tile whose logits are all -inf then gives p = 0,
    # alpha = 1 instead of exp2(-inf - -inf) = NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    k_head = K + kvh.to(tl.int64) * stride_kh
    v_head = V + kvh.to(tl.int64) * stride_vh
    b_head = BIAS + kvh.to(tl.int64) * stride_bh

    if FLAT_KEYS:
        offs_r = tl.arange(0, RANGES_PAD)
        r_ok = offs_r < N_RANGES
        r_start = tl.load(RANGES + 2 * offs_r, mask=r_ok, other=0)
        r_len = tl.load(RANGES + 2 * offs_r + 1, mask=r_ok, other=0) - r_start
        # Range r holds the flat keys [f_end - r_len, f_end); key f sits in slot f + r_shift.
        f_end = tl.cumsum(r_len, 0)
        f_start = f_end - r_len
        r_shift = r_start - f_start
        total = tl.sum(r_len, 0)
        per = tl.cdiv(tl.cdiv(total, NUM_SPLITS), BLOCK_N) * BLOCK_N
        lo = split * per
        hi = tl.minimum(lo + per, total)
        for f0 in range(lo, hi, BLOCK_N):
            offs_f = f0 + tl.arange(0, BLOCK_N)
            # Keys past `hi` are clamped onto the split's last key and masked through the bias.
            f_c = tl.minimum(offs_f, hi - 1)
            # Exactly one range holds each key (an empty range holds none): no search, one
            # [BLOCK_N, RANGES_PAD] compare against the prefix sums.
            hit = (f_c[:, None] >= f_start[None, :]) & (f_c[:, None] < f_end[None, :])
            slot = f_c + tl.sum(tl.where(hit, r_shift[None, :], 0), 1)
            bias = tl.load(b_head + slot, mask=offs_f < hi, other=float("-inf"))
            acc, l_i, m_i = _attn_tile(
                acc, l_i, m_i, q,
                k_head + slot[:, None] * stride_kn + offs_d[None, :],
                v_head + slot[:, None] * stride_vn + offs_d[None, :],
                (bias * 1.4426950408889634)[None, :], qk_scale, INPUT_PRECISION)
    else:
        # This split's share [lo, hi) of the attended buffer keys, counted in range order.
        total = 0
        for r in range(0, N_RANGES):
            total += tl.load(RANGES + 2 * r + 1) - tl.load(RANGES + 2 * r)
        per = tl.cdiv(tl.cdiv(total, NUM_SPLITS), BLOCK_N) * BLOCK_N
        lo = split * per
        hi = tl.minimum(lo + per, total)
        cum = 0
        for r in range(0, N_RANGES):
            s = tl.load(RANGES + 2 * r)
            e = tl.load(RANGES + 2 * r + 1)
            start = s + tl.maximum(lo - cum, 0)
            end = s + tl.minimum(hi - cum, e - s)
            for n0 in range(start, end, BLOCK_N):
                offs_n = n0 + tl.arange(0, BLOCK_N)
                # Slots past `end` are clamped onto a valid one and masked through the bias.
                offs_c = tl.minimum(offs_n, end - 1)
                bias = tl.load(b_head + offs_n, mask=offs_n < end, other=float("-inf"))
                acc, l_i, m_i = _attn_tile(
                    acc, l_i, m_i, q,
                    k_head + offs_c[:, None] * stride_kn + offs_d[None, :],
                    v_head + offs_c[:, None] * stride_vn + offs_d[None, :],
                    (bias * 1.4426950408889634)[None, :], qk_scale, INPUT_PRECISION)
            cum += e - s

    if WITH_NEW and split == NUM_SPLITS - 1:
        kn_head = KN + kvh.to(tl.int64) * stride_knh
        vn_head = VN + kvh.to(tl.int64) * stride_vnh
        m_lo = tl.min(qm, 0)
        m_hi = tl.max(qm, 0)
        # Keys 0 .. m_lo are visible to every row of the block: no mask.
        full_end = ((m_lo + 1) // BLOCK_N) * BLOCK_N
        zero_bias = tl.zeros([1, BLOCK_N], dtype=tl.float32)
        for n0 in range(0, full_end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            acc, l_i, m_i = _attn_tile(
                acc, l_i, m_i, q,
                kn_head + offs_n[:, None] * stride_knm + offs_d[None, :],
                vn_head + offs_n[:, None] * stride_vnm + offs_d[None, :],
                zero_bias, qk_scale, INPUT_PRECISION)
        for n0 in range(full_end, m_hi + 1, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            offs_c = tl.minimum(offs_n, M - 1)
            causal = tl.where(offs_n[None, :] <= qm[:, None], 0.0, float("-inf"))
            acc, l_i, m_i = _attn_tile(
                acc, l_i, m_i, q,
                kn_head + offs_c[:, None] * stride_knm + offs_d[None, :],
                vn_head + offs_c[:, None] * stride_vnm + offs_d[None, :],
                causal, qk_scale, INPUT_PRECISION)

    has = l_i > 0.0
    l_safe = tl.where(has, l_i, 1.0)
    o = acc / l_safe[:, None]
    lse = tl.where(has, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    if SPLIT:
        # Partial results [S, Hq, M, D] / [S, Hq, M], contiguous, fp32.
        n_q = GROUP * M * tl.num_programs(1)
        prow = split.to(tl.int64) * n_q + head.to(tl.int64) * M + qm
        tl.store(O_PART + prow[:, None] * HEAD_DIM + offs_d[None, :], o, mask=row_ok[:, None])
        tl.store(LSE_PART + prow, lse, mask=row_ok)
    else:
        o_ptrs = OUT + head[:, None].to(tl.int64) * stride_oh + qm[:, None] * stride_om + offs_d[None, :]
        tl.store(o_ptrs, cast(o, OUT.dtype.element_ty, INPUT_PRECISION == "interp"), mask=row_ok[:, None])
        tl.store(LSE + head.to(tl.int64) * stride_lh + qm, lse, mask=row_ok)


@triton.jit
def ssa_attn_combine_kernel(
    O_PART, LSE_PART, OUT, LSE, M, N_Q, NUM_SPLITS,
    stride_oh, stride_om, stride_lh,
    HEAD_DIM: tl.constexpr, SPLITS_PAD: tl.constexpr, SPLIT_BLOCK: tl.constexpr,
    INTERP: tl.constexpr, WAIT_PRIMARY: tl.constexpr = False,
):
    """Grid (Hq * M,). Merges the splits' partial (out, lse) of one query row (flash-decoding).
    Up to SPLIT_BLOCK splits (decode's 33) are merged from one load of the lse and one of the
    partial outputs, issued together: one memory round trip after launch, not one per chunk."""
    i = tl.program_id(0)
    head = i // M
    qm = i % M
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    s_ok = offs_s < NUM_SPLITS
    if WAIT_PRIMARY:
        # Launched early (programmatic dependent launch): the split kernel's partials are
        # complete and visible only after this wait.
        tl.extra.cuda.gdc_wait()
    lse_s = tl.load(LSE_PART + offs_s.to(tl.int64) * N_Q + i, mask=s_ok, other=float("-inf"))
    if SPLITS_PAD <= SPLIT_BLOCK:
        o_s = tl.load(O_PART + (offs_s.to(tl.int64) * N_Q + i)[:, None] * HEAD_DIM + offs_d[None, :],
                      mask=s_ok[:, None], other=0.0)
    # With the chunk's keys the last split holds the diagonal key and the max is finite; a pass
    # without them (WITH_NEW off) may see no key at all: shift by 0 then, giving out 0, lse -inf.
    mx_raw = tl.max(lse_s, 0)
    mx = tl.where(mx_raw > float("-inf"), mx_raw, 0.0)
    w_s = tl.exp(lse_s - mx)
    den = tl.sum(w_s, 0)
    if SPLITS_PAD <= SPLIT_BLOCK:
        acc = tl.sum(w_s[:, None] * o_s, 0)
    else:
        acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
        for s0 in range(0, NUM_SPLITS, SPLIT_BLOCK):
            offs_b = s0 + tl.arange(0, SPLIT_BLOCK)
            ok = offs_b < NUM_SPLITS
            lse_b = tl.load(LSE_PART + offs_b.to(tl.int64) * N_Q + i, mask=ok, other=float("-inf"))
            w = tl.exp(lse_b - mx)
            o_b = tl.load(O_PART + (offs_b.to(tl.int64) * N_Q + i)[:, None] * HEAD_DIM
                          + offs_d[None, :], mask=ok[:, None], other=0.0)
            acc += tl.sum(w[:, None] * o_b, 0)
    seen = den > 0.0
    o = acc / tl.where(seen, den, 1.0)
    tl.store(OUT + head.to(tl.int64) * stride_oh + qm * stride_om + offs_d, cast(o, OUT.dtype.element_ty, INTERP))
    tl.store(LSE + head.to(tl.int64) * stride_lh + qm, tl.where(seen, mx + tl.log(den), float("-inf")))


@triton.jit
def _mass_sum(Q, LSE, k, bias_l2, offs_n, kvh, O, OBS_START, qk_scale,
              stride_qh, stride_qm, stride_lh,
              GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """Sum over the group's observation rows of exp(logit - lse) for one key tile -> [BLOCK_N]."""
    offs_d = tl.arange(0, HEAD_DIM)
    n_rows = GROUP * O
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    k_t = tl.trans(k)
    for r0 in range(0, n_rows, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        rows_c = tl.minimum(rows, n_rows - 1)
        head = (kvh * GROUP + rows_c // O).to(tl.int64)
        oi = rows_c % O
        q = tl.load(Q + head[:, None] * stride_qh + oi[:, None] * stride_qm + offs_d[None, :])
        lse = tl.load(LSE + head * stride_lh + oi)
        qk = mma(q, k_t, INPUT_PRECISION) * qk_scale + bias_l2[None, :] - (lse * 1.4426950408889634)[:, None]
        if CAUSAL:
            qk = tl.where(offs_n[None, :] <= (OBS_START + oi)[:, None], qk, float("-inf"))
        # Clamped duplicate rows would count twice: zero them.
        p = tl.where((rows < n_rows)[:, None], tl.math.exp2(qk), 0.0)
        acc += tl.sum(p, 0)
    return acc


@triton.jit
def ssa_attn_mass_kernel(
    Q, K, BIAS, RANGES, KN, LSE, MASS_BUF, MASS_NEW,
    sm_scale, O, M, CAP, OBS_START, N_RANGES, N_BUF_TILES,
    stride_qh, stride_qm, stride_kh, stride_kn, stride_bh, stride_knh, stride_knm, stride_lh,
    stride_mbh, stride_mnh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Grid (buffer tiles + chunk tiles, Hkv). A program owns one key tile (of the buffer, or of
    the chunk's own keys) and sums the softmax probability its keys got from every observation
    query of the group (probabilities rebuilt from tier_attention's lse, as in SnapKV)."""
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    offs_d = tl.arange(0, HEAD_DIM)
    qk_scale = sm_scale * 1.4426950408889634
    if pid < N_BUF_TILES:
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        n_c = tl.minimum(offs_n, CAP - 1)
        inside = tl.zeros([BLOCK_N], dtype=tl.int32)
        for r in range(0, N_RANGES):
            s = tl.load(RANGES + 2 * r)
            e = tl.load(RANGES + 2 * r + 1)
            inside += ((offs_n >= s) & (offs_n < e)).to(tl.int32)
        bias = tl.load(BIAS + kvh.to(tl.int64) * stride_bh + n_c)
        bias_l2 = tl.where(inside > 0, bias * 1.4426950408889634, float("-inf"))
        k = tl.load(K + kvh.to(tl.int64) * stride_kh + n_c[:, None] * stride_kn + offs_d[None, :])
        acc = _mass_sum(Q, LSE, k, bias_l2, offs_n, kvh, O, OBS_START, qk_scale,
                        stride_qh, stride_qm, stride_lh, GROUP, HEAD_DIM, BLOCK_M, BLOCK_N,
                        False, INPUT_PRECISION)
        tl.store(MASS_BUF + kvh * stride_mbh + offs_n, acc, mask=offs_n < CAP)
    else:
        offs_n = (pid - N_BUF_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_c = tl.minimum(offs_n, M - 1)
        k = tl.load(KN + kvh.to(tl.int64) * stride_knh + n_c[:, None] * stride_knm + offs_d[None, :])
        bias_l2 = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc = _mass_sum(Q, LSE, k, bias_l2, offs_n, kvh, O, OBS_START, qk_scale,
                        stride_qh, stride_qm, stride_lh, GROUP, HEAD_DIM, BLOCK_M, BLOCK_N,
                        True, INPUT_PRECISION)
        tl.store(MASS_NEW + kvh * stride_mnh + offs_n, acc, mask=offs_n < M)


# Hopper guesses (H100/H200, head_dim 128): 128-row tiles with 8 warps are FlashAttention-2's
# usual best; the 64-row config covers head_dim 64 and register pressure. Kept small on purpose:
# every config is compiled on the device before the first call returns. Compiled offline for
# sm_90 (benchmarks/sm90_resource_report.py), bf16, head_dim 128: (128, 64, w8, s3) 235 regs,
# no spill, 129 KB smem; (128, 128, w8, s2) 255 regs, 104 B stack; (64, 64, w4, s4) 254 regs,
# no spill. (128, 64, w4) spilled 400 B and was dropped.
_PREFILL_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=4),
]
# Split-K (decode and short chunks): few rows, bandwidth-bound; BLOCK_M is set by the host.
# The per-range loop keeps the two configs it was measured with (H200, benchmarks/results/
# bench_kernels_h200.json). The flat loop adds deeper pipelines: one program per SM must keep
# ~25 KB in flight to pull its 1/132 of HBM bandwidth at an unloaded latency (~32 GB/s x
# ~0.8 us), several times that when every SM streams at once; a BLOCK_N 64 stage of K and V is
# 32 KB. sm_90 resources (offline compile): benchmarks/KERNELS_NOTES.md, flat key loop.
_SPLIT_RANGES_CONFIGS = [
    triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_N": 128}, num_warps=4, num_stages=2),
]
# The flat loop's config is not autotuned but chosen by the buffer slots one split walks
# (capacity / splits): the autotuner timed warm, eager calls at whatever size came first, and its
# pick varied between runs. One pick, BLOCK_N 128 with 2 stages (benchmarks/results/
# bench_kernels_decode_autotuned_h200.json), was 12-23% slower than this rule in the same-run
# sweep of bench_kernels_decode_rule_h200.json (H200, cold, CUDA graph, 33 splits), where the
# rule's config was the fastest or within 0.1 us of it at every size from 8K to 128K slots:
# (64, w4, s4) at 8K (248 slots a split; 10.5 against 11.1 us) and 12416 (12.7 against 12.6),
# (128, w4, s3) from 16K (14.4 against 14.7; 69.1 against 71.3 at 128K).
_SPLIT_SHORT = triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=4)
_SPLIT_LONG = triton.Config({"BLOCK_N": 128}, num_warps=4, num_stages=3)
_SHORT_SPLIT_SLOTS = 512
# Every config the flat loop can run (the sm_90 resource report and the benchmark sweep).
_SPLIT_CONFIGS = _SPLIT_RANGES_CONFIGS + [_SPLIT_SHORT, _SPLIT_LONG]
# A config forced on the flat split path (benchmark sweeps); None: split_config's rule.
SPLIT_CONFIG_OVERRIDE = None


def split_config(cap: int, splits: int) -> triton.Config:
    """The flat split-K loop's tile config for a buffer of ``cap`` slots over ``splits`` splits."""
    if SPLIT_CONFIG_OVERRIDE is not None:
        return SPLIT_CONFIG_OVERRIDE
    return _SPLIT_SHORT if cap <= _SHORT_SPLIT_SLOTS * splits else _SPLIT_LONG


_prefill_fwd = triton.autotune(_PREFILL_CONFIGS, key=["GROUP", "HEAD_DIM", "INPUT_PRECISION"])(
    ssa_attn_fwd_kernel)
_split_ranges_fwd = triton.autotune(
    _SPLIT_RANGES_CONFIGS, key=["GROUP", "HEAD_DIM", "BLOCK_M", "INPUT_PRECISION"])(
    ssa_attn_fwd_kernel)
# How the split-K path walks the buffer keys: "flat" (one loop over the flattened key index) or
# "ranges" (one loop per range, the form measured before it; kept for benchmarks/bench_kernels.py).
KEY_LOOPS = ("flat", "ranges")
# How the split-K partials are merged: "separate" (a second launch, the combine kernel) or
# "separate_pdl" (the same combine kernel launched with programmatic dependent launch, its launch
# overlapping the split kernel; Hopper and later, run as "separate" under the interpreter and on
# GPUs without it). Measured on the H200 (benchmarks/results/bench_kernels_decode_merges_h200.json,
# 33 splits, cold, CUDA graph): separate_pdl 10.9 / 12.5 / 14.3 / 23.0 / 38.3 / 68.8 us at 8K /
# 12416 / 16K / 32K / 64K / 128K slots, separate 0.3-0.7 us slower at every size. A third form,
# "fused" (the split program drawing the last ticket of an atomic counter merges, one launch),
# was 1.3-2.5x slower at every size in two designs (commits 8052445 and 221ad0c): one program
# per KV head reading every partial from L2 is slower than a combine grid of Hq programs. It was
# removed in the tenth session (last present in commit 9892a55).
COMBINES = ("separate", "separate_pdl")
DEFAULT_COMBINE = "separate_pdl"
# Splits the combine kernel merges from one load ([64, D] fp32: 64 registers a thread at
# 4 warps for D 128); more go through its chunked loop.
_COMBINE_SPLITS = 64

# Rows (G * M) up to this use one row block and split-K.
_DECODE_ROWS = 64
_MAX_SPLITS = 128
# Fewest buffer keys a split is given when choosing the split count.
_MIN_KEYS_PER_SPLIT = 128


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_precision(dtype: torch.dtype) -> str:
    if interpreting():
        return "interp"
    return "ieee" if dtype == torch.float32 else "tf32"


def poisoning() -> bool:
    """Tests set SSA_CODE_KERNELS_POISON=1: outputs start as NaN so unwritten elements fail."""
    return os.environ.get("SSA_CODE_KERNELS_POISON", "0") == "1"


def alloc(shape, dtype, device) -> torch.Tensor:
    if poisoning():
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


_SM_COUNT: dict = {}


def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    key = device.index if device.index is not None else torch.cuda.current_device()
    if key not in _SM_COUNT:
        _SM_COUNT[key] = torch.cuda.get_device_properties(key).multi_processor_count
    return _SM_COUNT[key]


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def plan_splits(n_rows: int, hkv: int, cap: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_M, splits) for the split-K path, or (0, 1) for the autotuned prefill path.

    One wave: a program per SM. The forced-split sweep of benchmarks/bench_kernels.py on an
    H200 (132 SMs, 4 KV heads, decode) found 33 splits best or within 1% from 8K to 128K slots
    (16.7 us at 8K against 19.0 us with the two waves used before).
    """
    block_m = max(16, _pow2(n_rows)) if n_rows <= _DECODE_ROWS else 64
    row_blocks = triton.cdiv(n_rows, block_m)
    sms = num_sms(device)
    if n_rows > _DECODE_ROWS and row_blocks * hkv >= sms:
        return 0, 1
    splits = min(triton.cdiv(sms, row_blocks * hkv), triton.cdiv(cap, _MIN_KEYS_PER_SPLIT),
                 _MAX_SPLITS)
    return block_m, max(1, splits)


_PDL: dict = {}


def pdl_supported(device: torch.device) -> bool:
    """Programmatic dependent launch (griddepcontrol): NVIDIA compute capability 9.0 and later,
    compiled kernels only (not the interpreter). Elsewhere "separate_pdl" runs as "separate"."""
    if interpreting() or device.type != "cuda" or torch.version.hip is not None:
        return False
    key = device.index if device.index is not None else torch.cuda.current_device()
    if key not in _PDL:
        _PDL[key] = torch.cuda.get_device_capability(key)[0] >= 9
    return _PDL[key]


def tier_attention_fwd(q, k_buf, v_buf, bias, ranges, k_new, v_new, scale, num_splits=None,
                       key_loop="flat", with_new=True, combine=None):
    """Host launcher. Shapes as in `tier_attention`; all tensors on one device, last dim
    contiguous. `num_splits` forces the split count (tests); None picks it from the sizes.
    `key_loop` (one of KEY_LOOPS) selects the split-K path's loop; prefill always loops per range.
    `combine` (one of COMBINES, None: DEFAULT_COMBINE) selects how split-K partials are merged."""
    hq, m, d = q.shape
    hkv, cap, _ = k_buf.shape
    group = hq // hkv
    n_rows = group * m
    dev = q.device
    out = alloc((hq, m, d), q.dtype, dev)
    lse = alloc((hq, m), torch.float32, dev)
    precision = dot_precision(q.dtype)
    block_m, splits = plan_splits(n_rows, hkv, cap, dev)
    if num_splits is not None:
        splits = int(num_splits)
        block_m = max(16, _pow2(n_rows)) if n_rows <= _DECODE_ROWS else 64
    flat = block_m > 0 and key_loop == "flat"
    n_ranges = ranges.shape[0]
    # At least 8 entries: the eager step's 1-6 occupied ranges and the graph step's six spans
    # share one compiled kernel.
    ranges_pad = max(8, _pow2(n_ranges))
    strides = (q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), v_buf.stride(0),
               v_buf.stride(1), bias.stride(0), k_new.stride(0), k_new.stride(1), v_new.stride(0),
               v_new.stride(1), out.stride(0), out.stride(1), lse.stride(0))
    if interpreting() or q.dtype == torch.float32:
        # The interpreter runs every program in Python: one fixed small config, no autotuning.
        # float32 (a test dtype) gets the same small tiles on the GPU: the Hopper configs'
        # shared memory would overflow at 4 bytes an element.
        cfg = dict(BLOCK_M=block_m or 64, BLOCK_N=32)
        if not interpreting():
            cfg.update(num_warps=4, num_stages=2)
        launch = ssa_attn_fwd_kernel
    elif flat:
        c = split_config(cap, splits)
        cfg = dict(BLOCK_M=block_m, **c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
        launch = ssa_attn_fwd_kernel
    else:
        cfg = {} if block_m == 0 else {"BLOCK_M": block_m}
        launch = _prefill_fwd if block_m == 0 else _split_ranges_fwd
    consts = dict(GROUP=group, HEAD_DIM=d, FLAT_KEYS=flat, RANGES_PAD=ranges_pad,
                  INPUT_PRECISION=precision, WITH_NEW=bool(with_new), **cfg)
    if splits == 1:
        dummy = out
        grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]), hkv, 1)
        launch[grid](q, k_buf, v_buf, bias, ranges, k_new, v_new, out, lse, dummy, dummy,
                     float(scale), m, n_ranges, 1, *strides, SPLIT=False, **consts)
        return out, lse
    o_part = alloc((splits, hq, m, d), torch.float32, dev)
    lse_part = alloc((splits, hq, m), torch.float32, dev)
    grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]), hkv, splits)
    pdl = (combine or DEFAULT_COMBINE) == "separate_pdl" and pdl_supported(dev)
    launch[grid](q, k_buf, v_buf, bias, ranges, k_new, v_new, out, lse, o_part, lse_part,
                 float(scale), m, n_ranges, splits, *strides, SPLIT=True,
                 **(dict(LAUNCH_DEPENDENTS=True) if pdl else {}), **consts)
    ssa_attn_combine_kernel[(hq * m,)](
        o_part, lse_part, out, lse, m, hq * m, splits, out.stride(0), out.stride(1), lse.stride(0),
        HEAD_DIM=d, SPLITS_PAD=max(2, _pow2(splits)), SPLIT_BLOCK=_COMBINE_SPLITS,
        INTERP=interpreting(), num_warps=4,
        **(dict(WAIT_PRIMARY=True, launch_pdl=True) if pdl else {}))
    return out, lse


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def tier_attention(q, k_buf, v_buf, bias, ranges, k_new, v_new, scale, num_splits=None,
                   key_loop="flat", with_new=True, combine=None):
    """Triton tier attention (see `ssa_code.kernels.tier_attention` for the contract).

    q [Hq, M, D]; k_buf, v_buf [Hkv, CAP, D]; bias [Hkv, CAP] float32; ranges [R, 2] int32;
    k_new, v_new [Hkv, M, D]; scale > 0 -> out [Hq, M, D] (q's dtype), lse [Hq, M] float32.
    `num_splits` forces the split-K count (tests, benchmark sweeps); `key_loop` "ranges" runs
    the split-K path's previous per-range loop (benchmark comparison); `with_new=False` leaves
    the chunk's own keys out (k_new, v_new then only give M); `combine` (one of COMBINES, None:
    DEFAULT_COMBINE) picks how split-K partials are merged: "separate" (combine kernel) or
    "separate_pdl" (the same, launched with programmatic dependent launch).
    """
    from .tier_attention_ref import check_tier_attention_args

    check_tier_attention_args(q, k_buf, v_buf, bias, ranges, k_new, v_new, scale)
    if key_loop not in KEY_LOOPS:
        raise ValueError(f"key_loop {key_loop!r} is not one of {KEY_LOOPS}")
    if combine is not None and combine not in COMBINES:
        raise ValueError(f"combine {combine!r} is not one of {COMBINES}")
    if num_splits is not None and int(num_splits) < 1:
        raise ValueError(f"num_splits must be at least 1, got {num_splits}")
    ranges = ranges.to(device=q.device, dtype=torch.int32).contiguous()
    if ranges.shape[0] == 0:
        # A zero-size tensor may have a null data pointer; the kernel reads none of it anyway.
        ranges = torch.zeros(1, 2, dtype=torch.int32, device=q.device)[:0]
    q, k_buf, v_buf, k_new, v_new = map(_last_dim_contiguous, (q, k_buf, v_buf, k_new, v_new))
    bias = _last_dim_contiguous(bias)
    return tier_attention_fwd(q, k_buf, v_buf, bias, ranges, k_new, v_new, scale, num_splits,
                              key_loop, with_new, combine)


def tier_attention_mass_fwd(q_obs, k_buf, bias, ranges, k_new, lse_obs, scale, obs_start):
    """Host launcher for the observation-window attention mass (no autotuning: O is small)."""
    hq, o, d = q_obs.shape
    hkv, cap, _ = k_buf.shape
    m = k_new.shape[1]
    dev = q_obs.device
    mass_buf = alloc((hkv, cap), torch.float32, dev)
    mass_new = alloc((hkv, m), torch.float32, dev)
    block_n = 32 if interpreting() else 64
    n_buf_tiles = triton.cdiv(cap, block_n)
    grid = (n_buf_tiles + triton.cdiv(m, block_n), hkv)
    ssa_attn_mass_kernel[grid](
        q_obs, k_buf, bias, ranges, k_new, lse_obs, mass_buf, mass_new,
        float(scale), o, m, cap, int(obs_start), ranges.shape[0], n_buf_tiles,
        q_obs.stride(0), q_obs.stride(1), k_buf.stride(0), k_buf.stride(1), bias.stride(0),
        k_new.stride(0), k_new.stride(1), lse_obs.stride(0), mass_buf.stride(0), mass_new.stride(0),
        GROUP=hq // hkv, HEAD_DIM=d, BLOCK_M=32 if interpreting() else 64, BLOCK_N=block_n,
        INPUT_PRECISION=dot_precision(q_obs.dtype), num_warps=4, num_stages=2)
    return mass_buf, mass_new


def tier_attention_mass(q_obs, k_buf, bias, ranges, k_new, lse_obs, scale, obs_start):
    """Triton observation-window attention mass (contract: `ssa_code.kernels.tier_attention_mass`).

    q_obs [Hq, O, D]; k_buf [Hkv, CAP, D]; bias [Hkv, CAP]; ranges [R, 2]; k_new [Hkv, M, D];
    lse_obs [Hq, O] -> mass_buf [Hkv, CAP] float32, mass_new [Hkv, M] float32.
    """
    from .tier_attention_ref import check_mass_args

    check_mass_args(q_obs, k_buf, bias, ranges, k_new, lse_obs, scale, obs_start)
    ranges = ranges.to(device=q_obs.device, dtype=torch.int32).contiguous()
    if ranges.shape[0] == 0:
        ranges = torch.zeros(1, 2, dtype=torch.int32, device=q_obs.device)[:0]
    q_obs, k_buf, k_new, bias = map(_last_dim_contiguous, (q_obs, k_buf, k_new, bias))
    lse_obs = _last_dim_contiguous(lse_obs.float())
    return tier_attention_mass_fwd(q_obs, k_buf, bias, ranges, k_new, lse_obs, scale, obs_start)
