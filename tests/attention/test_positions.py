"""Positions: re-rotation is exact, and far tiers stay inside the trained range."""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from ssa_code import SSACache, patch
from ssa_code.attention.positions import effective_positions, rope_parameters, rotate
from ssa_code.engine.prefill import prefill

from .conftest import SMALL, tiny_model


def test_rerotated_key_equals_key_computed_at_new_position():
    model = tiny_model("llama", rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 1024})
    cfg = model.config
    rope = LlamaRotaryEmbedding(cfg)
    inv_freq, _ = rope_parameters(cfg)
    torch.testing.assert_close(inv_freq, rope.inv_freq.float())
    raw = torch.randn(1, 2, 5, 16, dtype=torch.float64)
    p_old = torch.tensor([[3, 70, 900, 4000, 123456]])
    p_new = torch.tensor([[10, 10, 2000, 7, 999999]])

    def at(p):
        # transformers' own rotation, with angles in float64 (its float32 angles drift near 1M).
        freqs = p[..., None].double() * rope.inv_freq.double()
        emb = torch.cat([freqs, freqs], dim=-1)
        return apply_rotary_pos_emb(raw, raw, emb.cos(), emb.sin())[1]

    moved = rotate(at(p_old), (p_new - p_old).expand(2, 5)[None], inv_freq)
    torch.testing.assert_close(moved, at(p_new), atol=1e-5, rtol=1e-5)
    back = rotate(at(p_old), -p_old.expand(2, 5)[None], inv_freq)
    torch.testing.assert_close(back, raw, atol=1e-5, rtol=1e-5)


def test_effective_positions_clamp_only_beyond_far_distance():
    pos = torch.tensor([-1, 0, 5, 100, 990])
    assert effective_positions(pos, ref=50, far_distance=100).tolist() == pos.tolist()
    assert effective_positions(pos, ref=1000, far_distance=100).tolist() == [-1, 900, 900, 900, 990]


def test_far_keys_stay_within_trained_range_and_retrieval_still_selects():
    """A model trained on 256 positions reading 2K tokens: no far key is shown beyond the range."""
    model = tiny_model("llama", max_position_embeddings=256)
    cfg = SMALL.replace(chunk_size=64, top_k=4)
    patch(model, cfg)
    cache = SSACache(model.config, cfg)
    assert cache.far_distance == 256 - 64
    ids = torch.randint(0, 300, (1, 2048), generator=torch.Generator().manual_seed(0))
    prefill(model, cache, ids, chunk_size=64)
    layer = cache.layers[0]
    last_chunk_start = 2048 - 64
    far = layer.pos[:, : layer.WIN] >= 0
    shown = layer.eff[:, : layer.WIN][far]
    assert (last_chunk_start - shown).max().item() <= cache.far_distance
    # Sinks are shown at the far distance, not at their true distance of ~2000.
    assert (layer.eff[:, : layer.n_sink] == last_chunk_start - cache.far_distance).all()
    # Retrieval keeps selecting blocks far outside the trained range.
    staged = layer.pos[:, layer.STAGE: layer.STAGE + layer.n_stage]
    assert (staged >= 0).sum() > 0
    assert last_chunk_start - staged[staged >= 0].min().item() > 256


def test_rotated_box_contains_every_rotated_key():
    from ssa_code.attention.positions import rotate_box

    inv_freq = 1.0 / (10000 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
    keys = torch.randn(3, 40, 16, dtype=torch.float64)  # three blocks of 40 keys
    hi, lo = keys.amax(1), keys.amin(1)
    for delta in (0, 1, 7, 1000, -33):
        d = torch.full((3,), delta)
        rhi, rlo = rotate_box(hi, lo, d, inv_freq.float())
        rotated = rotate(keys, torch.full((3, 40), delta), inv_freq.float())
        assert (rotated <= rhi[:, None] + 1e-9).all() and (rotated >= rlo[:, None] - 1e-9).all()
        if delta == 0:
            assert torch.equal(rhi, hi) and torch.equal(rlo, lo)
