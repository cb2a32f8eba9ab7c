"""Kernel tests run the Triton kernels on CUDA when a GPU is present, and on the CPU under the
Triton interpreter otherwise. TRITON_INTERPRET must be set before the kernel modules are
imported (triton.jit reads it when decorating), so it is set here, at collection time."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Launchers allocate outputs filled with NaN, so an element a kernel never writes fails a test.
os.environ["SSA_CODE_KERNELS_POISON"] = "1"
