"""score_blocks (Triton) against its PyTorch reference."""
from __future__ import annotations

import math

import pytest
import torch
from kernel_testing import assert_close_to_gold, case_params, on

import ssa_code.kernels as K
from ssa_code.kernels.score_blocks_ref import score_blocks_ref

# (hq, hkv, m, n, n_valid, d, num_splits)
CPU_CASES = {
    "m1": (4, 2, 1, 50, 50, 64, None),
    "m63_partial": (6, 2, 63, 100, 77, 128, None),
    "m500_split3": (4, 2, 500, 70, 33, 64, 3),
    "none_valid": (4, 1, 20, 40, 0, 64, None),
}
GPU_CASES = {
    "m1_qwen": (28, 4, 1, 16384, 12345, 128, None),
    "m4000_qwen": (28, 4, 4000, 10000, 9001, 128, None),
    "m16k_qwen": (28, 4, 16384, 16384, 16384, 128, None),
    "m777_d64": (16, 2, 777, 3001, 2999, 64, None),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("device,case", case_params(CPU_CASES, GPU_CASES))
def test_score_blocks_matches_reference(device, case, dtype):
    from ssa_code.kernels.score_blocks_triton import score_blocks

    hq, hkv, m, n, n_valid, d, splits = (CPU_CASES if device == "small" else GPU_CASES)[case]
    if device == "cuda" and dtype == torch.float32 and m > 1000:
        pytest.skip("float32 at prefill size is for the CPU path")
    g = torch.Generator().manual_seed(n + m)
    q = torch.randn(hq, m, d, generator=g).to(device=on(device), dtype=dtype)
    reps = torch.randn(hkv, n, d, generator=g).to(device=on(device), dtype=dtype)
    scale = 1.0 / math.sqrt(d)
    scores = score_blocks(q, reps, n_valid, scale, num_splits=splits)
    assert scores.shape == (hkv, n) and scores.dtype == torch.float32
    assert not torch.isnan(scores).any(), "unwritten (NaN) scores"
    assert torch.isneginf(scores[:, n_valid:]).all()
    gold = score_blocks_ref(q, reps, n_valid, scale, compute_dtype=torch.float64)
    pt = score_blocks_ref(q, reps, n_valid, scale, compute_dtype=dtype)
    assert_close_to_gold(f"{case} {dtype} scores", scores, gold, pt)


def test_score_is_max_over_group_heads_and_queries():
    """A query planted in one head of a group, parallel to one representative, wins that
    representative's score for that group only (reference and dispatcher)."""
    g = torch.Generator().manual_seed(11)
    q = torch.randn(4, 9, 64, generator=g) * 0.01
    reps = torch.randn(2, 6, 64, generator=g)
    q[3, 4] = reps[1, 2] * 10.0  # head 3 is in KV group 1
    s = K.score_blocks(q, reps, 6, 0.125)
    expected = 0.125 * 10.0 * reps[1, 2].dot(reps[1, 2])
    assert torch.allclose(s[1, 2], expected, rtol=1e-5)
    assert s[0].max() < expected / 10


def test_invalid_arguments_raise_value_error():
    q, reps = torch.zeros(4, 3, 64), torch.zeros(2, 10, 64)
    with pytest.raises(ValueError, match="n_valid"):
        K.score_blocks(q, reps, 11, 0.1)
    with pytest.raises(ValueError, match="query heads"):
        K.score_blocks(torch.zeros(3, 3, 64), reps, 10, 0.1)
    with pytest.raises(ValueError, match="head_dim"):
        K.score_blocks(q, torch.zeros(2, 10, 32), 10, 0.1)
