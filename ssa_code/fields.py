"""``FIELD=VALUE`` changes to a dataclass, each value typed like the field's current value.

Shared by the options that change one config field from the command line: the needle
benchmark's ``--ssa-set`` (an ``SSAConfig``) and ``scripts/train_tiny.py``'s ``--set`` (its
``TrainConfig``).
"""

from __future__ import annotations

from typing import Any, Collection, Sequence

_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _typed(raw: str, current: Any) -> Any:
    """``raw`` as a value of ``current``'s type; raises ValueError when it is not one."""
    low = raw.lower()
    if low == "none":
        return None
    if isinstance(current, bool):
        if low not in _TRUE + _FALSE:
            raise ValueError
        return low in _TRUE
    if isinstance(current, tuple):
        kind = type(current[0]) if current else int
        return tuple(_typed(part.strip(), kind()) for part in raw.split(",") if part.strip())
    if isinstance(current, (int, float)):
        return type(current)(raw)
    if current is None:  # an optional number left unset
        return int(raw)
    return raw


def parse_fields(cfg: Any, items: Sequence[str], option: str = "--set",
                 exclude: Collection[str] = ()) -> dict[str, Any]:
    """``["summaries=0", "exact_question=false"]`` -> ``{"summaries": 0, "exact_question": False}``.

    Each value takes the type of the field's current value in the dataclass instance ``cfg``:
    ``true/false/yes/no/1/0`` for booleans, comma-separated items for tuples, ``none`` for
    optional fields. Raises ValueError, its message naming ``option``, for an item that is not
    ``FIELD=VALUE``, a field ``cfg`` lacks (or one in ``exclude``), or a value of the wrong type.
    """
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or name not in cfg.__dataclass_fields__ or name in exclude:
            raise ValueError(f"{option} wants FIELD=VALUE with a field of {type(cfg).__name__}, got {item!r}")
        current = getattr(cfg, name)
        raw = raw.strip()
        try:
            out[name] = _typed(raw, current)
        except ValueError:
            raise ValueError(f"{option} {name}: {raw!r} is not a valid {type(current).__name__}") from None
    return out
