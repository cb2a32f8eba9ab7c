"""Fused tier attention for Streaming Sparse Attention: one online-softmax pass over the occupied
slot ranges of a layer's tier buffer (non-causal, additive per-slot bias) and the chunk's own
keys (causal).

Method: FlashAttention-2 (Dao, 2023) forward: fp32 online softmax in base 2, one program per
block of query rows, K/V tiles streamed through the inner loop. GQA: the G query heads of a KV
group are packed into the row dimension (row r = g * M + m), so a program's K/V tile serves
every head whose rows it holds and decode (M = 1) still fills a tensor-core tile. Decode and
short chunks use split-K over the attended keys (flash-decoding, Dao et al. 2023) in one
launch: each split writes a partial (out, lse) in fp32 and takes a ticket (an atomic add on a
per-(row block, KV head) counter); the split that draws the last ticket merges the partials
(the "last block" pattern of CUDA's threadFenceReduction sample and of CUTLASS's serial
split-K) and resets the counter. The merge therefore costs no second launch; its partials
are still in L2. Split count: `plan_splits` (one wave of long splits; swept by
benchmarks/bench_kernels.py).

Contract details (see docs/INTERFACES.md): ranges are read straight from the buffer (no
gathered copy); a slot whose bias is -inf contributes nothing, provided its K/V hold finite
values (0 * NaN is NaN inside the P @ V product, so buffers must be zero-initialised, not
torch.empty); ranges must lie inside the buffer and not overlap (validated only when `ranges`
is a CPU tensor, to avoid a device sync per call). The split-K tickets live in one cached
buffer per device (`split_counters`): launches on one stream and CUDA-graph replays are safe,
two launches running at the same time on two streams of one device are not; the first call
must come before graph capture (it allocates the buffer).

Trust: correctness is tested on CPU under the Triton interpreter (small sizes, fp32/bf16/fp16,
head_dim 64/128, forced split counts 1-16; the interpreter runs programs one after the other,
so there the last split always merges) and on CUDA against the PyTorch reference at real sizes,
where programs finish in any order (tests marked gpu: repeated launches and CUDA-graph replays
must give the same bits, and the checks in benchmarks/bench_kernels.py). The memory ordering
was checked in the sm_90 SASS (benchmarks/sm90_resource_report.py compiles it): barrier, then
one thread's MEMBAR.GPU + ATOMG.ADD + CCTL.IVALL, then the merge's L2 (.cg) loads. Prefill
configs were measured on an H200 (BENCHMARKS.md); the split-K configs and split count are
guesses until the sweep has run.
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
def _merge_splits(O_PART, LSE_PART, OUT, LSE, row0, n_rows, kvh, M, n_q, NUM_SPLITS,
                  stride_oh, stride_om, stride_lh,
                  GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                  MERGE_ROWS: tl.constexpr, MERGE_SPLITS: tl.constexpr, INTERP: tl.constexpr):
    """Merges the NUM_SPLITS partial (out, lse) of rows [row0, row0 + BLOCK_M) of KV head `kvh`
    (flash-decoding's combine) and writes out and lse. MERGE_ROWS rows x MERGE_SPLITS splits are
    loaded at once ([MERGE_SPLITS, MERGE_ROWS, HEAD_DIM] fp32, 32 KB at most): the partials sit
    in L2, so the merge costs about one L2 round trip per chunk, not one per split."""
    offs_d = tl.arange(0, HEAD_DIM)
    offs_s = tl.arange(0, MERGE_SPLITS)
    row_end = tl.minimum(row0 + BLOCK_M, n_rows)
    for r0 in range(row0, row_end, MERGE_ROWS):
        rows = r0 + tl.arange(0, MERGE_ROWS)
        row_ok = rows < row_end
        rows_c = tl.minimum(rows, row_end - 1)
        head = kvh * GROUP + rows_c // M
        qm = rows_c % M
        prow = head.to(tl.int64) * M + qm
        m_run = tl.full([MERGE_ROWS], -1.0e30, dtype=tl.float32)
        den = tl.zeros([MERGE_ROWS], dtype=tl.float32)
        acc = tl.zeros([MERGE_ROWS, HEAD_DIM], dtype=tl.float32)
        for s0 in range(0, NUM_SPLITS, MERGE_SPLITS):
            s = s0 + offs_s
            s_ok = s < NUM_SPLITS
            idx = s.to(tl.int64)[:, None] * n_q + prow[None, :]
            # .cg: read through L2, never a stale L1 line (the partials come from other SMs).
            lse_b = tl.load(LSE_PART + idx, mask=s_ok[:, None], other=float("-inf"),
                            cache_modifier=".cg")
            o_b = tl.load(O_PART + idx[:, :, None] * HEAD_DIM + offs_d[None, None, :],
                          mask=s_ok[:, None, None], other=0.0, cache_modifier=".cg")
            # Empty splits have lse -inf and weigh 0; the finite start keeps exp() NaN-free.
            m_new = tl.maximum(m_run, tl.max(lse_b, 0))
            alpha = tl.exp(m_run - m_new)
            w = tl.exp(lse_b - m_new[None, :])
            den = den * alpha + tl.sum(w, 0)
            acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * o_b, 0)
            m_run = m_new
        # The split holding the row's largest lse weighs 1 (the last split holds the diagonal
        # key, so it is finite): den >= 1 on every real row.
        o = acc / den[:, None]
        tl.store(OUT + head[:, None].to(tl.int64) * stride_oh + qm[:, None] * stride_om
                 + offs_d[None, :], cast(o, OUT.dtype.element_ty, INTERP), mask=row_ok[:, None])
        tl.store(LSE + head.to(tl.int64) * stride_lh + qm, m_run + tl.log(den), mask=row_ok)


@triton.jit(do_not_specialize=["NUM_SPLITS"])
def ssa_attn_fwd_kernel(
    Q, K, V, BIAS, RANGES, KN, VN, OUT, LSE, O_PART, LSE_PART, COUNTERS,
    sm_scale, M, N_RANGES, NUM_SPLITS,
    stride_qh, stride_qm, stride_kh, stride_kn, stride_vh, stride_vn, stride_bh,
    stride_knh, stride_knm, stride_vnh, stride_vnm, stride_oh, stride_om, stride_lh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr, MERGE_ROWS: tl.constexpr, MERGE_SPLITS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Grid (row blocks, Hkv, splits). Rows r in [0, GROUP * M) of KV head `kvh` are query m = r % M
    of head kvh * GROUP + r // M. Split s covers an equal share of the buffer's attended keys in
    range order; the last split also covers the chunk's own keys (causal).

    SPLIT: each program stores its partial (out, lse) and takes a ticket on the int32 counter of
    its (row block, KV head); the program that draws the last ticket merges that block's
    partials into OUT/LSE and puts the counter back to 0 for the next launch (or graph replay).
    Ordering: every thread's partial stores come before the barrier, the barrier before the
    acq_rel atomic (release: the stores are visible at GPU scope before the ticket is); the
    merging program's loads come after its acquire and bypass L1."""
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

    if split == NUM_SPLITS - 1:
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
        # All threads have stored before the one atomic of the program is issued.
        tl.debug_barrier()
        counter = COUNTERS + pid_m * tl.num_programs(1) + kvh
        ticket = tl.atomic_add(counter, 1, sem="acq_rel")
        if ticket == NUM_SPLITS - 1:
            _merge_splits(O_PART, LSE_PART, OUT, LSE, pid_m * BLOCK_M, n_rows, kvh, M, n_q,
                          NUM_SPLITS, stride_oh, stride_om, stride_lh, GROUP, HEAD_DIM, BLOCK_M,
                          MERGE_ROWS, MERGE_SPLITS, INPUT_PRECISION == "interp")
            # Every split of this block has drawn its ticket: nothing else touches the counter
            # in this launch, and the next launch is ordered after this one on the stream
            # (kernel boundary), so a relaxed write suffices.
            tl.atomic_xchg(counter, 0, sem="relaxed")
    else:
        o_ptrs = OUT + head[:, None].to(tl.int64) * stride_oh + qm[:, None] * stride_om + offs_d[None, :]
        tl.store(o_ptrs, cast(o, OUT.dtype.element_ty, INPUT_PRECISION == "interp"), mask=row_ok[:, None])
        tl.store(LSE + head.to(tl.int64) * stride_lh + qm, lse, mask=row_ok)


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
# With one long split per SM (plan_splits) a program must keep enough K/V bytes in flight on
# its own: the 4-stage config holds three 32 KB tiles in flight. sm_90, bf16, head_dim 128,
# fused merge included: BLOCK_M 16 (decode): (64, w4, s3) 72 KB smem, 139 regs; (64, w4, s4)
# 105 KB, 135 regs; (128, w4, s2) 74 KB, 128 regs + 24 B stack (loop bounds). BLOCK_M 64:
# 116 / 148 / 149 KB, 251-255 regs, at most 24 B stack.
_SPLIT_CONFIGS = [
    triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_N": 128}, num_warps=4, num_stages=2),
]
_prefill_fwd = triton.autotune(_PREFILL_CONFIGS, key=["GROUP", "HEAD_DIM", "INPUT_PRECISION"])(
    ssa_attn_fwd_kernel)
_split_fwd = triton.autotune(_SPLIT_CONFIGS, key=["GROUP", "HEAD_DIM", "BLOCK_M", "INPUT_PRECISION"])(
    ssa_attn_fwd_kernel)

# Rows (G * M) up to this use one row block and split-K.
_DECODE_ROWS = 64
_MAX_SPLITS = 128
# Fewest buffer slots a split is given when choosing the split count (two 128-slot tiles).
_MIN_KEYS_PER_SPLIT = 256
# Programs per SM the split count aims for (see plan_splits).
_SPLIT_WAVES = 1
# Partials loaded at once by the merge: [MERGE_SPLITS, MERGE_ROWS, D] fp32 up to this many
# elements (32 KB, 64 registers a thread at 4 warps).
_MERGE_ELEMS = 8192


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

    Heuristic (decode and short chunks are bandwidth-bound): one wave of programs, about one
    per SM (`_SPLIT_WAVES`), each streaming a long contiguous share of the keys, rather than
    many short splits. Longer splits keep the K/V pipeline of each program full for longer
    (its prologue and epilogue are paid once per split) and leave fewer partials for the
    merge, which runs on one program per (row block, KV head) after the others finish. A
    split gets at least `_MIN_KEYS_PER_SPLIT` slots of the buffer's capacity, so small buffers
    use fewer programs. Decode with Qwen2.5-7B heads (4 KV heads) on 132 SMs: 33 splits
    (8192 slots: shares rounded up to whole tiles give 32 splits of 256 keys and a last one
    holding only the query's own key; 131072: 33 splits of about 4000).
    `python benchmarks/bench_kernels.py` sweeps the forced split count at each decode size;
    the constants above are to be set from that sweep."""
    block_m = max(16, _pow2(n_rows)) if n_rows <= _DECODE_ROWS else 64
    row_blocks = triton.cdiv(n_rows, block_m)
    sms = num_sms(device)
    if n_rows > _DECODE_ROWS and row_blocks * hkv >= sms:
        return 0, 1
    splits = min(triton.cdiv(_SPLIT_WAVES * sms, row_blocks * hkv),
                 triton.cdiv(cap, _MIN_KEYS_PER_SPLIT), _MAX_SPLITS)
    return block_m, max(1, splits)


_COUNTERS: dict = {}


def split_counters(device: torch.device, n: int) -> torch.Tensor:
    """The fused split-K merge's tickets: int32, one per (row block, KV head), zero between
    launches (the merging program resets its counter), cached per device and grown when a
    launch needs more. Launches on one stream (and CUDA-graph replays) run one after the
    other and may share it; two launches running concurrently on two streams of one device
    would draw each other's tickets: not supported. The buffer is allocated outside graph
    capture: call tier_attention once before capturing (as Triton's autotuner needs anyway)."""
    index = device.index
    if device.type == "cuda" and index is None:
        index = torch.cuda.current_device()
    key = (device.type, index)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("tier_attention: split-K counters must be allocated before CUDA "
                               "graph capture; run one call at these sizes before capturing")
        buf = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


def tier_attention_fwd(q, k_buf, v_buf, bias, ranges, k_new, v_new, scale, num_splits=None):
    """Host launcher. Shapes as in `tier_attention`; all tensors on one device, last dim
    contiguous. `num_splits` forces the split count (tests, benchmark sweep); None picks it
    with `plan_splits`. One kernel launch in every case."""
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
    n_ranges = ranges.shape[0]
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
    else:
        cfg = {} if block_m == 0 else {"BLOCK_M": block_m}
        launch = _prefill_fwd if block_m == 0 else _split_fwd
    if splits == 1:
        grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]), hkv, 1)
        launch[grid](q, k_buf, v_buf, bias, ranges, k_new, v_new, out, lse, out, lse, lse,
                     float(scale), m, n_ranges, 1, *strides, GROUP=group, HEAD_DIM=d,
                     SPLIT=False, MERGE_ROWS=1, MERGE_SPLITS=1, INPUT_PRECISION=precision, **cfg)
        return out, lse
    o_part = alloc((splits, hq, m, d), torch.float32, dev)
    lse_part = alloc((splits, hq, m), torch.float32, dev)
    counters = split_counters(dev, triton.cdiv(n_rows, block_m) * hkv)
    merge_rows = min(block_m, _pow2(n_rows), 16)
    merge_splits = max(1, min(16, _MERGE_ELEMS // (merge_rows * d)))
    grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]), hkv, splits)
    launch[grid](q, k_buf, v_buf, bias, ranges, k_new, v_new, out, lse, o_part, lse_part,
                 counters, float(scale), m, n_ranges, splits, *strides, GROUP=group, HEAD_DIM=d,
                 SPLIT=True, MERGE_ROWS=merge_rows, MERGE_SPLITS=merge_splits,
                 INPUT_PRECISION=precision, **cfg)
    return out, lse


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def tier_attention(q, k_buf, v_buf, bias, ranges, k_new, v_new, scale, num_splits=None):
    """Triton tier attention (see `ssa_code.kernels.tier_attention` for the contract).

    q [Hq, M, D]; k_buf, v_buf [Hkv, CAP, D]; bias [Hkv, CAP] float32; ranges [R, 2] int32;
    k_new, v_new [Hkv, M, D]; scale > 0 -> out [Hq, M, D] (q's dtype), lse [Hq, M] float32.
    """
    from .tier_attention_ref import check_tier_attention_args

    check_tier_attention_args(q, k_buf, v_buf, bias, ranges, k_new, v_new, scale)
    ranges = ranges.to(device=q.device, dtype=torch.int32).contiguous()
    if ranges.shape[0] == 0:
        # A zero-size tensor may have a null data pointer; the kernel reads none of it anyway.
        ranges = torch.zeros(1, 2, dtype=torch.int32, device=q.device)[:0]
    q, k_buf, v_buf, k_new, v_new = map(_last_dim_contiguous, (q, k_buf, v_buf, k_new, v_new))
    bias = _last_dim_contiguous(bias)
    return tier_attention_fwd(q, k_buf, v_buf, bias, ranges, k_new, v_new, scale, num_splits)


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
