"""Argument checks shared by the kernels' public functions (raised as one-line ValueErrors)."""
from __future__ import annotations

import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = (16, 32, 64, 128, 256)


def check_3d(name: str, x, layout: str) -> None:
    """``x`` has three dims (``layout`` names them in the message, e.g. ``[H, R, D]``)."""
    if x.dim() != 3:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {layout}")


def check_dtype(q) -> None:
    """The query dtype every kernel takes."""
    if q.dtype not in DTYPES:
        raise ValueError(f"q has dtype {q.dtype}, expected float16, bfloat16 or float32")


def check_head_dim(d: int) -> None:
    """The head dims the kernels' tiles support."""
    if d not in HEAD_DIMS:
        raise ValueError(f"head_dim {d} is not supported (16, 32, 64, 128 or 256)")


def check_like_q(name: str, x, q) -> None:
    """``x`` has ``q``'s dtype and device."""
    if x.dtype != q.dtype or x.device != q.device:
        raise ValueError(f"{name} is {x.dtype} on {x.device}, q is {q.dtype} on {q.device}")


def check_scale(scale) -> None:
    """The softmax scale: positive and finite."""
    if not (float(scale) > 0.0 and float(scale) < float("inf")):
        raise ValueError(f"scale must be positive and finite, got {scale}")
