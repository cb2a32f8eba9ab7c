"""Staging: the blocks relevance scoring chose, brought from the off-GPU store into the tier buffer.

Scoring (``scoring.py``) names the evicted blocks a query needs; their keys and values live in
the store (host RAM, ``store.py``). One :class:`Stager` per layer moves a selection through
three steps, each a call:

1. :meth:`Stager.stash`: the chosen entries (``[3, H, k]``, fixed shape, made on the device)
   are copied to the host asynchronously;
2. :meth:`Stager.prepare`: on the host the entries become block ids; blocks already staged
   keep their slots and the missing ones are read from the store into a page-locked *mirror*
   of the staging tier, which a side stream copies to the device (the compute stream does not
   wait for it);
3. :meth:`Stager.install`: the compute stream waits for that copy and writes the staging tier:
   un-rotated keys, values, positions, keys rotated to their effective positions, biases.

Prefill runs the three back to back: each chunk attends to the blocks its own queries chose.
Decode spreads them over the tokens up to the next selection: the selection made with token
``t``'s query is prepared while the GPU computes a later token, a few layers per token
(``SSACache.prepares_per_step``), and serves from the token after that on (``t + 2`` for the
first layers, ``t + decode_refresh`` for the last). No decode step waits for the host or the
PCIe bus, and no step carries the host work of every layer. Decode already re-selects only
once per ``decode_refresh`` tokens, so a selection a few tokens old is the same kind of
approximation (retrieval at a stride, as InfLLM and Quest do per chunk or per step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ssa_code.attention.positions import rotate
from ssa_code.attention.scoring import expand_entries

if TYPE_CHECKING:
    from ssa_code.attention.layer_state import SSALayer


def _member(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: which of ``a [H, K]`` occur in ``b [H, K]`` (``-1`` never matches)."""
    return (a[:, :, None] == b[:, None, :]).any(-1) & (a >= 0)


