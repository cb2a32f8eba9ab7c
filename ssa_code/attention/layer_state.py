"""One layer's SSA state: every tier in one fixed-size buffer, and the step that runs it.

Layout of the tier buffer (slots, per KV head; sizes from :class:`SSAConfig`)::

    [ sinks | pinned | heavy | summaries | staging | window ring ]
      far tiers: keys kept un-rotated too (k_raw)  | keys at true positions

- ``k, v [H, CAP, D]``: what attention reads (keys rotated to their effective positions);
- ``k_raw [H, WIN, D]``: un-rotated keys of the far tiers, so re-rotation never compounds
  rounding error;
- ``pos [H, CAP]``: true position of each slot (``-1`` empty); ``eff [H, WIN]``: the
  position a far key is currently rotated to;
- ``bias [H, CAP]``: ``log n`` for summaries, ``0`` for tokens, ``-inf`` for empty or
  masked slots; ``mass [H, CAP]``: accumulated, decayed attention mass.

A forward step for a chunk of ``M`` queries (:meth:`SSALayer.attend`):

1. re-rotate far keys if the chunk moved their effective positions (``positions.py``);
2. score the index and stage the chosen blocks from the store (``scoring.py``, ``staging.py``,
   ``store.py``); a decode step only installs the blocks chosen a few tokens earlier; a
   question's chunk (``SSACache.select_exact``) scores every stored block exactly instead, and
   decode keeps its choice;
3. attend over the occupied ranges of the buffer plus the chunk itself, causally
   (``ssa_code.kernels.tier_attention``);
4. accumulate the observation window's attention mass (heavy hitters, citations), and in
   decode score the index for the next selection;
5. commit the chunk to the window; whole blocks that fall out of it go to the store, the
   index, the summaries, the pinned tier or the heavy hitters (``consolidation.py``,
   ``anchors.py``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers.cache_utils import CacheLayerMixin

from ssa_code.attention import handoff
from ssa_code.attention.anchors import select_heavy_hitters
from ssa_code.attention.config import SSAConfig
from ssa_code.attention.consolidation import Consolidated
from ssa_code.attention.positions import effective_positions, rotate, rotate_box
from ssa_code.attention.scoring import exact_block_scores, pick_with_neighbours, top_entries
from ssa_code.attention.staging import Stager
from ssa_code.attention.store import BlockStore, make_store, to_device_runs

if TYPE_CHECKING:
    from ssa_code.attention.cache import SSACache

NEG_INF = float("-inf")


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host index tensor on ``device`` without a synchronising copy (through pinned memory)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class SSALayer(CacheLayerMixin):
    """The SSA state of one attention layer (batch size 1)."""

    is_compileable = False
    is_sliding = False
    is_croppable = False

    def __init__(self, cache: "SSACache", layer_idx: int) -> None:
        super().__init__()
        self.cache = cache
        self.cfg: SSAConfig = cache.ssa_config
        self.layer_idx = layer_idx
        self.heads = cache.num_kv_heads
        self.dim = cache.head_dim
        cfg = self.cfg
        # Segment offsets in the tier buffer.
        self.SINK = 0
        self.PIN = cfg.sinks
        self.HEAVY = self.PIN + cfg.pinned
        self.SUMM = self.HEAVY + cfg.heavy
        self.STAGE = self.SUMM + cfg.summaries
        self.WIN = self.STAGE + cfg.staging
        self.CAP = self.WIN + cfg.ring
        self.seen = 0
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.device: torch.device | None = None

    # -- allocation -----------------------------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.allocate(key_states.device, key_states.dtype)

    def allocate(self, device: torch.device, dtype: torch.dtype) -> None:
        cfg, h, d = self.cfg, self.heads, self.dim
        self.device, self.dtype = torch.device(device), dtype
        self.k = torch.zeros(h, self.CAP, d, dtype=dtype, device=device)
        self.v = torch.zeros(h, self.CAP, d, dtype=dtype, device=device)
        self.k_raw = torch.zeros(h, self.WIN, d, dtype=dtype, device=device)
        self.pos = torch.full((h, self.CAP), -1, dtype=torch.int64, device=device)
        self.eff = torch.full((h, self.WIN), -1, dtype=torch.int64, device=device)
        self.bias = torch.full((h, self.CAP), NEG_INF, dtype=torch.float32, device=device)
        self.mass = torch.zeros(h, self.CAP, dtype=torch.float32, device=device)
        self.summaries = Consolidated(cfg.summaries, h, d, self.device, dtype, with_values=True)
        # Index entries: per-channel upper (key) and lower (value) bounds of a block's keys, rotated
        # at their true positions.
        self.index = Consolidated(cfg.index_size if cfg.store != "none" else 0, h, d, self.device, dtype,
                                  with_values=True, pos_offset=cfg.sinks, pos_scale=cfg.block_size, bounds=True)
        # The bounds rotated to the entries' effective positions, [upper | lower]: scored as
        # [q+ | q-] . [upper | lower], the largest q.k any key in the box can reach.
        self.index_rot = torch.zeros(h, self.index.capacity, 2 * d, dtype=dtype, device=device)
        self.store: BlockStore = make_store(cfg.store, h, cfg.block_size, d, dtype, self.device,
                                            self.cache.store_dir, self.layer_idx)
        self.n_sink = self.n_pin = self.n_heavy = self.n_stage = 0
        self.frontier = cfg.sinks  # first position still in the window (block grid starts at sinks)
        self.floor = 0  # far keys are shown at positions >= floor (0: true positions)
        self.staged_ids = torch.full((h, cfg.stage_blocks), -1, dtype=torch.int64)
        retrieves = bool(cfg.staging and self.index.capacity)
        self.stager = Stager(self) if retrieves else None
        # Decode's entry scores land here (fixed shape: a CUDA graph writes them).
        self._entries = torch.zeros(3, h, min(cfg.top_k, self.index.capacity) if retrieves else 0,
                                    dtype=torch.int64, device=device)
        # Attention mass per slot not yet added to the cache's source mass (static steps).
        self._src_acc: torch.Tensor | None = None
        self.restage = False
        # The staging tier holds the question's exact choice (_exact_select): decode keeps it.
        self.exact_staged = False
        # The last exact choice's block scores [H, N] (after masking held blocks), kept for
        # diagnostics (the needle benchmark reports the needle's rank in them).
        self.exact_scores: torch.Tensor | None = None
        self.decode_steps = 0
        self._prepare_at = 0  # decode step from which the pending selection is prepared
        self._ranges_cache: dict[tuple, torch.Tensor] = {}
        # The static step's ranges live in one tensor for the life of the state: a captured
        # CUDA graph reads them from this address (see refresh_static_ranges).
        self._static_ranges = torch.zeros(6, 2, dtype=torch.int32, device=device)
        self._static_key: tuple[int, ...] | None = None
        self.is_initialized = True

    def fixed_tensors(self) -> list[torch.Tensor]:
        tensors = [self.k, self.v, self.k_raw, self.pos, self.eff, self.bias, self.mass, self.index_rot,
                   self.summaries.key, self.summaries.value, self.summaries.count, self.summaries.lo,
                   self.summaries.hi, self.summaries.pos, self.index.key, self.index.value, self.index.count,
                   self.index.lo, self.index.hi, self.index.pos, self._entries]
        if self.stager is not None:
            tensors += self.stager.device_tensors()
        return [t for t in tensors if t is not None]

    # -- saving and restoring ---------------------------------------------------------------

    COUNTERS = ("seen", "n_sink", "n_pin", "n_heavy", "n_stage", "frontier", "floor", "decode_steps")
    # Counters a state file may lack (written before they existed), with the value they then take.
    OPTIONAL_COUNTERS = {"exact_staged": 0}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = self._fixed_state()
        for field, t in self.store.state().items():
            out[f"store.{field}"] = t
        return out

    def _fixed_state(self) -> dict[str, torch.Tensor]:
        """The state's tensors but the store's blocks (what :meth:`state_tensors` adds)."""
        out = {"k": self.k, "v": self.v, "k_raw": self.k_raw, "pos": self.pos, "eff": self.eff, "bias": self.bias,
               "mass": self.mass, "index_rot": self.index_rot}
        for tier_name, tier in (("summaries", self.summaries), ("index", self.index)):
            for field in ("key", "value", "count", "lo", "hi", "pos"):
                t = getattr(tier, field)
                if t is not None:
                    out[f"{tier_name}.{field}"] = t
        out["store.staged_ids"] = self.staged_ids
        return out

    def checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, int], int]:
        """An in-memory copy of the state for :meth:`rewind`: the fixed tensors cloned where they
        live, the counters, and the store's length (blocks are only appended, so the length
        alone brings the store back)."""
        tensors = {name: t.clone() for name, t in self._fixed_state().items()}
        return tensors, self.counters(), self.store.num_blocks

    def rewind(self, checkpoint: tuple[dict[str, torch.Tensor], dict[str, int], int]) -> None:
        """Return to what :meth:`checkpoint` copied (the copy stays usable for another rewind)."""
        tensors, counters, blocks = checkpoint
        self.store.truncate(blocks)
        self.restore(tensors, counters)
        self.exact_scores = None

    def counters(self) -> dict[str, int]:
        out = {name: int(getattr(self, name)) for name in (*self.COUNTERS, *self.OPTIONAL_COUNTERS)}
        out["summaries.n"] = self.summaries.n
        out["index.n"] = self.index.n
        return out

    def restore(self, tensors: dict[str, torch.Tensor], counters: dict[str, int]) -> None:
        """Load what :meth:`state_tensors` and :meth:`counters` saved (shapes are checked)."""
        store_parts = {}
        for name, t in tensors.items():
            if name.startswith("store."):
                store_parts[name[len("store."):]] = t
                continue
            if "." in name:
                tier_name, field = name.split(".", 1)
                target = getattr(getattr(self, tier_name), field)
            else:
                target = getattr(self, name)
            if target is None or target.shape != t.shape or target.dtype != t.dtype:
                raise ValueError(f"saved tensor {name} has shape {tuple(t.shape)} {t.dtype}, expected "
                                 f"{None if target is None else (tuple(target.shape), target.dtype)}")
            target.copy_(t)
        for name in self.COUNTERS:
            setattr(self, name, int(counters[name]))
        for name, default in self.OPTIONAL_COUNTERS.items():
            setattr(self, name, type(getattr(self, name))(counters.get(name, default)))
        self.summaries.n = int(counters["summaries.n"])
        self.index.n = int(counters["index.n"])
        if "staged_ids" in store_parts:
            self.staged_ids = store_parts.pop("staged_ids").clone()
        if store_parts.get("k") is not None and store_parts["k"].shape[1]:
            self.store.append(store_parts["k"], store_parts["v"])
        if self.stager is not None:
            self.stager.sync_from_layer()
        self._ranges_cache.clear()
        self._static_key = None

    # -- transformers Cache layer API ---------------------------------------------------

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Hold the chunk's keys and values for the attention function (``integration.py``).

        The chunk is committed to the state by :meth:`attend`, which needs the queries.
        """
        if key_states.shape[0] != 1:
            raise ValueError(f"SSACache holds one sequence; got batch size {key_states.shape[0]}")
        if key_states.shape[1] != self.heads or key_states.shape[-1] != self.dim:
            raise ValueError(
                f"SSACache was built for {self.heads} KV heads of dim {self.dim}, got keys of shape "
                f"{tuple(key_states.shape)}: the cache belongs to another model configuration"
            )
        if self.pending is not None:
            raise RuntimeError(
                "SSACache.update was called twice without attention in between: the model is not "
                "patched with ssa_code.patch(model, ssa_config)"
            )
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.pending = (key_states[0], value_states[0])
        handoff.hand_off(self, key_states)
        return key_states, value_states

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        if self.is_initialized:
            self.store.close()
            self.allocate(self.device, self.dtype)
        self.seen = 0
        self.pending = None

    @property
    def batch_size(self) -> int:
        return 1

    # -- the step ---------------------------------------------------------------------------

    @torch.no_grad()
    def attend(self, q: torch.Tensor, scale: float) -> torch.Tensor:
        """Attention of the pending chunk, then commit it.

        Args:
            q: ``[Hq, M, D]`` queries rotated at positions ``seen .. seen + M - 1``.
        Returns ``[Hq, M, D]``. The state is inference-only: nothing here records autograd history.
        """
        from ssa_code.kernels import tier_attention

        assert self.pending is not None
        if self.cache.static_mode:
            return self._attend_static(q, scale)
        k_new, v_new = self.pending
        self.pending = None
        m = q.shape[1]
        p0 = self.seen
        decode = m == 1
        self.flush_sources()
        if decode:
            self.decode_steps += 1
            self.install_selection()
            self.prepare_selection()
        else:
            self.decode_steps = self._prepare_at = 0
        # Decode observes mass (heavy hitters, sources) and selects blocks on selection steps
        # only (once per decode_refresh tokens); prefill does both every chunk.
        selects = decode and self._selects()
        self._rebase(p0, m)
        if decode:
            ranges = self._occupied_ranges()
            out, lse = tier_attention(q, self.k, self.v, self.bias, ranges, k_new, v_new, scale, self.cfg.kernels)
        else:
            out, lse = self._attend_chunk(q, scale, k_new, v_new)
            ranges = self._occupied_ranges()
        if selects or not decode:
            mass_buf, mass_new = self._observe(q, lse, ranges, k_new, scale)
            if self.cache.track_sources:
                self.cache.add_source_mass(self.pos, mass_buf, p0, mass_new)
        else:
            mass_new = torch.zeros(self.heads, m, dtype=torch.float32, device=self.device)
        frontier = self.frontier
        self._commit(k_new, v_new, mass_new, p0)
        if decode and self.frontier != frontier:
            # This step evicted (once per decode_evict blocks): the new index entries take part
            # from the next token on, as they do in prefill, at the cost of one host round trip.
            self._stage_chunk(q, scale)
        elif selects:
            self._stash_decode(self._decode_entries(q, scale))
        return out

    def _observe(self, q: torch.Tensor, lse: torch.Tensor, ranges: torch.Tensor, k_new: torch.Tensor,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the observation window's attention mass to every slot (decayed H2O scores).

        Returns ``mass_buf [H, CAP]`` and ``mass_new [H, M]`` (zero before the window's queries).
        """
        from ssa_code.kernels import tier_attention_mass

        m = q.shape[1]
        obs = min(m, self.cfg.observe)
        mass_buf, mass_new = tier_attention_mass(q[:, m - obs:], self.k, self.bias, ranges, k_new,
                                                 lse[:, m - obs:], scale, m - obs, self.cfg.kernels)
        self.mass.mul_(0.5 ** (m / self.cfg.heavy_half_life)).add_(mass_buf)
        return mass_buf, mass_new

    # -- the static decode step (CUDA graphs) ------------------------------------------------

    def static_step_ok(self) -> bool:
        """Whether the next decode token needs none of the host-side work of :meth:`attend`.

        Such a "plain" step attends and writes the token into its window slot (a selection
        step also observes attention mass and scores the index into a fixed buffer: see
        :meth:`selects_next`): no re-rotation (``rebase_every``) and no eviction (the frontier
        stays). Staging happens between steps (:meth:`install_selection`,
        :meth:`prepare_selection`). Its work is then the same device operations every time,
        with the window slot and position read from device scalars
        (:meth:`SSACache.set_static_step`), so a CUDA graph of each kind can replay it.
        """
        if not self.is_initialized:
            return False
        p0 = self.seen
        if p0 < self.cfg.sinks or self._floor_for(p0, 1) != self.floor:
            return False
        return self._frontier_after(p0 + 1, decode=True) == self.frontier

    def window_slot(self, position: int) -> int:
        """The ring slot that holds window token ``position``."""
        return self.WIN + (position - self.cfg.sinks) % self.cfg.ring

    def _attend_static(self, q: torch.Tensor, scale: float) -> torch.Tensor:
        """A plain decode step (:meth:`static_step_ok`) as fixed device work; changes no host state.

        The whole ring is attended (its empty slots carry bias ``-inf``), so the ranges do not
        change as the window fills; the host counters move in :meth:`advance_static`.
        """
        from ssa_code.kernels import tier_attention

        k_new, v_new = self.pending
        self.pending = None
        ranges = self._static_ranges
        out, lse = tier_attention(q, self.k, self.v, self.bias, ranges, k_new, v_new, scale, self.cfg.kernels)
        slot, pos = self.cache.static_slot, self.cache.static_pos
        if self.cache.static_selects:
            mass_buf, mass_new = self._observe(q, lse, ranges, k_new, scale)
            self._entries.copy_(self._decode_entries(q, scale))
            if self._src_acc is not None:
                self._src_acc.add_(mass_buf).index_add_(1, slot, mass_new)
            self.mass.index_copy_(1, slot, mass_new)
        else:
            self.mass.index_fill_(1, slot, 0.0)
        self.k.index_copy_(1, slot, k_new)
        self.v.index_copy_(1, slot, v_new)
        self.pos.index_copy_(1, slot, pos.expand(self.heads, 1))
        self.bias.index_fill_(1, slot, 0.0)
        return out

    def refresh_static_ranges(self) -> None:
        """Before a static step: the tiers' spans (six, empty ones included) into the static
        ranges, staged blocks installed and the source accumulator ready.

        Eager steps change the tier counts (summaries fill, heavy hitters arrive); the copy
        happens only when they did.
        """
        spans = self._spans(self.cfg.ring)
        key = tuple(e for _, e in spans)
        if key != self._static_key:
            self._static_ranges.copy_(torch.tensor(spans, dtype=torch.int32))
            self._static_key = key
        self.flush_sources()
        if self.cache.track_sources and self._src_acc is None:
            self._src_acc = torch.zeros(self.heads, self.CAP, dtype=torch.float32, device=self.device)
        elif not self.cache.track_sources:
            self._src_acc = None
        self.install_selection()

    def advance_static(self) -> None:
        """Host bookkeeping of one plain decode step run by :meth:`_attend_static` (or its graph)."""
        self.decode_steps += 1
        self.seen += 1
        self.prepare_selection()
        if self._selects():
            assert self.cache.static_selects
            self._stash_decode(self._entries)

    # -- decode's selection pipeline (staging.py) ----------------------------------------------

    def _selects(self, step: int | None = None) -> bool:
        """Whether decode step ``step`` (default: the current one, ``decode_steps``) observes
        mass and selects blocks: once per ``decode_refresh`` tokens, and at the first token
        after the index changed."""
        step = self.decode_steps if step is None else step
        return (self.stager is not None and self.index.n > 0
                and (step % self.cfg.decode_refresh == 0 or self.restage))

    def selects_next(self) -> bool:
        """Whether the next decode step is a selection step (:meth:`_selects`)."""
        return self._selects(self.decode_steps + 1)

    def install_selection(self) -> None:
        """Write the blocks prepared at the previous step into the staging tier."""
        if self.stager is not None:
            self.flush_sources()
            self.stager.install()

    def prepare_selection(self) -> None:
        """Bring the blocks of the pending selection from the store (host work, no wait), once
        it is due: the cache spreads this work over the steps up to the next selection
        (:meth:`SSACache.prepares_per_step`), the first layers first."""
        if self.stager is not None and self.decode_steps >= self._prepare_at:
            self.stager.prepare()

    def _stash_decode(self, entries: torch.Tensor) -> None:
        """Hand decode's choice to the staging pipeline and say when this layer prepares it.

        While the question's exact choice is staged (``exact_staged``) the bound scorer's choice
        is dropped (a graph step scores the index all the same: its work is fixed)."""
        self.restage = False
        if self.exact_staged:
            return
        self.stager.stash(entries)
        self._prepare_at = self.decode_steps + 1 + self.layer_idx // self.cache.prepares_per_step()

    def flush_sources(self) -> None:
        """Add the mass static steps accumulated per slot to the cache's source mass (per
        position), before the slots' contents change."""
        if self._src_acc is not None:
            # Also called from outside the decoder's inference mode (SSACache.source_mass).
            with torch.inference_mode():
                self.cache.add_source_mass(self.pos, self._src_acc, self.seen,
                                           self._src_acc.new_zeros(self.heads, 0))
                self._src_acc.zero_()

    # -- 1. positions -----------------------------------------------------------------------

    def _floor_for(self, p0: int, m: int) -> int:
        """The far-key floor for a step of ``m`` queries at ``p0``: decode re-places far keys once
        per ``rebase_every`` tokens, not every token."""
        ref = p0 - p0 % self.cfg.rebase_every if m == 1 else p0
        return max(0, ref - self.cache.far_distance)

    def _rebase(self, p0: int, m: int) -> None:
        """Move far keys so no query of this chunk sees one farther than ``far_distance``."""
        far = self.cache.far_distance
        floor = self._floor_for(p0, m)
        if floor == self.floor:
            return
        self.floor = floor
        w = self.WIN
        target = effective_positions(self.pos[:, :w], floor + far, far)
        # Rotating every far key (a few thousand per head) costs less than finding the moved
        # ones, which would stall the host on a device synchronisation.
        moved = (target != self.eff)[..., None]
        self.k[:, :w] = torch.where(moved, rotate(self.k_raw, target, self.cache.inv_freq_on(self.device)),
                                    self.k[:, :w])
        self.eff.copy_(target)
        self._rotate_index(0)

    def _rotate_index(self, start: int) -> None:
        """Rotate the bounds of index entries ``start ..`` to their effective positions."""
        n = self.index.n
        if n <= start:
            return
        d = self.dim
        pos = self.index.pos[start:n]
        shift = (self._eff(pos) - pos).expand(self.heads, n - start)
        hi, lo = rotate_box(self.index.key[:, start:n], self.index.value[:, start:n], shift,
                            self.cache.inv_freq_on(self.device))
        self.index_rot[:, start:n, :d] = hi
        self.index_rot[:, start:n, d:] = lo

    def _eff(self, pos: torch.Tensor) -> torch.Tensor:
        return effective_positions(pos, self.floor + self.cache.far_distance, self.cache.far_distance)

    def _write_far(self, start: int, k_raw: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                   bias: torch.Tensor | float, mass: torch.Tensor | float = 0.0) -> None:
        """Write ``n`` far-tier slots from ``start``: ``k_raw, v [H, n, D]``, ``pos [H, n]``."""
        n = k_raw.shape[1]
        if n == 0:
            return
        dst = (slice(None), slice(start, start + n))
        self._write_slots(dst, k_raw, v, pos, mass)
        self.bias[dst] = bias

    def _write_slots(self, dst, k_raw: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                     mass: torch.Tensor | float) -> None:
        """Far-tier slots ``dst`` (an index into ``[H, CAP]``) get un-rotated keys, the keys rotated
        to their effective positions, values, positions and mass (shapes as ``pos[dst]``)."""
        eff = self._eff(pos)
        self.k_raw[dst] = k_raw.to(self.dtype)
        self.k[dst] = rotate(k_raw, eff, self.cache.inv_freq_on(self.device)).to(self.dtype)
        self.v[dst] = v.to(self.dtype)
        self.pos[dst] = pos
        self.eff[dst] = eff
        self.mass[dst] = mass

    # -- 2. relevance scoring and staging ---------------------------------------------------

    def _scores(self, q: torch.Tensor, scale: float, n_valid: int) -> torch.Tensor:
        """``[H, N]`` upper bounds of ``q . k`` over each index entry's box (``-inf`` from ``n_valid``)."""
        from ssa_code.kernels import score_blocks

        # Positive query parts meet the upper bounds, negative parts the lower bounds.
        q2 = torch.cat([q.clamp(min=0), q.clamp(max=0)], dim=-1)
        return score_blocks(q2, self.index_rot, n_valid, scale, self.cfg.kernels)

    def _attend_chunk(self, q: torch.Tensor, scale: float, k_new: torch.Tensor,
                      v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill attention, with the chunk's own selection staged while the GPU works.

        The index is scored first; the tiers the selection does not touch (sinks, pinned, heavy
        hitters, window) and the chunk itself are attended while the host turns the scores into
        blocks (the only host round trip of the step); then summaries (their masks follow the
        staged blocks) and the staged blocks, merged with the first pass through the lse.

        A question's chunk (``SSACache.select_exact``) chooses its blocks after the first pass
        by exact attention over the whole store instead (:meth:`_exact_select`), and marks the
        staging tier ``exact_staged``: decode then keeps those blocks until the next prefill
        chunk chooses again.
        """
        from ssa_code.kernels import merge_attention, tier_attention

        kernels = self.cfg.kernels
        retrieves = self.stager is not None and self.index.n > 0 and self.store.num_blocks > 0
        # A chunk chooses its own blocks: an exact choice made for an earlier question ends here.
        self.exact_staged = retrieves and self.cache.select_exact
        if not retrieves:
            return tier_attention(q, self.k, self.v, self.bias, self._occupied_ranges(), k_new, v_new, scale,
                                  kernels)
        if self.exact_staged:
            self.restage = False
        else:
            self.stager.stash(self._chunk_entries(q, scale))
        sink, pin, heavy, _, _, window = self._spans(self._ring_used())
        out, lse = tier_attention(q, self.k, self.v, self.bias, self._ranges_of((sink, pin, heavy, window)),
                                  k_new, v_new, scale, kernels)
        if self.exact_staged:
            self.stager.stage_now(self._exact_select(q, scale))
        else:
            self.stager.prepare()
            self.stager.install()
        # After the install: the summaries' masks and the staging tier's count have changed.
        summ, stage = self._spans(self._ring_used())[3:5]
        second = self._ranges_of((summ, stage))
        if second.shape[0]:
            out2, lse2 = tier_attention(q, self.k, self.v, self.bias, second, k_new, v_new, scale, kernels,
                                        with_new=False)
            out, lse = merge_attention(out, lse, out2, lse2)
        return out, lse

    def _stage_chunk(self, q: torch.Tensor, scale: float) -> None:
        """Select with ``q`` and stage at once (one host round trip): a decode step that evicted."""
        if self.stager is None or self.index.n == 0:
            return
        if self.exact_staged:
            # The question's exact choice stays through the answer (see _exact_select).
            self.restage = False
            return
        self.stager.run_now(self._chunk_entries(q, scale))

    def _chunk_entries(self, q: torch.Tensor, scale: float) -> torch.Tensor:
        """The choice ``[3, H, k]`` of a chunk's queries (at most ``score_queries`` of them)."""
        self.restage = False
        return self._top_entries(self._scores(self._scoring_queries(q), scale, self.index.n))

    # Logits of one run of keys in _exact_select (float32 elements, 128 MiB).
    EXACT_LOGITS = 1 << 25

    def _exact_select(self, q: torch.Tensor, scale: float) -> np.ndarray:
        """``[H, stage_blocks]`` block ids chosen by exact attention of the chunk's last ``observe``
        queries (of ``q [Hq, M, D]``) over every stored block (:meth:`_exact_scores`,
        :func:`pick_with_neighbours`). Blocks whose every token the pinned or heavy tier
        already holds are not chosen.
        """
        cfg, h, b = self.cfg, self.heads, self.cfg.block_size
        scores = self._exact_scores(q[:, -cfg.observe:], scale)
        nb = scores.shape[1]
        held = self._held_positions()
        if held.shape[1]:
            # Tokens per block held at full resolution elsewhere (bucket nb: not a stored block).
            blk = torch.where(held >= cfg.sinks, (held - cfg.sinks) // b, nb).clamp(max=nb)
            count = torch.zeros(h, nb + 1, device=self.device).scatter_add_(1, blk, torch.ones_like(blk).float())
            scores = scores.masked_fill(count[:, :nb] >= b, NEG_INF)
        self.exact_scores = scores
        # The tier's size was fixed at allocation: a config swapped in later (the needle
        # benchmark's question variants) may ask for fewer blocks, not more.
        room = self.stager.blocks
        k = min(cfg.exact_top_k or cfg.top_k, room)
        ids = pick_with_neighbours(scores, k, cfg.exact_before, cfg.exact_after, cfg.exact_margin)
        if k < room:
            ids = np.concatenate([ids, np.full((ids.shape[0], room - k), -1, dtype=ids.dtype)], axis=1)
        return ids

    def _exact_scores(self, q: torch.Tensor, scale: float) -> torch.Tensor:
        """``[H, N]`` exact block scores of queries ``q [Hq, M, D]`` over every stored block, as
        attention sees the blocks (:func:`exact_block_scores`).

        Reads every stored key once (``H * B * D`` elements per block), one run of blocks at a
        time (on the device with its logits, about ``EXACT_LOGITS`` of them). Stored keys are
        un-rotated; attention shows a key at its effective position ``max(p, floor)``. Every
        token of a block that ends below ``floor`` is shown at ``floor`` itself, and
        ``q . R(floor) k = (R(-floor) q) . k``: those runs are scored with the queries rotated
        back once, so only the few blocks that reach past ``floor`` have their keys rotated.
        """
        cfg, h, b = self.cfg, self.heads, self.cfg.block_size
        inv = self.cache.inv_freq_on(self.device)
        piece = max(1, self.EXACT_LOGITS // (q.shape[0] * q.shape[1] * b))
        floor = self.floor  # what _eff applies: max(p, floor); 0 leaves true positions
        # Blocks [0, far_blocks) end below floor: shown at floor, every token of them.
        far_blocks = max(0, (floor - cfg.sinks) // b)
        q_far = rotate(q.float(), torch.tensor(-floor, device=q.device), inv) if far_blocks else None

        def runs():
            for first, k_raw in to_device_runs(self.store.key_runs(piece), self.device):
                n = k_raw.shape[0]
                k = k_raw.transpose(0, 1).reshape(h, n * b, -1)
                split = min(n, max(0, far_blocks - first))
                if split:
                    yield first, k[:, :split * b], q_far
                if split < n:
                    pos = cfg.sinks + torch.arange((first + split) * b, (first + n) * b, device=self.device)
                    yield first + split, rotate(k[:, split * b:], self._eff(pos), inv)

        return exact_block_scores(q, runs(), self.store.num_blocks, b, scale, prefer=cfg.kernels)

    def _top_entries(self, scores: torch.Tensor) -> torch.Tensor:
        return top_entries(scores, self.index.lo, self.index.hi, self.cfg.top_k, self.cfg.threshold)

    def _scoring_queries(self, q: torch.Tensor) -> torch.Tensor:
        """At most ``score_queries`` of the chunk's queries ``[Hq, M, D]``: the last ``observe``
        (the end of the prompt, where a question sits) and an even stride over the rest."""
        n, m = self.cfg.score_queries, q.shape[1]
        if n == 0 or m <= n:
            return q
        last = min(self.cfg.observe, n - 1)
        stride = -(-(m - last) // (n - last))
        return torch.cat([q[:, : m - last: stride], q[:, m - last:]], dim=1)

    def _decode_entries(self, q: torch.Tensor, scale: float) -> torch.Tensor:
        """Decode's choice ``[3, H, k]`` (fixed shapes, no host value: a CUDA graph can hold it)."""
        scores = self._scores(q, scale, self.index.capacity)
        return self._top_entries(scores.masked_fill(self.index.count[None, :] <= 0, NEG_INF))

    def _remask_staging(self) -> None:
        """Staged tokens also held by the pinned or heavy tier, or empty slots, get bias -inf;
        summaries covering a staged block are masked (each token counts once)."""
        if self.n_stage == 0:
            return
        sl = slice(self.STAGE, self.STAGE + self.n_stage)
        pos = self.pos[:, sl]
        keep = (pos >= 0) & ~self._held_elsewhere(pos)
        self.bias[:, sl] = torch.where(keep, 0.0, NEG_INF)
        self._mask_covered_summaries()

    def _held_positions(self) -> torch.Tensor:
        """``[H, n_pin + n_heavy]`` positions this head's pinned and heavy slots hold."""
        return torch.cat([self.pos[:, self.PIN:self.PIN + self.n_pin],
                          self.pos[:, self.HEAVY:self.HEAVY + self.n_heavy]], dim=1)

    def _held_elsewhere(self, pos: torch.Tensor) -> torch.Tensor:
        """``pos [H, n]`` -> mask of positions present in this head's pinned or heavy slots."""
        held = self._held_positions()
        if held.shape[1] == 0:
            return torch.zeros_like(pos, dtype=torch.bool)
        # Per-head membership by binary search in the sorted held positions (torch.isin on
        # CUDA goes through unique(), several times slower).
        held = held.sort(dim=1).values
        idx = torch.searchsorted(held, pos.contiguous()).clamp(max=held.shape[1] - 1)
        return (held.gather(1, idx) == pos) & (pos >= 0)

    def _mask_covered_summaries(self, log_n: torch.Tensor | None = None) -> None:
        """Summaries whose span holds a staged block would count those tokens twice: mask them;
        the others get their bias (``log_n``, :meth:`_summary_bias` unless given).

        The staged blocks are read from the staging tier's positions on the device (the first
        slot of each block holds its first position, ``-1`` when empty): no host data, so no
        synchronising copy."""
        n = self.summaries.n
        if n == 0:
            return
        if log_n is None:
            log_n = self._summary_bias()
        start = self.pos[:, self.STAGE:self.STAGE + self.n_stage:self.cfg.block_size]  # [H, K]
        lo, hi = self.summaries.lo[:n], self.summaries.hi[:n]
        covered = ((start[:, None, :] >= lo[None, :, None]) & (start[:, None, :] < hi[None, :, None])).any(-1)
        self.bias[:, self.SUMM:self.SUMM + n] = torch.where(covered, NEG_INF, log_n[None, :])

    # -- 3. ranges --------------------------------------------------------------------------

    def _spans(self, ring_used: int) -> list[tuple[int, int]]:
        """``(start, end)`` of every tier's occupied slots, in buffer order."""
        return [(self.SINK, self.SINK + self.n_sink), (self.PIN, self.PIN + self.n_pin),
                (self.HEAVY, self.HEAVY + self.n_heavy), (self.SUMM, self.SUMM + self.summaries.n),
                (self.STAGE, self.STAGE + self.n_stage), (self.WIN, self.WIN + ring_used)]

    def _ring_used(self) -> int:
        return min(self.cfg.ring, max(0, self.seen - self.cfg.sinks))

    def _occupied_ranges(self) -> torch.Tensor:
        return self._ranges_of(self._spans(self._ring_used()))

    def _ranges_of(self, spans) -> torch.Tensor:
        """``[R, 2]`` int32 device tensor of the non-empty ``spans``; the last few are kept, so a
        step reuses them instead of copying them to the device again."""
        key = tuple(s for s in spans if s[1] > s[0])
        t = self._ranges_cache.get(key)
        if t is None:
            if len(self._ranges_cache) >= 8:
                self._ranges_cache.pop(next(iter(self._ranges_cache)))
            t = self._ranges_cache[key] = _to_device(torch.tensor(key, dtype=torch.int32).reshape(-1, 2),
                                                     self.device)
        return t

    # -- 5. commit and evict ----------------------------------------------------------------

    def _commit(self, k_new: torch.Tensor, v_new: torch.Tensor, mass_new: torch.Tensor, p0: int) -> None:
        """Place the chunk (``[H, M, D]`` at positions ``p0 ..``) and evict whole blocks."""
        cfg = self.cfg
        m = k_new.shape[1]
        inv = self.cache.inv_freq_on(self.device)
        # Sinks: the first tokens of the sequence.
        ns = max(0, min(cfg.sinks - p0, m))
        if ns:
            pos = torch.arange(p0, p0 + ns, device=self.device).expand(self.heads, ns)
            self._write_far(self.SINK + p0, rotate(k_new[:, :ns], -pos, inv), v_new[:, :ns], pos, 0.0,
                            mass_new[:, :ns])
            self.n_sink = p0 + ns
        seen_new = p0 + m
        new_frontier = self._frontier_after(seen_new, decode=m == 1)
        if new_frontier > self.frontier:
            self._evict(self.frontier, new_frontier, k_new, v_new, mass_new, p0)
        # Window: chunk tokens at positions >= max(frontier, sinks).
        first = max(new_frontier, p0 + ns)
        if first < seen_new:
            start_slot = self.window_slot(first)
            if start_slot + (seen_new - first) <= self.CAP:
                # No wrap-around (always so in decode): a plain slice, no index tensor.
                dst = slice(start_slot, start_slot + seen_new - first)
            else:
                dst = self.WIN + (torch.arange(first, seen_new, device=self.device) - cfg.sinks) % cfg.ring
            src = slice(first - p0, m)
            self.k[:, dst] = k_new[:, src]
            self.v[:, dst] = v_new[:, src]
            self.pos[:, dst] = torch.arange(first, seen_new, device=self.device)
            if isinstance(dst, slice):
                self.bias[:, dst] = 0.0
            else:
                self.bias.index_fill_(1, dst, 0.0)  # no host value: no synchronisation
            self.mass[:, dst] = mass_new[:, src]
        self.frontier = new_frontier
        self.seen = seen_new

    def _frontier_after(self, seen: int, decode: bool) -> int:
        """The window's first position once ``seen`` tokens are in: prefill evicts every whole
        block it can, decode waits until ``decode_evict`` blocks are due."""
        due = self._frontier_for(seen)
        if decode and due - self.frontier < self.cfg.decode_evict * self.cfg.block_size:
            return self.frontier
        return max(due, self.frontier)

    def _frontier_for(self, seen: int) -> int:
        """First window position once ``seen`` tokens are in: the window keeps ``window`` tokens
        and gives up whole blocks only (the block grid starts at ``sinks``)."""
        cfg = self.cfg
        span = seen - cfg.window - cfg.sinks
        return cfg.sinks + (span // cfg.block_size) * cfg.block_size if span > 0 else cfg.sinks

    def _evict(self, lo: int, hi: int, k_new: torch.Tensor, v_new: torch.Tensor, mass_new: torch.Tensor,
               p0: int) -> None:
        """Positions ``[lo, hi)`` (whole blocks) leave the window."""
        cfg, h, b = self.cfg, self.heads, self.cfg.block_size
        dev = self.device
        parts_k, parts_v, parts_m = [], [], []
        ring_hi = min(hi, p0)
        if ring_hi > lo:
            slots = self.WIN + (torch.arange(lo, ring_hi, device=dev) - cfg.sinks) % cfg.ring
            parts_k.append(self.k[:, slots])
            parts_v.append(self.v[:, slots])
            parts_m.append(self.mass[:, slots])
            # index_fill_, not `x[:, slots] = value`: that copies the value from the host and
            # synchronises.
            self.pos.index_fill_(1, slots, -1)
            self.bias.index_fill_(1, slots, NEG_INF)
            self.mass.index_fill_(1, slots, 0.0)
        if hi > p0:
            rel = slice(max(lo, p0) - p0, hi - p0)
            parts_k.append(k_new[:, rel])
            parts_v.append(v_new[:, rel])
            parts_m.append(mass_new[:, rel])
        k_rot = torch.cat(parts_k, dim=1)
        v = torch.cat(parts_v, dim=1)
        mass = torch.cat(parts_m, dim=1)
        e = hi - lo
        pos = torch.arange(lo, hi, device=dev)
        k_raw = rotate(k_rot, -pos.expand(h, e), self.cache.inv_freq_on(dev))
        nb = e // b
        first_block = (lo - cfg.sinks) // b
        blocks_k = k_raw.view(h, nb, b, -1)
        blocks_v = v.view(h, nb, b, -1)
        # Store and index: the full-resolution blocks and one mean key per block. New index
        # entries must be able to take part at the next step: re-stage then.
        self.store.append(blocks_k, blocks_v)
        self.restage = True
        ids = torch.arange(first_block, first_block + nb, device=dev)
        if self.index.capacity:
            # Bounds of the keys as attention sees them at their true positions (as Quest does);
            # a later shift of the block's effective position rotates the box (_rotate_index).
            rot_blocks = k_rot.view(h, nb, b, -1)
            merged = self.index.add(rot_blocks.amax(2), rot_blocks.amin(2), torch.ones(nb, device=dev), ids, ids + 1)
            self._rotate_index(0 if merged else self.index.n - nb)
        # Consolidation: one summary per block, merged progressively when the slots are full.
        if self.summaries.capacity:
            self.summaries.add(blocks_k.float().mean(2), blocks_v.float().mean(2),
                               torch.full((nb,), float(b), device=dev), pos.view(nb, b)[:, 0],
                               pos.view(nb, b)[:, 0] + b)
            self._write_summaries()
        # Anchors: pinned spans keep their tokens; the rest compete for the heavy-hitter tier.
        # Membership is decided on the host (spans are host data): no device synchronisation.
        pinned = self.cache.pinned.contains(torch.arange(lo, hi))
        if not pinned.any():
            if self.cfg.heavy:
                self._update_heavy(k_raw, v, pos.expand(h, -1), mass)
            return
        sel = pinned.nonzero().squeeze(1)
        room = self.cfg.pinned - self.n_pin
        take = _to_device(sel[:room], dev)
        self.cache.pinned_overflow += int(sel.numel() - min(room, sel.numel()))
        if take.numel():
            self._write_far(self.PIN + self.n_pin, k_raw[:, take], v[:, take], pos[take].expand(h, -1), 0.0,
                            mass[:, take])
            self.n_pin += int(take.numel())
        if self.cfg.heavy:
            cand = (~pinned).nonzero().squeeze(1)
            if cand.numel():
                cand = _to_device(cand, dev)
                self._update_heavy(k_raw[:, cand], v[:, cand], pos[cand].expand(h, -1), mass[:, cand])

    def _write_summaries(self) -> None:
        n = self.summaries.n
        if n == 0:
            return
        pos = self.summaries.pos[:n].expand(self.heads, n)
        log_n = self._summary_bias()
        self._write_far(self.SUMM, self.summaries.key[:, :n], self.summaries.value[:, :n], pos,
                        log_n[None, :].expand(self.heads, n))
        # Fresh summary biases must still exclude the spans of the blocks staged now.
        self._mask_covered_summaries(log_n)

    def _summary_bias(self) -> torch.Tensor:
        """``[n]`` attention bias of the summaries: ``log n`` each, lowered alike so that together
        they stand for at most ``summary_tokens`` tokens (computed on the device: no sync)."""
        count = self.summaries.count[:self.summaries.n]
        log_n = count.log()
        cap = self.cfg.summary_tokens
        if cap:
            log_n = log_n - (count.sum().log() - math.log(cap)).clamp(min=0.0)
        return log_n

    def _update_heavy(self, k_raw: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, mass: torch.Tensor) -> None:
        """Keep the ``heavy`` tokens of highest mass among current heavy hitters and the candidates."""
        n = self.n_heavy
        sl = slice(self.HEAVY, self.HEAVY + n)
        keep = select_heavy_hitters(self.mass[:, sl], mass, self.cfg.heavy)  # [H, K]
        all_k = torch.cat([self.k_raw[:, sl], k_raw.to(self.dtype)], dim=1)
        all_v = torch.cat([self.v[:, sl], v.to(self.dtype)], dim=1)
        all_p = torch.cat([self.pos[:, sl], pos], dim=1)
        all_m = torch.cat([self.mass[:, sl], mass], dim=1)
        d = all_k.shape[-1]
        idx3 = keep[:, :, None].expand(-1, -1, d)
        self._write_far(self.HEAVY, all_k.gather(1, idx3), all_v.gather(1, idx3), all_p.gather(1, keep), 0.0,
                        all_m.gather(1, keep))
        self.n_heavy = keep.shape[1]
        # Tokens that left the heavy tier may sit masked in a staged block, and new heavy
        # hitters may sit unmasked in one.
        self._remask_staging()

