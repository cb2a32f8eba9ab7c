"""Repository context: walk a git repository, parse it with tree-sitter, order and pack it.

Public names (``docs/INTERFACES.md``, section ssa_code.context) are imported lazily, so that
``ssa_code.context.format`` stays importable without tree-sitter, gitpython or tokenizers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PackOptions": "ssa_code.context.pack",
    "PackedContext": "ssa_code.context.pack",
    "FileSpan": "ssa_code.context.pack",
    "pack_repository": "ssa_code.context.pack",
    "map_repository": "ssa_code.context.pack",
    "build_repo_map": "ssa_code.context.repomap",
    "build_outline": "ssa_code.context.repomap",
    "RepoGraph": "ssa_code.context.graph",
    "Definition": "ssa_code.context.graph",
    "Reference": "ssa_code.context.graph",
    "WalkOptions": "ssa_code.context.walk",
    "walk_repository": "ssa_code.context.walk",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ssa_code.context' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
