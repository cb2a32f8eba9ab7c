"""Plain PyTorch references for the tier attention kernels (``tier_attention_triton.py``).

They compute the same functions as the Triton kernels with explicit gathers and a full softmax,
in float32 by default (``compute_dtype`` selects another precision: float64 for a gold
reference in tests, the inputs' own dtype for the "PyTorch in the kernel's dtype" error that
bounds the kernel's error). Queries are processed in sub-chunks so that memory stays bounded
at prefill sizes (M up to 16K over tens of thousands of keys).
"""
from __future__ import annotations

import torch

from .checks import check_3d, check_dtype, check_head_dim, check_like_q, check_scale

# Budget for one chunk's logits tensor [Hq, chunk, T + M], in elements (~0.5 GiB in float32).
_LOGIT_ELEMS = 1 << 27


def _shape(name, x, shape):
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")


def check_ranges(ranges, cap: int) -> None:
    """ranges [R, 2] integer; checked against the buffer only on the CPU (no device sync)."""
    if ranges.dim() != 2 or ranges.shape[1] != 2:
        raise ValueError(f"ranges has shape {tuple(ranges.shape)}, expected [R, 2]")
    if ranges.dtype.is_floating_point or ranges.dtype == torch.bool:
        raise ValueError(f"ranges has dtype {ranges.dtype}, expected an integer dtype")
    if ranges.device.type == "cpu":
        prev_end = None
        for s, e in sorted(map(tuple, ranges.tolist())):
            if not (0 <= s <= e <= cap):
                raise ValueError(f"range [{s}, {e}) is not inside the buffer of {cap} slots")
            if prev_end is not None and s < prev_end and e > s:
                raise ValueError(f"range [{s}, {e}) overlaps the range ending at {prev_end}")
            if e > s:
                prev_end = e


def check_tier_attention_args(q, k_buf, v_buf, bias, ranges, k_new, v_new, scale) -> None:
    """ValueError naming the bad argument, for the public tier_attention functions."""
    check_3d("q", q, "[Hq, M, D]")
    hq, m, d = q.shape
    check_3d("k_buf", k_buf, "[Hkv, CAP, D]")
    hkv, cap, _ = k_buf.shape
    check_dtype(q)
    check_head_dim(d)
    if m < 1:
        raise ValueError(f"the chunk has {m} queries, expected at least 1")
    if hkv < 1 or hq % hkv:
        raise ValueError(f"{hq} query heads are not a multiple of {hkv} KV heads")
    _shape("k_buf", k_buf, (hkv, cap, d))
    _shape("v_buf", v_buf, (hkv, cap, d))
    _shape("bias", bias, (hkv, cap))
    _shape("k_new", k_new, (hkv, m, d))
    _shape("v_new", v_new, (hkv, m, d))
    for name, x in (("k_buf", k_buf), ("v_buf", v_buf), ("k_new", k_new), ("v_new", v_new)):
        check_like_q(name, x, q)
    if bias.dtype != torch.float32 or bias.device != q.device:
        raise ValueError(f"bias must be float32 on {q.device}, got {bias.dtype} on {bias.device}")
    check_ranges(ranges, cap)
    check_scale(scale)


def check_mass_args(q_obs, k_buf, bias, ranges, k_new, lse_obs, scale, obs_start) -> None:
    """ValueError naming the bad argument, for the public tier_attention_mass functions."""
    if q_obs.dim() != 3 or k_new.dim() != 3:
        raise ValueError(f"q_obs {tuple(q_obs.shape)} and k_new {tuple(k_new.shape)} must be 3-d")
    hq, o, d = q_obs.shape
    m = k_new.shape[1]
    # tier_attention's checks with the observation queries standing in for the chunk.
    check_tier_attention_args(q_obs, k_buf, k_buf, bias, ranges, k_new[:, :o], k_new[:, :o], scale)
    _shape("k_new", k_new, (k_buf.shape[0], m, d))
    _shape("lse_obs", lse_obs, (hq, o))
    if not (0 <= int(obs_start) and int(obs_start) + o == m):
        raise ValueError(f"obs_start {obs_start} + {o} observation queries != chunk length {m}")


def range_list(ranges: torch.Tensor, cap: int) -> list[tuple[int, int]]:
    """The non-empty half-open ``ranges`` [R, 2] as (start, end) pairs, in order."""
    rs = ranges.detach().to("cpu", torch.int64).tolist()
    for s, e in rs:
        if not (0 <= s <= e <= cap):
            raise ValueError(f"range [{s}, {e}) is not inside the buffer of {cap} slots")
    return [(s, e) for s, e in rs if e > s]


def gather_ranges(ranges: torch.Tensor, cap: int) -> torch.Tensor:
    """Slot indices of the half-open ``ranges`` [R, 2], concatenated in order -> int64 [T]."""
    rs = range_list(ranges, cap)
    if not rs:
        return torch.zeros(0, dtype=torch.int64)
    return torch.cat([torch.arange(s, e, dtype=torch.int64) for s, e in rs])


