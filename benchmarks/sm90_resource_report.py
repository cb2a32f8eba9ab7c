"""Compile every autotune config of the SSA kernels for sm_90 (Hopper) without a GPU and print
the resource report: shared memory, registers, stack (spills), and whether wgmma and cp.async
made it into the PTX. Uses the ptxas/cuobjdump bundled with the Triton wheel.

    python benchmarks/sm90_resource_report.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import triton

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from ssa_code.kernels import block_lse_triton as BL  # noqa: E402
from ssa_code.kernels import score_blocks_triton as SB  # noqa: E402
from ssa_code.kernels import tier_attention_triton as TA  # noqa: E402
from ssa_code.kernels.sm90_compile import compile_sm90  # noqa: E402

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resources(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True,
                             text=True).stdout
    finally:
        os.unlink(f.name)
    lines = [ln.strip() for ln in out.splitlines() if "REG" in ln]
    return " ".join(lines[0].split()[:3]) if lines else "?"


def report(fn, types, consts, num_warps, num_stages, not_divisible=()):
    """One line per compiled config (arguments as for ``compile_sm90``)."""
    t0 = time.time()
    k = compile_sm90(fn, types, consts, num_warps, num_stages, not_divisible)
    ptx = k.asm["ptx"]
    shown = {c: v for c, v in consts.items()
             if c.startswith("BLOCK") or c in ("SPLIT", "FLAT_KEYS")}
    print(f"{fn.__name__} {shown} w{num_warps} s{num_stages}: smem {k.metadata.shared} B, "
          f"{resources(k.asm['cubin'])}, wgmma {'wgmma' in ptx}, cp.async {'cp.async' in ptx}, "
          f"compile {time.time() - t0:.1f} s", flush=True)


def main():
    bf16 = "*bf16"
    fwd_types = dict(Q=bf16, K=bf16, V=bf16, KN=bf16, VN=bf16, OUT=bf16, BIAS="*fp32",
                     O_PART="*fp32", LSE_PART="*fp32", LSE="*fp32", RANGES="*i32",
                     sm_scale="fp32")
    base = dict(GROUP=7, HEAD_DIM=128, INPUT_PRECISION="tf32")
    # Every constexpr is given (ASTSource does not apply the kernel's defaults).
    fwd = dict(base, RANGES_PAD=8, WITH_NEW=True, LAUNCH_DEPENDENTS=False)
    for c in TA._PREFILL_CONFIGS:
        report(TA.ssa_attn_fwd_kernel, fwd_types, dict(fwd, SPLIT=False, FLAT_KEYS=False, **c.kwargs),
               c.num_warps, c.num_stages)
    # The split-K path: the flat key loop (used) and the per-range loop (kept to compare).
    for flat, configs in ((True, TA._SPLIT_CONFIGS), (False, TA._SPLIT_RANGES_CONFIGS)):
        for c in configs:
            for block_m in (16, 64):
                report(TA.ssa_attn_fwd_kernel, fwd_types,
                       dict(fwd, SPLIT=True, FLAT_KEYS=flat, BLOCK_M=block_m, **c.kwargs),
                       c.num_warps, c.num_stages)
    report(TA.ssa_attn_combine_kernel, dict(O_PART="*fp32", LSE_PART="*fp32", OUT=bf16, LSE="*fp32"),
           dict(HEAD_DIM=128, SPLITS_PAD=128, SPLIT_BLOCK=16, INTERP=False), 4, 3)
    report(TA.ssa_attn_mass_kernel,
           dict(Q=bf16, K=bf16, KN=bf16, BIAS="*fp32", RANGES="*i32", LSE="*fp32",
                MASS_BUF="*fp32", MASS_NEW="*fp32", sm_scale="fp32"),
           dict(base, BLOCK_M=64, BLOCK_N=64), 4, 2)
    # The SSA index scores with the head dim doubled ([q+ | q-] . [upper | lower]): 128 and 256.
    for head_dim in (128, 256):
        for c in SB._CONFIGS:
            report(SB.ssa_score_blocks_kernel, dict(Q=bf16, REPS=bf16, PART="*fp32", sm_scale="fp32"),
                   dict(base, HEAD_DIM=head_dim, **c.kwargs), c.num_warps, c.num_stages)
    # The question's exact choice, as block_lse_fwd launches it on a GPU.
    report(BL.ssa_block_lse_kernel, dict(Q=bf16, K=bf16, OUT="*fp32", sm_scale="fp32"),
           dict(HEAD_DIM=128, BLOCK=64, BLOCK_R=64, BLOCKS_PER_PROG=16, INPUT_PRECISION="ieee"), 4, 2,
           not_divisible=("stride_or",))


if __name__ == "__main__":
    main()
