"""Suite-wide set-up that must happen before any test module is imported.

Without CUDA, Triton kernels run under the Triton interpreter. ``triton.jit`` reads
TRITON_INTERPRET when a kernel module is imported, and any test module (or a library it
imports) may import one first, so it is set here, at the root, before collection.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
