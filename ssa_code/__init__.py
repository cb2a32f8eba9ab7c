"""ssa-code: ask questions about a whole git repository with Streaming Sparse Attention."""

from ssa_code.attention import SSACache, SSAConfig, patch

__version__ = "0.1.0"
__all__ = ["SSAConfig", "SSACache", "patch", "__version__"]
