"""ssa-code: ask questions about a whole git repository with Streaming Sparse Attention.

``SSAConfig``, ``SSACache`` and ``patch`` load on first use, so commands that never touch
the model (``ssa-code pack``, ``ssa-code map``) do not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["SSAConfig", "SSACache", "patch", "__version__"]

if TYPE_CHECKING:
    from ssa_code.attention import SSACache, SSAConfig, patch


def __getattr__(name: str) -> Any:
    if name in ("SSAConfig", "SSACache", "patch"):
        from ssa_code import attention

        return getattr(attention, name)
    raise AttributeError(f"module 'ssa_code' has no attribute {name!r}")
