"""Compile a Triton kernel for sm_90 (H100/H200) on a machine without a GPU.

For checks that need no timing: resource reports (`benchmarks/sm90_resource_report.py`) and
tests that a kernel's loop is software-pipelined (`tests/kernels/test_block_lse.py`). Uses the
ptxas bundled with the Triton wheel. Run it with TRITON_INTERPRET unset: interpreted kernels
cannot be compiled.
"""
from __future__ import annotations

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)


def compile_sm90(fn, types: dict[str, str], consts: dict, num_warps: int, num_stages: int,
                 not_divisible: tuple[str, ...] = ()):
    """The compiled kernel (``.asm["ttgir"]``, ``["ptx"]``, ``["cubin"]``, ``.metadata``).

    ``types``: argument name -> Triton type (``*bf16``, ``fp32``; unnamed ones are ``i32``);
    ``consts``: every constexpr's value (ASTSource does not apply the kernel's defaults).
    Pointers and ``stride*`` arguments are marked divisible by 16, as the launcher specializes
    them in a real call; ``not_divisible`` names those that are not (a stride of 1).
    """
    sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in fn.arg_names}
    div16 = [n for n in fn.arg_names if n not in consts and n not in not_divisible
             and (sig[n].startswith("*") or n.startswith("stride"))]
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in div16}
    return triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs), target=TARGET,
                          options={"num_warps": num_warps, "num_stages": num_stages})
