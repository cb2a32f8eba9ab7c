"""Anchor points: tokens that are never consolidated.

SSA's third mechanism. Four kinds of token stay at full resolution:

- sinks: the first ``sinks`` tokens (attention sinks, Xiao et al. 2023, "Efficient
  Streaming Language Models with Attention Sinks");
- the recent window (a ring buffer, see ``layer_state.py``);
- pinned spans the caller marks (file headers, the repository map, the question):
  :class:`PinnedSpans`;
- heavy hitters: tokens with the highest accumulated, decayed attention mass
  (Zhang et al. 2023, "H2O: Heavy-Hitter Oracle"): :func:`select_heavy_hitters`.
"""

from __future__ import annotations

import torch


def merge_spans(spans) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` spans sorted, with overlapping or touching ones joined."""
    merged: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


class PinnedSpans:
    """A sorted set of disjoint half-open position spans ``[start, end)``."""

    def __init__(self) -> None:
        self.starts = torch.empty(0, dtype=torch.int64)
        self.ends = torch.empty(0, dtype=torch.int64)

    def add(self, start: int, end: int) -> None:
        if not (isinstance(start, int) and isinstance(end, int)) or start < 0 or end < start:
            raise ValueError(f"pinned span must satisfy 0 <= start <= end, got [{start!r}, {end!r})")
        if start == end:
            return
        merged = merge_spans(zip(self.starts.tolist() + [start], self.ends.tolist() + [end]))
        self.starts = torch.tensor([s for s, _ in merged], dtype=torch.int64)
        self.ends = torch.tensor([e for _, e in merged], dtype=torch.int64)

    def __len__(self) -> int:
        return int(self.starts.numel())

    def tokens(self) -> int:
        return int((self.ends - self.starts).sum())

    def contains(self, pos: torch.Tensor) -> torch.Tensor:
        """Boolean mask of ``pos`` (any shape, int64) that fall inside a pinned span."""
        if len(self) == 0:
            return torch.zeros_like(pos, dtype=torch.bool)
        starts = self.starts.to(pos.device)
        ends = self.ends.to(pos.device)
        idx = torch.searchsorted(starts, pos.contiguous(), right=True) - 1
        inside = (idx >= 0) & (pos < ends[idx.clamp(min=0)])
        return inside

    def spans(self) -> list[tuple[int, int]]:
        return list(zip(self.starts.tolist(), self.ends.tolist()))


def select_heavy_hitters(
    mass: torch.Tensor, candidates_mass: torch.Tensor, budget: int
) -> torch.Tensor:
    """Which of (current heavy hitters, candidates) to keep, per head.

    Args:
        mass: ``[H, n]`` accumulated mass of the current heavy hitters.
        candidates_mass: ``[H, c]`` accumulated mass of tokens leaving the window.
        budget: slots in the heavy-hitter tier.

    Returns ``[H, min(budget, n + c)]`` int64 indices into ``cat([current, candidates], -1)``,
    highest mass first (ties broken towards the older token, i.e. the lower index).
    """
    both = torch.cat([mass, candidates_mass], dim=-1)
    keep = min(budget, both.shape[-1])
    # Stable: sort by mass descending; equal masses keep their order.
    order = torch.sort(both, dim=-1, descending=True, stable=True).indices
    return order[:, :keep]
