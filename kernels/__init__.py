"""Triton kernels of Streaming Sparse Attention, each with a plain PyTorch reference beside it.

Public functions dispatch per call: the Triton kernel when the tensors are on CUDA (or when
SSA_CODE_KERNELS=triton, which with TRITON_INTERPRET=1 runs the kernels on the CPU for tests),
the PyTorch reference otherwise; SSA_CODE_KERNELS=torch forces the reference. Triton is imported
only when a kernel is first used, so importing this package never needs a working Triton.

    out, lse = tier_attention(q, k_buf, v_buf, bias, ranges, k_new, v_new, scale)
    scores = score_blocks(q, reps, n_valid, scale)
    lse = block_lse(q, k, block_size, scale)
    mass_buf, mass_new = tier_attention_mass(q_obs, k_buf, bias, ranges, k_new, lse_obs, scale, obs_start)

Shapes and semantics: docs/INTERFACES.md, section ssa_code.kernels.

Files: `<op>_triton.py` (jitted kernels, launcher, Triton entry point) beside `<op>_ref.py`
(PyTorch reference). The Triton modules are not named `<op>.py` because importing a submodule
binds its name on the package, which would replace the dispatcher function of the same name.
"""
from __future__ import annotations

if __name__ == "kernels":
    # Imported through the repository root on sys.path, not as ssa_code.kernels: the importer
    # wants the PyPI package of that name (transformers does); see _shadowing.py. The rest of
    # this file then runs into a module nobody keeps, which is why its imports are absolute.
    from ssa_code.kernels._shadowing import hand_over_to_installed

    hand_over_to_installed(__name__)

import os

import torch

from ssa_code.kernels.block_lse_ref import block_lse_ref, check_block_lse_args
from ssa_code.kernels.score_blocks_ref import check_score_blocks_args, score_blocks_ref
from ssa_code.kernels.tier_attention_ref import (
    check_mass_args,
    check_tier_attention_args,
    tier_attention_mass_ref,
    tier_attention_ref,
)

__all__ = [
    "backend",
    "block_lse",
    "block_lse_ref",
    "merge_attention",
    "score_blocks",
    "score_blocks_ref",
    "tier_attention",
    "tier_attention_mass",
    "tier_attention_mass_ref",
    "tier_attention_ref",
    "triton_available",
]

_TRITON_OK: bool | None = None


def triton_available() -> bool:
    """True when the Triton kernel modules import (Triton installed and usable)."""
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            from . import score_blocks_triton as _sb  # noqa: F401
            from . import tier_attention_triton as _ta  # noqa: F401

            _TRITON_OK = True
        except Exception:  # ImportError, or a Triton that fails at import on this machine
            _TRITON_OK = False
    return _TRITON_OK


def backend(device: torch.device, prefer: str = "auto") -> str:
    """"triton" or "torch" for tensors on `device`.

    `prefer` is the caller's choice (SSAConfig.kernels); a set SSA_CODE_KERNELS overrides it.
    """
    choice = os.environ.get("SSA_CODE_KERNELS", prefer).lower()
    if choice not in ("auto", "triton", "torch"):
        raise ValueError(f"SSA_CODE_KERNELS={choice!r}: expected auto, triton or torch")
    if choice == "torch":
        return "torch"
    if choice == "triton":
        if not triton_available():
            raise RuntimeError("SSA_CODE_KERNELS=triton but Triton cannot be imported")
        return "triton"
    return "triton" if device.type == "cuda" and triton_available() else "torch"


def tier_attention(q, k_buf, v_buf, bias, ranges, k_new, v_new, scale, prefer: str = "auto", *,
                   with_new: bool = True):
    """Attention over buffer ranges (additive per-slot bias) + the chunk's own keys (causal).

    q [Hq, M, D]; k_buf, v_buf [Hkv, CAP, D]; bias [Hkv, CAP] float32; ranges [R, 2] int32;
    k_new, v_new [Hkv, M, D] -> out [Hq, M, D] (q's dtype), lse [Hq, M] float32.
    ``with_new=False``: the buffer ranges only (a query with no key gets out 0, lse -inf), for
    a pass merged with another through the lse (:func:`merge_attention`).
    """
    if backend(q.device, prefer) == "triton":
        from .tier_attention_triton import tier_attention as fast

        return fast(q, k_buf, v_buf, bias, ranges, k_new, v_new, scale, with_new=with_new)  # validates too
    check_tier_attention_args(q, k_buf, v_buf, bias, ranges, k_new, v_new, scale)
    return tier_attention_ref(q, k_buf, v_buf, bias, ranges, k_new, v_new, scale, with_new=with_new)


def merge_attention(out_a, lse_a, out_b, lse_b):
    """Attention over the union of two disjoint key sets from the two passes' results.

    out [Hq, M, D], lse [Hq, M] float32 each -> (out, lse) as one pass over both key sets;
    ``lse_b`` may be -inf (a pass that saw no key)."""
    lse = torch.logaddexp(lse_a, lse_b)
    # A row that saw no key in either pass keeps -inf and a zero output.
    shift = torch.where(torch.isfinite(lse), lse, 0.0)
    w_a = (lse_a - shift).exp()[..., None]
    w_b = (lse_b - shift).exp()[..., None]
    return (out_a.float() * w_a + out_b.float() * w_b).to(out_a.dtype), lse


def score_blocks(q, reps, n_valid, scale, prefer: str = "auto"):
    """q [Hq, M, D]; reps [Hkv, N, D]; n_valid int -> scores [Hkv, N] float32 (max over the
    group's heads and the M queries of scale * q . rep; -inf from n_valid on)."""
    if backend(q.device, prefer) == "triton":
        from .score_blocks_triton import score_blocks as fast

        return fast(q, reps, n_valid, scale)  # validates too
    check_score_blocks_args(q, reps, n_valid, scale)
    return score_blocks_ref(q, reps, n_valid, scale)


def block_lse(q, k, block_size, scale, prefer: str = "auto"):
    """q [H, R, D]; k [H, n * B, D] -> [H, R, n] float32: per row, the log of the summed
    exp(scale * q . k) over each block of ``block_size`` keys (unnormalised)."""
    if backend(q.device, prefer) == "triton":
        from .block_lse_triton import block_lse as fast

        return fast(q, k, block_size, scale)  # validates too
    check_block_lse_args(q, k, block_size, scale)
    return block_lse_ref(q, k, block_size, scale)


def tier_attention_mass(q_obs, k_buf, bias, ranges, k_new, lse_obs, scale, obs_start, prefer: str = "auto"):
    """Observation-window softmax mass per slot: mass_buf [Hkv, CAP], mass_new [Hkv, M] float32."""
    if backend(q_obs.device, prefer) == "triton":
        from .tier_attention_triton import tier_attention_mass as fast

        return fast(q_obs, k_buf, bias, ranges, k_new, lse_obs, scale, obs_start)  # validates too
    check_mass_args(q_obs, k_buf, bias, ranges, k_new, lse_obs, scale, obs_start)
    return tier_attention_mass_ref(q_obs, k_buf, bias, ranges, k_new, lse_obs, scale, obs_start)
