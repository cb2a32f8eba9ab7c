"""Shared helpers of the kernel tests: devices, input builders, precision-scaled comparisons."""
from __future__ import annotations

import math

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
GPU = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
# Small cases run everywhere: on the GPU when there is one, else on the CPU under the Triton
# interpreter (conftest.py). Real-size cases run on CUDA only.
SMALL_DEVICE = "cuda" if HAS_CUDA else "cpu"
DEVICES = [pytest.param("small", id="small"), pytest.param("cuda", id="cuda", marks=GPU)]


def case_params(cpu_cases, gpu_cases) -> list:
    """``(device, case)`` parameters: every CPU case as "small", every GPU case as "cuda" (GPU only)."""
    return ([pytest.param("small", c, id=f"small-{c}") for c in cpu_cases]
            + [pytest.param("cuda", c, id=f"cuda-{c}", marks=GPU) for c in gpu_cases])


def on(device: str) -> str:
    """The torch device of a test parameter: "small" -> SMALL_DEVICE."""
    return SMALL_DEVICE if device == "small" else device


def make_tier_inputs(hq, hkv, m, cap, d, ranges, dtype, device, seed, summaries=(), masked=()):
    """Random q/k/v of a tier buffer and a chunk. bias: 0 for plain slots, log n for the
    `summaries` slots, -inf for every slot outside `ranges` and for the `masked` spans
    (slots there still hold finite random values, as a zero-initialised buffer would)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    q = rnd(hq, m, d)
    k_buf, v_buf = rnd(hkv, cap, d), rnd(hkv, cap, d)
    k_new, v_new = rnd(hkv, m, d), rnd(hkv, m, d)
    bias = torch.full((hkv, cap), float("-inf"))
    for s, e in ranges:
        bias[:, s:e] = 0.0
    for slot in summaries:
        counts = torch.randint(2, 64, (hkv,), generator=g).float()
        bias[:, slot] = torch.log(counts)
    for s, e in masked:
        bias[:, s:e] = float("-inf")
    bias = bias.to(device)
    r = torch.tensor(ranges, dtype=torch.int32).reshape(-1, 2).to(device)
    return q, k_buf, v_buf, bias, r, k_new, v_new


def max_err(x: torch.Tensor, gold: torch.Tensor) -> float:
    """Max |x - gold| where gold is finite; inf if x is not finite there or -inf mismatches."""
    x, gold = x.double(), gold.double()
    fin = torch.isfinite(gold)
    if not torch.equal(torch.isneginf(x), torch.isneginf(gold)):
        return math.inf
    if not torch.isfinite(x[fin]).all():
        return math.inf
    return (x[fin] - gold[fin]).abs().max().item() if fin.any() else 0.0


def assert_close_to_gold(name, out, gold, torch_same_dtype, factor=2.0):
    """Kernel error vs a float64 gold at most `factor` x the error of the same computation done
    by PyTorch in the kernel's dtype, plus a floor of a few float32 ulps of the gold's scale."""
    err = max_err(out, gold)
    err_pt = max_err(torch_same_dtype, gold)
    scale = max(1.0, gold[torch.isfinite(gold)].abs().max().item()) if torch.isfinite(gold).any() else 1.0
    floor = 1e-5 * scale
    assert err <= factor * err_pt + floor, (
        f"{name}: kernel max error {err:.3e} > {factor} x PyTorch {torch_same_dtype.dtype} "
        f"error {err_pt:.3e} + {floor:.1e}")
    return err, err_pt
