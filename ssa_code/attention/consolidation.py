"""Memory consolidation: tokens that leave the window fold into a fixed number of slots.

SSA's second mechanism. Each evicted block of ``B`` tokens becomes one summary slot
holding its mean (un-rotated) key, mean value and count ``n``; a summary is attended
with logit ``q.k + log n``, which is what ``n`` identical keys would receive (the same
log-count trick as token merging, Bolya et al. 2023, and "Anchor-based" KV merging).
When the slots are full the *older half* merges pairwise, so recent history stays fine
and old history grows exponentially coarser (a progressive, log-structured memory).

The retrieval index is bounded the same way: :class:`Consolidated` serves both. Its entries
are per-channel bounds of the keys of a block (as in Quest, Tang et al. 2024), merged into the
bounding box of both when the index consolidates.

Spans and counts are the same for every head (merge decisions depend only on counts and
order), so only keys and values carry a head dimension.
"""

from __future__ import annotations

import torch


class Consolidated:
    """A bounded, ordered list of consolidated entries.

    Per entry: ``key [H, D]`` (un-rotated mean key), ``value [H, D]`` (mean value; the index
    keeps none), ``count`` (tokens or blocks it stands for), ``lo, hi`` (the half-open span
    it covers, in positions or block ids) and ``pos``, its representative position
    ``pos_offset + (lo + hi) * pos_scale // 2`` (the middle of the span).
    Means are stored in ``dtype`` and computed in float32.
    """

    def __init__(self, capacity: int, heads: int, dim: int, device: torch.device, dtype: torch.dtype,
                 with_values: bool, pos_offset: int = 0, pos_scale: int = 1, bounds: bool = False) -> None:
        self.capacity = capacity
        self.bounds = bounds
        self.with_values = with_values
        self.pos_offset, self.pos_scale = pos_offset, pos_scale
        self.key = torch.zeros(heads, capacity, dim, dtype=dtype, device=device)
        self.value = torch.zeros(heads, capacity, dim, dtype=dtype, device=device) if with_values else None
        self.count = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.lo = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.hi = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.pos = torch.full((capacity,), -1, dtype=torch.int64, device=device)
        self.n = 0

    def nbytes(self) -> int:
        tensors = [self.key, self.count, self.lo, self.hi, self.pos]
        if self.value is not None:
            tensors.append(self.value)
        return sum(t.numel() * t.element_size() for t in tensors)

    def add(self, key: torch.Tensor, value: torch.Tensor | None, count: torch.Tensor,
            lo: torch.Tensor, hi: torch.Tensor) -> bool:
        """Append ``e`` entries (``key/value [H, e, D]``, ``count/lo/hi [e]``), merging if full.

        Returns whether older entries were merged (their slots then all changed).
        """
        if self.capacity == 0:
            return False
        n, e = self.n, count.shape[0]
        if n + e <= self.capacity:
            # Room left: write in place, no merge.
            self.key[:, n:n + e] = key.to(self.key.dtype)
            if self.with_values:
                self.value[:, n:n + e] = value.to(self.value.dtype)
            self.count[n:n + e] = count.float()
            self.lo[n:n + e] = lo
            self.hi[n:n + e] = hi
            self.pos[n:n + e] = self.pos_offset + (lo + hi) * self.pos_scale // 2
            self.n = n + e
            return False
        key_all = torch.cat([self.key[:, :n].float(), key.float()], dim=1)
        value_all = torch.cat([self.value[:, :n].float(), value.float()], dim=1) if self.with_values else None
        count_all = torch.cat([self.count[:n], count.float()])
        lo_all = torch.cat([self.lo[:n], lo])
        hi_all = torch.cat([self.hi[:n], hi])
        merged = False
        while count_all.shape[0] > self.capacity:
            merged = True
            key_all, value_all, count_all, lo_all, hi_all = merge_older_half(
                key_all, value_all, count_all, lo_all, hi_all, bounds=self.bounds)
        m = count_all.shape[0]
        self.key[:, :m] = key_all
        if self.with_values:
            self.value[:, :m] = value_all
        self.count[:m] = count_all
        self.lo[:m] = lo_all
        self.hi[:m] = hi_all
        self.pos[:m] = self.pos_offset + (lo_all + hi_all) * self.pos_scale // 2
        self.count[m:] = 0
        self.pos[m:] = -1
        self.n = m
        return merged


def merge_older_half(
    key: torch.Tensor, value: torch.Tensor | None, count: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
    bounds: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge entries ``(0, 1), (2, 3), ...`` of the older half; the newer half is kept as is.

    Means are weighted by count, so a merged entry equals the mean over all tokens it covers.
    With ``bounds``, ``key`` and ``value`` are per-channel upper and lower bounds and merge
    by max and min (the box of both boxes).
    Shapes: ``key/value [H, m, D]``, ``count/lo/hi [m]``; returns the same with fewer entries.
    """
    m = count.shape[0]
    # The older half, rounded up to an even count (at least one pair).
    half = max(2, min(m - m % 2, (m // 2 + 1) // 2 * 2))
    w = count[:half].view(half // 2, 2)
    total = w.sum(-1)
    k_pairs = key[:, :half].reshape(key.shape[0], half // 2, 2, key.shape[-1])
    if bounds:
        k_merged = k_pairs.amax(2)
    else:
        k_merged = (k_pairs * w[None, :, :, None]).sum(2) / total[None, :, None]
    v_merged = None
    if value is not None:
        v_pairs = value[:, :half].reshape(value.shape[0], half // 2, 2, value.shape[-1])
        if bounds:
            v_merged = v_pairs.amin(2)
        else:
            v_merged = (v_pairs * w[None, :, :, None]).sum(2) / total[None, :, None]
        v_merged = torch.cat([v_merged, value[:, half:]], dim=1)
    lo_m = lo[:half].view(half // 2, 2)[:, 0]
    hi_m = hi[:half].view(half // 2, 2)[:, 1]
    return (torch.cat([k_merged, key[:, half:]], dim=1), v_merged, torch.cat([total, count[half:]]),
            torch.cat([lo_m, lo[half:]]), torch.cat([hi_m, hi[half:]]))
