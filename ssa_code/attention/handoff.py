"""The hand-off between ``SSALayer.update`` and the registered attention function.

transformers calls ``cache.update(key, value, layer_idx)`` and then the attention function
with what ``update`` returned, in the same thread, but never hands the cache to the
function. ``update`` therefore leaves its layer here, tagged with the exact key tensor it
returned; the attention function takes it only for that tensor.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

_slot = threading.local()


def hand_off(layer: Any, key: torch.Tensor) -> None:
    _slot.layer = layer
    _slot.key = key


def take(key: torch.Tensor) -> Any | None:
    """The layer that returned ``key`` from its last update, or ``None``."""
    layer = getattr(_slot, "layer", None)
    if layer is not None and getattr(_slot, "key", None) is key:
        _slot.layer = None
        _slot.key = None
        return layer
    return None