class Stager:
    """The staging pipeline of one layer (``cfg.stage_blocks`` blocks of ``cfg.block_size`` slots)."""

    def __init__(self, layer: "SSALayer") -> None:
        self.layer = layer
        cfg = layer.cfg
        h, d, dev, dtype = layer.heads, layer.dim, layer.device, layer.dtype
        # Prefill chunks and decode choose at most top_k of the tier's blocks; a question's exact
        # choice may fill all of them (SSAConfig.exact_top_k).
        self.blocks, self.block, self.size = cfg.stage_blocks, cfg.block_size, cfg.staging
        self.cuda = dev.type == "cuda"
        pin = self.cuda
        # The mirror: what the next install writes, [H, S, D] and positions [H, S]; ids [H, blocks].
        self.host_k = torch.zeros(h, self.size, d, dtype=dtype, pin_memory=pin)
        self.host_v = torch.zeros(h, self.size, d, dtype=dtype, pin_memory=pin)
        self.host_pos = torch.full((h, self.size), -1, dtype=torch.int64, pin_memory=pin)
        self.host_ids = np.full((h, self.blocks), -1, dtype=np.int64)
        k = min(cfg.top_k, layer.index.capacity)
        self.host_entries = torch.zeros(3, h, k, dtype=torch.int64, pin_memory=pin)
        if self.cuda:
            # Where the side stream lands the mirror; install copies it into the tier buffer.
            self.in_k = torch.zeros(h, self.size, d, dtype=dtype, device=dev)
            self.in_v = torch.zeros(h, self.size, d, dtype=dtype, device=dev)
            self.in_pos = torch.full((h, self.size), -1, dtype=torch.int64, device=dev)
            self.stream = torch.cuda.Stream(dev)
            self.stashed_event = torch.cuda.Event()
            self.copied_event = torch.cuda.Event()
            self.installed_event = torch.cuda.Event()
        else:
            self.in_k, self.in_v, self.in_pos = self.host_k, self.host_v, self.host_pos
        self.stashed = False
        self.ready = False

    def device_tensors(self) -> list[torch.Tensor]:
        """The fixed device buffers this pipeline adds to the state (empty on CPU)."""
        return [self.in_k, self.in_v, self.in_pos] if self.cuda else []

    # -- 1. stash ------------------------------------------------------------------------------

    def stash(self, entries: torch.Tensor) -> None:
        """Take ``entries [3, H, k]`` from :func:`~ssa_code.attention.scoring.top_entries`; no wait.

        A selection stashed before and not yet prepared is replaced.
        """
        self.host_entries.copy_(entries, non_blocking=self.cuda)
        if self.cuda:
            self.stashed_event.record()
        self.stashed = True

    # -- 2. prepare ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Turn the stashed entries into block ids and stage them in the mirror (host work)."""
        if not self.stashed:
            return
        self.stashed = False
        if self.cuda:
            self.stashed_event.synchronize()
        self.place(expand_entries(self.host_entries.numpy(), self.blocks))

    def place(self, ids: np.ndarray) -> None:
        """Make the mirror hold blocks ``ids [H, blocks]`` (``-1`` = none) and send it to the device.

        Blocks already in the mirror keep their slots; only missing ones are read from the store,
        into slots whose block is no longer wanted (decode re-selects mostly the same blocks).
        """
        old, b = self.host_ids, self.block
        kept = _member(old, ids)
        needed = (ids >= 0) & ~_member(ids, old)
        if not needed.any() and kept.sum() == (old >= 0).sum():
            return
        new = np.where(kept, old, -1)
        heads, slots, blocks = [], [], []
        for head in range(ids.shape[0]):
            want = ids[head][needed[head]]
            free = np.flatnonzero(~kept[head])[: want.size]
            new[head, free] = want
            heads.append(np.full(want.size, head))
            slots.append(free)
            blocks.append(want)
        if self.cuda:
            # The previous copy out of the mirror must be over before the mirror changes.
            self.copied_event.synchronize()
        first = self.layer.cfg.sinks + new * b
        self.host_pos.view(new.shape[0], self.blocks, b).copy_(
            torch.from_numpy(np.where(new[:, :, None] >= 0, first[:, :, None] + np.arange(b), -1)))
        heads_a, slots_a, blocks_a = np.concatenate(heads), np.concatenate(slots), np.concatenate(blocks)
        if blocks_a.size:
            h, d = self.host_k.shape[0], self.host_k.shape[-1]
            self.layer.store.read_into(heads_a, blocks_a, self.host_k.view(h * self.blocks, b, d),
                                       self.host_v.view(h * self.blocks, b, d), heads_a * self.blocks + slots_a)
        self.host_ids = new
        if self.cuda:
            with torch.cuda.stream(self.stream):
                # The last install must have read the landing buffers.
                self.stream.wait_event(self.installed_event)
                self.in_k.copy_(self.host_k, non_blocking=True)
                self.in_v.copy_(self.host_v, non_blocking=True)
                self.in_pos.copy_(self.host_pos, non_blocking=True)
                self.copied_event.record(self.stream)
        self.ready = True

    # -- 3. install ----------------------------------------------------------------------------

    def install(self) -> None:
        """Write the prepared blocks into the layer's staging tier (device work, no wait on the host)."""
        if not self.ready:
            return
        self.ready = False
        layer = self.layer
        st = slice(layer.STAGE, layer.STAGE + self.size)
        if self.cuda:
            torch.cuda.current_stream().wait_event(self.copied_event)
        # A slot whose block changed starts with no accumulated mass.
        layer.mass[:, st].masked_fill_(self.in_pos != layer.pos[:, st], 0.0)
        eff = layer._eff(self.in_pos)
        layer.k_raw[:, st] = self.in_k
        layer.v[:, st] = self.in_v
        layer.pos[:, st] = self.in_pos
        layer.eff[:, st] = eff
        layer.k[:, st] = rotate(self.in_k, eff, layer.cache.inv_freq_on(layer.device)).to(layer.dtype)
        layer.staged_ids = torch.from_numpy(self.host_ids.copy())
        layer.n_stage = self.size
        layer._remask_staging()
        if self.cuda:
            self.installed_event.record()

    def stage_now(self, ids: np.ndarray) -> None:
        """Stage blocks ``ids [H, top_k]`` at once (:meth:`place`, :meth:`install`); a selection
        stashed and not yet prepared is dropped."""
        self.stashed = False
        self.place(ids)
        self.install()

    def run_now(self, entries: torch.Tensor) -> None:
        """All three steps at once (prefill: the chunk attends to what its own queries chose)."""
        self.stash(entries)
        self.prepare()
        self.install()

    def sync_from_layer(self) -> None:
        """Make the mirror equal the layer's staging tier (after a state was loaded into it)."""
        layer = self.layer
        st = slice(layer.STAGE, layer.STAGE + self.size)
        self.host_k.copy_(layer.k_raw[:, st])
        self.host_v.copy_(layer.v[:, st])
        self.host_pos.copy_(layer.pos[:, st])
        self.host_ids = layer.staged_ids.numpy().copy()
        self.stashed = self.ready = False
