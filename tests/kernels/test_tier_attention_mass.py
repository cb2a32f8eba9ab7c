"""tier_attention_mass (Triton) against its PyTorch reference."""
from __future__ import annotations

import math

import pytest
import torch
from kernel_testing import assert_close_to_gold, case_params, make_tier_inputs, on

import ssa_code.kernels as K
from ssa_code.kernels.tier_attention_ref import tier_attention_mass_ref, tier_attention_ref

# (hq, hkv, m, obs, cap, d, ranges, summaries, masked)
CPU_CASES = {
    "m63_obs17": (4, 2, 63, 17, 100, 64, [[60, 97], [3, 50]], [4], [[10, 20]]),
    "decode": (6, 2, 1, 1, 50, 128, [[0, 50]], [], []),
    "no_ranges": (4, 2, 100, 40, 70, 64, [], [], []),
}
GPU_CASES = {
    "m4096_obs64": (28, 4, 4096, 64, 12000, 128, [[0, 64], [100, 5200], [6000, 11999]], [150],
                    [[7000, 7100]]),
    "m1000_obs33_d64": (16, 2, 1000, 33, 3000, 64, [[1, 2999]], [10], []),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device,case", case_params(CPU_CASES, GPU_CASES))
def test_mass_matches_reference(device, case, dtype):
    from ssa_code.kernels.tier_attention_triton import tier_attention_mass

    hq, hkv, m, obs, cap, d, ranges, summaries, masked = (
        CPU_CASES if device == "small" else GPU_CASES)[case]
    inputs = make_tier_inputs(hq, hkv, m, cap, d, ranges, dtype, on(device), seed=m + obs,
                              summaries=summaries, masked=masked)
    q, kb, vb, bias, r, kn, vn = inputs
    scale = 1.0 / math.sqrt(d)
    _, lse = tier_attention_ref(*inputs, scale)
    q_obs, lse_obs = q[:, m - obs:], lse[:, m - obs:]
    mass_buf, mass_new = tier_attention_mass(q_obs, kb, bias, r, kn, lse_obs, scale, m - obs)
    assert mass_buf.shape == (hkv, cap) and mass_new.shape == (hkv, m)
    assert torch.isfinite(mass_buf).all() and torch.isfinite(mass_new).all(), "unwritten outputs"
    gold_b, gold_n = tier_attention_mass_ref(q_obs.double(), kb.double(), bias.double(), r,
                                             kn.double(), lse_obs.double(), scale, m - obs,
                                             compute_dtype=torch.float64)
    pt_b, pt_n = tier_attention_mass_ref(q_obs, kb, bias, r, kn, lse_obs, scale, m - obs,
                                         compute_dtype=dtype)
    assert_close_to_gold(f"{case} {dtype} mass_buf", mass_buf, gold_b, pt_b)
    assert_close_to_gold(f"{case} {dtype} mass_new", mass_new, gold_n, pt_n)
    # Each observation query's probabilities sum to one over buffer + chunk.
    total = gold_b.sum() + gold_n.sum()
    assert abs(total.item() - hq * obs) < 1e-6 * hq * obs
    outside = torch.ones(cap, dtype=torch.bool)
    for s, e in ranges:
        outside[s:e] = False
    assert (mass_buf[:, outside.to(mass_buf.device)] == 0).all()


def test_obs_start_must_match_chunk():
    inputs = make_tier_inputs(4, 2, 10, 30, 64, [[0, 20]], torch.float32, "cpu", seed=2)
    q, kb, vb, bias, r, kn, vn = inputs
    with pytest.raises(ValueError, match="obs_start"):
        K.tier_attention_mass(q[:, 6:], kb, bias, r, kn, torch.zeros(4, 4), 0.1, 5)
