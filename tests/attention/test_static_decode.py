"""The plain decode step that CUDA graphs replay gives what the full step gives."""

from __future__ import annotations

import pytest
import torch

from ssa_code import SSACache, patch
from ssa_code.engine.decode import Decoder
from ssa_code.engine.prefill import prefill

from .conftest import SMALL, tiny_model

# decode_refresh 4 and decode_evict 2: over 80 tokens decode re-selects blocks about 20 times
# (in plain steps) and evicts two blocks at a time twice (in full steps).
CFG = SMALL.replace(decode_refresh=4, decode_evict=2)


def _decode(model, mode: str, ids: torch.Tensor, n: int):
    cache = SSACache(model.config, CFG)
    logits = prefill(model, cache, ids, chunk_size=CFG.chunk_size, anchors=[(0, 10)])
    logits = logits.reshape(-1, logits.shape[-1])[-1]
    decoder = Decoder(model, cache, mode=mode)
    tokens, all_logits = [], []
    for _ in range(n):
        token = int(logits.argmax())
        tokens.append(token)
        logits = decoder(token)
        all_logits.append(logits.float())
    return tokens, torch.stack(all_logits), decoder, cache


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_static_steps_match_full_steps(family):
    model = tiny_model(family)
    patch(model, CFG)
    ids = torch.randint(0, 300, (1, 500), generator=torch.Generator().manual_seed(3))
    tok_e, log_e, dec_e, cache_e = _decode(model, "eager", ids, 80)
    tok_s, log_s, dec_s, cache_s = _decode(model, "static", ids, 80)
    assert dec_e.steps["static"] == 0
    # Most steps are plain (re-selection included); eviction and rebase steps run in full.
    assert dec_s.steps["static"] > 60 and 2 <= dec_s.steps["eager"] < 10
    assert tok_s == tok_e
    err = (log_s - log_e).abs().max().item()
    assert err < 1e-4, f"static vs full decode logits differ by {err:.2e}"
    # The state is the same afterwards: same counters and the same window contents.
    for a, b in zip(cache_e.layers, cache_s.layers):
        assert a.counters() == b.counters()
        assert torch.equal(a.pos, b.pos) and torch.equal(a.bias, b.bias)
        assert torch.allclose(a.k, b.k) and torch.allclose(a.v, b.v)


def test_tracked_sources_are_the_same_with_static_steps():
    """Sources are observed on refresh steps only, so plain steps may skip them."""
    model = tiny_model("llama")
    patch(model, CFG)
    ids = torch.randint(0, 300, (1, 300), generator=torch.Generator().manual_seed(4))
    masses = []
    for mode in ("eager", "static"):
        cache = SSACache(model.config, CFG)
        prefill(model, cache, ids, chunk_size=CFG.chunk_size)
        cache.track_sources = True
        decoder = Decoder(model, cache, mode=mode)
        for token in range(20):
            decoder(token)
        masses.append(cache.source_mass())
        assert mode == "eager" or decoder.steps["static"] > 0
    assert masses[0].sum() > 0
    assert torch.allclose(masses[0], masses[1], atol=1e-5)


def test_decoder_modes_are_checked():
    model = tiny_model("llama")
    patch(model, CFG)
    cache = SSACache(model.config, CFG)
    with pytest.raises(ValueError, match="decode mode"):
        Decoder(model, cache, mode="fast")
    with pytest.raises(ValueError, match="CUDA"):
        Decoder(model, cache, mode="graph")
    with pytest.raises(ValueError, match="SSACache"):
        Decoder(model, None, mode="static")
    assert Decoder(model, cache).mode == "eager"  # CPU


def test_a_selection_is_installed_when_its_layer_is_due():
    """Decode's selection at token t (one per decode_refresh, and the first after prefill) is
    written into the staging tier of layer l before token t + 2 + l // prepares_per_step (the
    host work is spread over the steps up to the next selection); eviction steps stage at once."""
    model = tiny_model("llama", num_hidden_layers=4)
    cfg = CFG.replace(top_k=2)
    patch(model, cfg)
    cache = SSACache(model.config, cfg)
    prefill(model, cache, torch.randint(0, 300, (1, 500), generator=torch.Generator().manual_seed(5)),
            chunk_size=cfg.chunk_size)
    per_step = cache.prepares_per_step()
    assert per_step == 2  # 4 layers over decode_refresh - 1 = 3 steps
    decoder = Decoder(model, cache, mode="static")
    changed = {i: [] for i in range(4)}
    evicted = []
    for token in range(100):
        ids = [layer.staged_ids.clone() for layer in cache.layers]
        frontier = cache.layers[0].frontier
        decoder(token)
        step = cache.layers[0].decode_steps
        if cache.layers[0].frontier != frontier:
            evicted.append(step)
            continue
        for i, layer in enumerate(cache.layers):
            if not torch.equal(ids[i], layer.staged_ids):
                changed[i].append(step)
    assert evicted and all(changed.values())
    for i, steps in changed.items():
        # Selections at step 1 (after prefill's eviction) and at multiples of decode_refresh.
        lag = 2 + i // per_step
        assert all(s == 1 + lag or s % cfg.decode_refresh == lag % cfg.decode_refresh or s - lag in evicted
                   for s in steps), (i, steps, evicted)
