"""One decode step at a time on an SSA cache, with CUDA graphs for the plain steps.

Eager decode of a 7B model pays far more in Python and kernel launches than in memory
traffic: every layer runs dozens of small operations per token. Most SSA decode steps are
*plain* (:meth:`SSALayer.static_step_ok`): no re-rotation or eviction, only attention over the
fixed tier buffer and one write into the window ring, with the slot and position read from
device scalars (once per ``decode_refresh`` tokens also the attention mass it observes and the
index scores of the next selection). The whole model forward of such a step is the same device
work every time, so :class:`Decoder` captures it once per kind (selecting or not) in a CUDA
graph and replays it; between replays the host moves selections through the staging pipeline
(``ssa_code/attention/staging.py``) while the GPU runs. The steps that evict (one per
``decode_evict`` blocks) or re-rotate (one per ``rebase_every`` tokens) run eagerly. On CPU, or
for a cache that is not an :class:`SSACache`, every step is eager.

If capturing fails (a transformers version that synchronises inside the forward, say), the
decoder says why in :attr:`Decoder.graph_error` and runs plain steps without the graph
(``static``): correct, only slower.
"""

from __future__ import annotations

from typing import Any

import torch

from ssa_code.attention import handoff
from ssa_code.attention.cache import SSACache
from ssa_code.engine.generate import cache_kwarg, forward_tokens


MODES = ("graph", "static", "eager")


class Decoder:
    """``decoder(token) -> logits [V]``: feed one token (an int or a ``[1, 1]`` tensor) on ``cache``.

    Args:
        mode: ``graph`` replays plain steps from a CUDA graph; ``static`` runs them through the
            same fixed device work eagerly (what the graph holds; the CPU tests compare it with
            the full step); ``eager`` runs every step in full. ``None``: ``graph`` for an
            :class:`SSACache` on CUDA, else ``eager``.
    """

    def __init__(self, model: Any, cache: Any, mode: str | None = None) -> None:
        self.model = model
        self.cache = cache
        self.device = next(model.parameters()).device
        ssa = isinstance(cache, SSACache)
        if mode is None:
            mode = "graph" if ssa and self.device.type == "cuda" else "eager"
        if mode not in MODES:
            raise ValueError(f"decode mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode != "eager" and not ssa:
            raise ValueError(f"decode mode {mode!r} needs an SSACache")
        if mode == "graph" and self.device.type != "cuda":
            raise ValueError("decode mode 'graph' needs the model on CUDA")
        self.mode = mode
        # One graph per kind of static step: (selects, tracks sources); each adds device work.
        self.graphs: dict[tuple[bool, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        self._warm: set[tuple[bool, bool]] = set()
        self.graph_error: str | None = None
        self.steps = {"eager": 0, "static": 0, "graph": 0}
        self._ids: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._kwarg = cache_kwarg(model)

    def __call__(self, token: int | torch.Tensor) -> torch.Tensor:
        ids = token if isinstance(token, torch.Tensor) else torch.tensor([[int(token)]])
        ids = ids.reshape(1, 1).to(self.device)
        with torch.inference_mode():
            if self.mode != "eager" and self.cache.static_step_ok():
                return self._plain(ids)
            self.steps["eager"] += 1
            return forward_tokens(self.model, self.cache, ids)

    # -- plain steps --------------------------------------------------------------------------

    def _forward_static(self) -> torch.Tensor:
        self.cache.static_mode = True
        try:
            out = self.model(input_ids=self._ids, position_ids=self._positions, use_cache=True,
                             logits_to_keep=1, **{self._kwarg: self.cache})
        finally:
            self.cache.static_mode = False
        return out.logits[0, -1]

    def _plain(self, ids: torch.Tensor) -> torch.Tensor:
        cache = self.cache
        if self._ids is None:
            self._ids = torch.zeros(1, 1, dtype=torch.long, device=self.device)
            self._positions = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._ids.copy_(ids)
        self._positions.fill_(cache.get_seq_length())
        cache.set_static_step()
        kind = (cache.static_selects, cache.track_sources)
        if self.mode == "graph" and kind not in self._warm:
            # The first plain step of a kind runs eagerly on a side stream, as PyTorch asks
            # before a capture: it compiles and autotunes whatever the graph will hold.
            self._warm.add(kind)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                logits = self._forward_static().clone()
            torch.cuda.current_stream(self.device).wait_stream(side)
        elif self.mode == "graph" and (kind in self.graphs or self._capture(kind)):
            graph, logits = self.graphs[kind]
            graph.replay()
            cache.advance_static()
            self.steps["graph"] += 1
            return logits.clone()
        else:
            logits = self._forward_static().clone()
        cache.advance_static()
        self.steps["static"] += 1
        return logits

    def _capture(self, kind: tuple[bool, bool]) -> bool:
        """Record a plain step of ``kind`` once; False (and ``static`` mode from now on) if capturing fails."""
        graph = torch.cuda.CUDAGraph()
        try:
            # The graphs share one memory pool: they never run at the same time.
            with torch.cuda.graph(graph, pool=self._pool):
                logits = self._forward_static()
        except Exception as exc:  # noqa: BLE001 - any capture failure means: no graph
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            self.graph_error = f"{type(exc).__name__}: {first_line}"
            self.mode = "static"
            for layer in self.cache.layers:
                layer.pending = None
            handoff.hand_off(None, None)
            return False
        self._pool = graph.pool()
        self.graphs[kind] = (graph, logits)
        return True
