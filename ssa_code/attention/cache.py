"""SSACache: a transformers ``Cache`` whose every layer is a fixed-size SSA state.

Pass it as ``past_key_values`` to a model patched with :func:`ssa_code.patch`. Its GPU
footprint (:meth:`SSACache.gpu_bytes`) is fixed at construction; only the off-GPU store
(:meth:`SSACache.store_bytes`) grows with the context.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers.cache_utils import Cache

from ssa_code.atomic import replacing
from ssa_code.attention.anchors import PinnedSpans
from ssa_code.attention.config import SSAConfig
from ssa_code.attention.layer_state import SSALayer
from ssa_code.attention.positions import default_far_distance, rope_parameters

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
STATE_FORMAT_VERSION = 2


def model_fingerprint(model_config: Any) -> dict[str, Any]:
    """What a cache must agree on with the model that fills it."""
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    rope = getattr(model_config, "rope_parameters", None) or {}
    return {
        "model_type": model_config.model_type,
        "num_hidden_layers": int(model_config.num_hidden_layers),
        "num_attention_heads": int(model_config.num_attention_heads),
        "num_key_value_heads": int(getattr(model_config, "num_key_value_heads", None)
                                   or model_config.num_attention_heads),
        "head_dim": int(head_dim),
        "hidden_size": int(model_config.hidden_size),
        "rope_theta": float(rope.get("rope_theta", getattr(model_config, "rope_theta", 0.0)) or 0.0),
    }


def check_family(model_config: Any) -> None:
    family = getattr(model_config, "model_type", None)
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(
            f"model family {family!r} is not supported by SSA; supported: {', '.join(SUPPORTED_FAMILIES)}"
        )


class SSACache(Cache):
    """The Streaming Sparse Attention state of one sequence, for every layer.

    Args:
        model_config: the Hugging Face config of the model that will fill the cache.
        ssa_config: tier sizes and knobs; defaults to ``SSAConfig()``.
        device, dtype: allocate now (else on the first update, from the keys).
    """

    def __init__(self, model_config: Any, ssa_config: SSAConfig | None = None, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        check_family(model_config)
        ssa_config = ssa_config if ssa_config is not None else SSAConfig()
        if not isinstance(ssa_config, SSAConfig):
            raise ValueError(f"ssa_config must be an SSAConfig, got {type(ssa_config).__name__}")
        self.model_config = model_config
        self.ssa_config = ssa_config
        self.fingerprint = model_fingerprint(model_config)
        self.num_kv_heads = self.fingerprint["num_key_value_heads"]
        self.head_dim = self.fingerprint["head_dim"]
        self.inv_freq, self.rope_scaling = rope_parameters(model_config)
        self._inv_freq_dev: dict[torch.device, torch.Tensor] = {}
        self.far_distance = ssa_config.far_distance or default_far_distance(
            model_config, ssa_config.chunk_size, ssa_config.rebase_every)
        self._accepted: list[Any] = []
        self.pinned = PinnedSpans()
        self.pinned_overflow = 0
        self.track_sources = False
        # Set by the caller for a question's chunks (prefill with more than one query): they choose
        # their staged blocks by exact attention over the whole store instead of the index's
        # bounds, and the answer keeps that choice (SSALayer._exact_select, scoring.py).
        self.select_exact = False
        self._source_mass: torch.Tensor | None = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        # The static decode step (see SSALayer.static_step_ok): while static_mode is on, every
        # layer writes its token at the window slot and position held in these device scalars.
        self.static_mode = False
        # Whether the static step is a selection step (observes mass, scores the index).
        self.static_selects = False
        self.static_slot: torch.Tensor | None = None
        self.static_pos: torch.Tensor | None = None
        if ssa_config.store == "disk":
            self.store_dir = ssa_config.store_dir
        else:
            self.store_dir = None
        layers = [SSALayer(self, i) for i in range(self.fingerprint["num_hidden_layers"])]
        super().__init__(layers=layers)
        if device is not None:
            for layer in self.layers:
                layer.allocate(torch.device(device), dtype or torch.float32)

    # -- helpers used by the layers ---------------------------------------------------------

    def inv_freq_on(self, device: torch.device) -> torch.Tensor:
        t = self._inv_freq_dev.get(device)
        if t is None:
            t = self._inv_freq_dev[device] = self.inv_freq.to(device)
        return t

    def check_model(self, model_config: Any) -> None:
        """Refuse a model whose shape differs from the one this cache was built for."""
        # Called by every layer's attention: remember configs already accepted.
        if any(c is model_config for c in self._accepted):
            return
        theirs = model_fingerprint(model_config)
        if theirs != self.fingerprint:
            diff = {k: (self.fingerprint[k], theirs[k]) for k in theirs if theirs[k] != self.fingerprint.get(k)}
            raise ValueError(f"this SSACache was built for another model configuration (cache vs model: {diff})")
        self._accepted.append(model_config)

    # -- the static decode step ---------------------------------------------------------

    def static_step_ok(self) -> bool:
        """Whether the next decode token is a plain step in every layer (graph-replayable)."""
        return bool(self.layers) and all(layer.static_step_ok() for layer in self.layers)

    def set_static_step(self) -> None:
        """Point the device scalars at the next token's window slot and position (no sync), and
        get every layer ready for a static step (:meth:`SSALayer.refresh_static_ranges`)."""
        layer = self.layers[0]
        if self.static_slot is None or self.static_slot.device != layer.device:
            self.static_slot = torch.zeros(1, dtype=torch.int64, device=layer.device)
            self.static_pos = torch.zeros(1, dtype=torch.int64, device=layer.device)
        p0 = layer.seen
        # Layers move in step (same tokens, same evictions), so they select at the same steps.
        self.static_selects = layer.selects_next()
        self.static_slot.fill_(layer.window_slot(p0))
        self.static_pos.fill_(p0)
        for each in self.layers:
            each.refresh_static_ranges()

    def advance_static(self) -> None:
        """Move every layer's host counters past the token a static step wrote, and run the
        host side of the staging pipeline (:meth:`SSALayer.advance_static`)."""
        for layer in self.layers:
            layer.advance_static()

    def prepares_per_step(self) -> int:
        """Layers whose pending selection a decode step prepares on the host (the first ones
        at the step after the selection, the next ones a step later, and so on).

        Preparing a selection (reading its new blocks from the store into the mirror, about a
        millisecond a layer when every block is new) is host work that runs while the GPU
        computes the step. Done for every layer in one step it outlasts that step many times
        over; spread over the ``decode_refresh - 1`` steps before the next selection it hides
        behind them. Layer ``l``'s selection made at token ``t`` then serves from token
        ``t + 2 + l // prepares_per_step()`` on (the first layers first).
        """
        spread = max(1, self.ssa_config.decode_refresh - 1)
        return max(1, -(-len(self.layers) // spread))

    # -- anchors ------------------------------------------------------------------------

    def pin(self, start: int, end: int) -> None:
        """Keep tokens ``[start, end)`` at full resolution (an anchor), within the pinned budget.

        Pin before the tokens leave the window (the engine pins every anchor before prefill).
        Tokens beyond the budget are counted in :attr:`pinned_overflow`.
        """
        if not (isinstance(start, int) and isinstance(end, int)) or start < 0 or end < start:
            raise ValueError(f"pin span must satisfy 0 <= start <= end, got [{start!r}, {end!r})")
        if start < self.get_seq_length() - self.ssa_config.window:
            raise ValueError(f"pin span [{start}, {end}) starts before the window; pin anchors before prefill")
        self.pinned.add(start, end)

    # -- sources (citations) ------------------------------------------------------------

    def add_source_mass(self, pos: torch.Tensor, mass: torch.Tensor, p0: int, mass_new: torch.Tensor) -> None:
        """Accumulate attention mass per position block (``block_size`` tokens) for citations.

        ``pos/mass [H, CAP]`` for the buffer slots, ``mass_new [H, M]`` for the chunk at ``p0``.
        Kept apart from the fixed state: it grows by one float per block of context.
        """
        b = self.ssa_config.block_size
        m = mass_new.shape[1]
        n_blocks = (p0 + m + b - 1) // b
        if self._source_mass is None or self._source_mass.device != pos.device:
            self._source_mass = torch.zeros(n_blocks, dtype=torch.float32, device=pos.device)
        elif self._source_mass.numel() < n_blocks:
            grown = torch.zeros(max(n_blocks, 2 * self._source_mass.numel()), dtype=torch.float32, device=pos.device)
            grown[: self._source_mass.numel()] = self._source_mass
            self._source_mass = grown
        # Empty slots add zero mass to block 0: no boolean indexing, so no device synchronisation.
        valid = pos >= 0
        self._source_mass.index_add_(0, torch.where(valid, pos // b, 0).reshape(-1),
                                     torch.where(valid, mass.float(), 0.0).reshape(-1))
        new_pos = torch.arange(p0, p0 + m, device=pos.device) // b
        self._source_mass.index_add_(0, new_pos, mass_new.float().sum(0))

    def source_mass(self) -> torch.Tensor:
        """``[ceil(T / block_size)]`` float32 (CPU): attention mass per position block since tracking began."""
        for layer in self.layers:
            if layer.is_initialized:
                layer.flush_sources()
        n = (self.get_seq_length() + self.ssa_config.block_size - 1) // self.ssa_config.block_size
        out = torch.zeros(n, dtype=torch.float32)
        if self._source_mass is not None:
            k = min(n, self._source_mass.numel())
            out[:k] = self._source_mass[:k].cpu()
        return out

    def reset_source_mass(self) -> None:
        self._source_mass = None

    # -- accounting ---------------------------------------------------------------------

    def gpu_bytes(self) -> int:
        """Bytes of the fixed-size SSA state (on the accelerator, or on CPU when run there)."""
        total = 0
        for layer in self.layers:
            if layer.is_initialized:
                total += sum(t.numel() * t.element_size() for t in layer.fixed_tensors())
        return total

    def store_bytes(self) -> int:
        """Bytes of full-resolution blocks held off the GPU (0 with ``store='none'``)."""
        return sum(layer.store.nbytes() for layer in self.layers if layer.is_initialized)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].seen if self.layers else 0

    # -- saving and restoring ---------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole state (fixed tiers and store) to ``path`` as safetensors, atomically.

        The file carries a format version, the model fingerprint and the SSA config; a
        reader refuses a file that does not match (see :meth:`load`).
        """
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        counters = []
        for i, layer in enumerate(self.layers):
            if not layer.is_initialized:
                raise ValueError("cannot save an SSACache that has not seen any token")
            for name, t in layer.state_tensors().items():
                tensors[f"layer{i}.{name}"] = t.detach().contiguous().cpu()
            counters.append(layer.counters())
        metadata = {
            "format": "ssa-code-state",
            "version": str(STATE_FORMAT_VERSION),
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "ssa_config": json.dumps(self.ssa_config.to_dict(), sort_keys=True),
            "counters": json.dumps(counters),
            "pinned": json.dumps(self.pinned.spans()),
            "pinned_overflow": str(self.pinned_overflow),
            "dtype": str(self.layers[0].dtype).replace("torch.", ""),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, model_config: Any, ssa_config: SSAConfig, *,
             device: torch.device | str = "cpu") -> "SSACache":
        """Read a state written by :meth:`save`.

        Raises ``ValueError`` for a file that is not a readable state of this format version,
        model and SSA configuration (the caller rebuilds it).
        """
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                if meta.get("format") != "ssa-code-state":
                    raise ValueError("not an ssa-code state file")
                if meta.get("version") != str(STATE_FORMAT_VERSION):
                    raise ValueError(f"state format version {meta.get('version')} != {STATE_FORMAT_VERSION}")
                cache = cls(model_config, ssa_config)
                if json.loads(meta["fingerprint"]) != cache.fingerprint:
                    raise ValueError("state was saved for another model configuration")
                if json.loads(meta["ssa_config"]) != json.loads(json.dumps(ssa_config.to_dict(), sort_keys=True)):
                    raise ValueError("state was saved with another SSA configuration")
                dtype = getattr(torch, meta["dtype"])
                counters = json.loads(meta["counters"])
                keys = list(f.keys())
                for i, layer in enumerate(cache.layers):
                    layer.allocate(torch.device(device), dtype)
                    prefix = f"layer{i}."
                    tensors = {k[len(prefix):]: f.get_tensor(k) for k in keys if k.startswith(prefix)}
                    layer.restore(tensors, counters[i])
                for start, end in json.loads(meta["pinned"]):
                    cache.pinned.add(int(start), int(end))
                cache.pinned_overflow = int(meta["pinned_overflow"])
        except ValueError:
            raise
        except Exception as exc:  # truncated or garbled files surface as many error types
            raise ValueError(f"unreadable state file {path}: {exc}") from None
        return cache

    def checkpoint(self) -> dict[str, Any]:
        """An in-memory copy of the whole state to :meth:`rewind` to, e.g. to ask several
        questions of one prefill. Costs the fixed tiers once more (on their device); the store
        is kept by its length, so a rewind must not go past a :meth:`close`."""
        if not all(layer.is_initialized for layer in self.layers):
            raise ValueError("cannot checkpoint an SSACache that has not seen any token")
        return {"layers": [layer.checkpoint() for layer in self.layers], "pinned": self.pinned.spans(),
                "pinned_overflow": self.pinned_overflow,
                "source_mass": None if self._source_mass is None else self._source_mass.clone()}

    def rewind(self, checkpoint: dict[str, Any], question_config: SSAConfig | None = None) -> None:
        """Return to the state :meth:`checkpoint` copied, as if nothing had come after it.

        ``question_config``: answer what comes next under this configuration, one that differs
        from the cache's own in question-time fields only (``SSAConfig.check_question_variant``;
        the tiers keep their sizes). ``None``: the cache's own configuration."""
        self.use_question_config(question_config)  # first: a config it refuses changes nothing
        for layer, state in zip(self.layers, checkpoint["layers"]):
            layer.rewind(state)
        self.pinned = PinnedSpans()
        for start, end in checkpoint["pinned"]:
            self.pinned.add(int(start), int(end))
        self.pinned_overflow = checkpoint["pinned_overflow"]
        mass = checkpoint["source_mass"]
        self._source_mass = None if mass is None else mass.clone()

    def use_question_config(self, question_config: SSAConfig | None = None) -> None:
        """Answer what comes next under ``question_config``, one that differs from the cache's
        own in question-time fields only (``SSAConfig.check_question_variant``); ``None``: the
        cache's own configuration."""
        cfg = self.ssa_config
        if question_config is not None:
            cfg.check_question_variant(question_config)
            cfg = question_config
        for layer in self.layers:
            layer.cfg = cfg

    def close(self) -> None:
        for layer in self.layers:
            if layer.is_initialized:
                layer.store.close()
