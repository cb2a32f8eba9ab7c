"""Streaming Sparse Attention: the constant-memory cache and its transformers integration.

Where each mechanism lives:

- ``config.py``: :class:`SSAConfig`, the tier sizes;
- ``scoring.py``: relevance scoring (which evicted blocks a query attends to);
- ``consolidation.py``: memory consolidation (summary slots, progressive merging);
- ``anchors.py``: anchor points (sinks, pinned spans, heavy hitters);
- ``store.py``: the off-GPU store of full-resolution blocks;
- ``positions.py``: RoPE re-rotation and the distances far tiers are shown at;
- ``layer_state.py``: one layer's fixed-size buffer and the step that runs the above;
- ``cache.py``: :class:`SSACache`, a transformers ``Cache``;
- ``integration.py``: :func:`patch` and the registered attention function.
"""

from ssa_code.attention.cache import SUPPORTED_FAMILIES, SSACache
from ssa_code.attention.config import SSAConfig
from ssa_code.attention.integration import patch

__all__ = ["SSAConfig", "SSACache", "patch", "SUPPORTED_FAMILIES"]