def _query_chunk(hq: int, m: int, t: int) -> int:
    return max(1, min(m, _LOGIT_ELEMS // max(1, hq * (t + m))))


def tier_attention_ref(q, k_buf, v_buf, bias, ranges, k_new, v_new, scale, *,
                       compute_dtype=torch.float32, out_dtype=None, with_new=True):
    """Attention of the chunk's queries over buffer ranges (with bias) + its own keys (causal).

    q [Hq, M, D]; k_buf, v_buf [Hkv, CAP, D]; bias [Hkv, CAP] float32; ranges [R, 2] int;
    k_new, v_new [Hkv, M, D]. Returns out [Hq, M, D] (``out_dtype``, default q's dtype) and
    lse [Hq, M] float32 (natural log, over buffer + causal chunk). ``with_new=False`` leaves
    the chunk's keys out; a query that then sees no key gets out 0 and lse -inf.
    """
    hq, m, d = q.shape
    hkv, cap, _ = k_buf.shape
    group = hq // hkv
    dev = q.device
    ct = compute_dtype
    # The attended buffer ranges, then the chunk's own keys, gathered once per call: one
    # [Hkv, T + M, D] copy is far smaller than a prefill chunk's logits, which one product per
    # range had to be concatenated into (a 2048-query chunk over 5.3K keys: 1.5x faster on the
    # 2-core CPU; decode unchanged).
    spans = range_list(ranges, cap)
    t = sum(e - s for s, e in spans)
    k_all = torch.cat([k_buf[:, s:e] for s, e in spans] + [k_new], 1).to(ct)
    v_all = torch.cat([v_buf[:, s:e] for s, e in spans] + [v_new], 1).to(ct)
    acc_t = torch.float32 if ct != torch.float64 else ct
    bias_buf = torch.cat([bias[:, s:e] for s, e in spans] or [bias[:, :0]], 1).to(acc_t)  # [Hkv, T]
    # GQA without copying K/V per query head: the G heads of a KV group are one batch entry,
    # their rows stacked head-major ([Hkv, G * c, D] against [Hkv, T + M, D]).
    q_g = q.view(hkv, group, m, d)
    out = torch.empty(hkv, group, m, d, dtype=ct, device=dev)
    lse = torch.empty(hkv, group, m, dtype=torch.float32, device=dev)
    step = _query_chunk(hq, m, t)
    for i0 in range(0, m, step):
        i1 = min(m, i0 + step)
        c = i1 - i0
        qc = q_g[:, :, i0:i1].to(ct).reshape(hkv, group * c, d)
        # Bias and causal mask added in float32 (or float64) whatever the compute dtype.
        logits = (torch.matmul(qc, k_all.transpose(1, 2)) * scale).to(acc_t)  # [Hkv, G * c, T + M]
        logits[:, :, :t] += bias_buf[:, None, :]
        qi = torch.arange(i0, i1, device=dev).repeat(group)[:, None]
        kj = torch.arange(m, device=dev)[None, :]
        logits[:, :, t:].masked_fill_((kj > qi)[None] | (not with_new), float("-inf"))
        # Softmax as the kernel computes it: exp of the logits less the row max, in place, and
        # the division by their sum after the product with V. A row that sees no key (max
        # -inf) gets p = 0, out 0 and lse -inf, not NaN.
        row_max = logits.amax(-1)
        shift = torch.where(torch.isfinite(row_max), row_max, 0.0)
        p = logits.sub_(shift[:, :, None]).exp_()
        total = p.sum(-1)
        lse[:, :, i0:i1] = (shift + total.log()).float().view(hkv, group, c)
        o = torch.matmul(p.to(ct), v_all) / torch.where(total > 0, total, 1.0)[:, :, None].to(ct)
        out[:, :, i0:i1] = o.view(hkv, group, c, d)
    return out.view(hq, m, d).to(out_dtype or q.dtype), lse.view(hq, m)


def tier_attention_mass_ref(q_obs, k_buf, bias, ranges, k_new, lse_obs, scale, obs_start, *,
                            compute_dtype=torch.float32):
    """Softmax mass per slot summed over observation queries and each group's query heads.

    q_obs [Hq, O, D] (chunk queries obs_start .. obs_start + O - 1); k_buf [Hkv, CAP, D];
    bias [Hkv, CAP]; ranges [R, 2]; k_new [Hkv, M, D]; lse_obs [Hq, O] float32.
    Returns mass_buf [Hkv, CAP] float32 (0 outside ranges) and mass_new [Hkv, M] float32.
    """
    hq, o, d = q_obs.shape
    hkv, cap, _ = k_buf.shape
    m = k_new.shape[1]
    group = hq // hkv
    dev = q_obs.device
    ct = compute_dtype
    idx = gather_ranges(ranges, cap).to(dev)
    qf = q_obs.to(ct).reshape(hkv, group * o, d)  # rows of a group: head-major
    lse = lse_obs.to(ct).reshape(hkv, group * o)
    kb = k_buf[:, idx].to(ct)  # [Hkv, T, D]
    lb = torch.matmul(qf, kb.transpose(1, 2)) * scale + bias[:, idx].to(ct)[:, None, :]
    mass_buf = torch.zeros(hkv, cap, dtype=torch.float32, device=dev)
    mass_buf[:, idx] = torch.exp(lb - lse[:, :, None]).sum(1).float()
    ln = torch.matmul(qf, k_new.to(ct).transpose(1, 2)) * scale  # [Hkv, G*O, M]
    qi = (obs_start + torch.arange(o, device=dev)).repeat(group)[:, None]
    kj = torch.arange(m, device=dev)[None, :]
    ln = ln.masked_fill((kj > qi)[None], float("-inf"))
    mass_new = torch.exp(ln - lse[:, :, None]).sum(1).float()
    return mass_buf, mass_new
