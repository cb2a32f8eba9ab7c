"""Exact question-time selection (SSACache.select_exact): scores, choice, and how long it lasts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssa_code import SSACache, patch
from ssa_code.attention.positions import rotate
from ssa_code.attention.store import HostStore
from ssa_code.attention.scoring import best_block_lse, exact_block_scores, pick_with_successors
from ssa_code.engine.decode import Decoder
from ssa_code.engine.prefill import prefill

from .conftest import SMALL, tiny_model

# Four staged blocks out of ~40 evicted: the choice matters. decode_refresh 4 and decode_evict 2:
# 150 decode tokens re-select dozens of times and evict twice.
CFG = SMALL.replace(top_k=4, decode_refresh=4, decode_evict=2)


def block_scores_reference(q: torch.Tensor, k: torch.Tensor, block: int, scale: float) -> torch.Tensor:
    """Brute force in float64: softmax over every key, mass per block, log, max over a group's rows."""
    hq, m, d = q.shape
    h, t, _ = k.shape
    g = hq // h
    out = torch.empty(h, t // block, dtype=torch.float64)
    for head in range(h):
        rows = q[head * g:(head + 1) * g].reshape(g * m, d).double()
        p = torch.softmax(rows @ k[head].double().T * scale, dim=-1)  # [G * M, T]
        out[head] = p.view(g * m, t // block, block).sum(-1).log().amax(0)
    return out


@pytest.mark.parametrize("piece", [1, 3, 7, 100])
def test_exact_block_scores_match_brute_force(piece):
    gen = torch.Generator().manual_seed(0)
    h, g, m, d, b, nb = 2, 3, 5, 16, 8, 7
    q = torch.randn(h * g, m, d, generator=gen)
    k = torch.randn(h, nb * b, d, generator=gen)
    scale = d ** -0.5
    runs = [(f, k[:, f * b:min(nb, f + piece) * b]) for f in range(0, nb, piece)]
    got = exact_block_scores(q, runs, nb, b, scale)
    want = block_scores_reference(q, k, b, scale)
    err = (got.double() - want).abs().max().item()
    assert got.shape == (h, nb) and got.dtype == torch.float32
    assert err < 1e-5, f"exact block scores differ from the float64 reference by {err:.2e}"


def test_exact_block_scores_against_a_reference_mass():
    gen = torch.Generator().manual_seed(3)
    h, g, m, d, b, nb = 2, 2, 4, 16, 4, 6
    q = torch.randn(h * g, m, d, generator=gen)
    k = torch.randn(h, nb * b, d, generator=gen)
    ref = torch.randn(h * g, m, generator=gen)
    ref[1, 2] = float("-inf")  # sees nothing on the accelerator: share of the store instead
    scale = d ** -0.5
    got = exact_block_scores(q, [(0, k)], nb, b, scale, ref_lse=ref)
    want = torch.empty(h, nb, dtype=torch.float64)
    for head in range(h):
        rows = q[head * g:(head + 1) * g].reshape(g * m, d).double()
        mass = (rows @ k[head].double().T * scale).exp().view(g * m, nb, b).sum(-1)  # [G * M, N]
        r = ref[head * g:(head + 1) * g].reshape(g * m).double()
        r = torch.where(torch.isfinite(r), r, mass.sum(-1).log())
        want[head] = (mass.log() - r[:, None]).amax(0)
    err = (got.double() - want).abs().max().item()
    assert err < 1e-5, f"scores against a reference mass differ from float64 by {err:.2e}"


def test_best_block_lse_matches_brute_force():
    """Largest mass of one position block, sinks and empty slots left out, causal for the chunk."""
    gen = torch.Generator().manual_seed(4)
    h, g, m, d, b, first = 2, 3, 5, 8, 4, 3
    q = torch.randn(h * g, m, d, generator=gen)
    s = 30
    keys = torch.randn(h, s, d, generator=gen)
    pos = torch.stack([torch.randperm(40, generator=gen)[:s] for _ in range(h)])  # scattered, as a ring
    pos[0, :3] = torch.tensor([0, 1, 2])  # sinks
    pos[1, 5] = -1  # empty
    q_pos = torch.tensor([20, 25, 30, 35, 39])
    got = best_block_lse(q, keys, pos, q_pos, b, first, d ** -0.5)
    want = torch.full((h * g, m), float("-inf"), dtype=torch.float64)
    for head in range(h):
        for row in range(g):
            for i in range(m):
                logit = (keys[head].double() @ q[head * g + row, i].double()) * d ** -0.5
                ok = (pos[head] >= first) & (pos[head] <= q_pos[i])
                blocks = torch.div(pos[head] - first, b, rounding_mode="floor")
                for blk in blocks[ok].unique().tolist():
                    sel = ok & (blocks == blk)
                    want[head * g + row, i] = max(want[head * g + row, i], logit[sel].logsumexp(0))
    err = (got.double() - want).abs().max().item()
    assert err < 1e-5, f"best_block_lse differs from brute force by {err:.2e}"
    # A query that sees no block (every key later than it, or a sink) gets -inf.
    none = best_block_lse(q[:, :1], keys, pos, torch.tensor([0]), b, 50, d ** -0.5)
    assert torch.isneginf(none).all()


def test_exact_block_scores_in_bfloat16_stay_close():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(4, 6, 32, generator=gen)
    k = torch.randn(2, 10 * 4, 32, generator=gen)
    got = exact_block_scores(q.bfloat16(), [(0, k.bfloat16())], 10, 4, 32 ** -0.5)
    want = block_scores_reference(q.bfloat16().float(), k.bfloat16().float(), 4, 32 ** -0.5)
    err = (got.double() - want).abs().max().item()
    assert err < 1e-4, f"bfloat16 inputs: error {err:.2e}"


def test_pick_with_successors():
    scores = torch.tensor([[0.0, 1.0, 5.0, 2.0, 4.0, 3.0, -1.0, -2.0],
                           [9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]])
    ids = pick_with_successors(scores, 4)
    # Head 0: best two (2, 4) each with its successor (3, 5). Head 1: block 0 with 1, block 7 has
    # no successor, then the next best (6).
    assert ids.tolist() == [[2, 3, 4, 5], [0, 1, 7, 6]]
    # Adjacent best blocks share a successor; the freed slots go to the next best.
    scores = torch.tensor([[1.0, 9.0, 8.0, 0.0, 5.0, 4.0]])
    assert pick_with_successors(scores, 4).tolist() == [[1, 2, 3, 4]]
    # Blocks not worth staging (-inf) are never chosen, not even as a successor; short rows pad with -1.
    scores = torch.tensor([[3.0, float("-inf"), 1.0]])
    assert pick_with_successors(scores, 4).tolist() == [[0, 2, -1, -1]]
    assert pick_with_successors(torch.tensor([[1.0, 2.0]]), 1).tolist() == [[1]]
    # Below min_score a block is not chosen on its own score; as a successor it still is.
    scores = torch.tensor([[0.0, 1.0, 5.0, 2.0, 4.0, 3.0, -1.0, -2.0]])
    assert pick_with_successors(scores, 6, min_score=3.5).tolist() == [[2, 3, 4, 5, -1, -1]]
    assert pick_with_successors(scores, 6, min_score=9.0).tolist() == [[-1] * 6]


def _filled(model, cfg, n: int = 700, seed: int = 0) -> SSACache:
    patch(model, cfg)
    cache = SSACache(model.config, cfg)
    prefill(model, cache, torch.randint(0, 300, (1, n), generator=torch.Generator().manual_seed(seed)),
            chunk_size=cfg.chunk_size)
    return cache


def _plant(cache, layer_idx: int, planted: list[int], decoys: list[int], seed: int = 5) -> torch.Tensor:
    """Make stored block ``planted[h]`` of KV head h, rotated where attention shows it, equal a
    unit vector ``u[h]`` times 8 (``decoys[h]`` equals it before rotation). Returns the group's
    queries ``[Hq, 3, D]`` along ``u``."""
    layer = cache.layers[layer_idx]
    h, d, b = layer.heads, layer.dim, cache.ssa_config.block_size
    g = cache.model_config.num_attention_heads // h
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(h, d, generator=gen)
    u = 8 * u / u.norm(dim=-1, keepdim=True)
    k_raw, v = layer.store.state()["k"].clone(), layer.store.state()["v"].clone()  # [H, N, B, D]
    for head, blk in enumerate(planted):
        # A decoy: keys equal to u before rotation, so it wins if the keys are not rotated.
        k_raw[head, decoys[head]] = u[head]
        pos = cache.ssa_config.sinks + blk * b + torch.arange(b)
        # Un-rotated so that rotating to the block's effective positions gives u exactly.
        k_raw[head, blk] = rotate(u[head].expand(b, d), -layer._eff(pos), cache.inv_freq_on(layer.device))
    layer.store = HostStore(h, b, d, layer.dtype)
    layer.store.append(k_raw, v)
    return u.repeat_interleave(g, dim=0)[:, None, :].expand(h * g, 3, d)


def test_a_planted_block_is_chosen_with_its_successor():
    """A stored block whose keys, rotated where attention shows them, equal a group's query wins."""
    model = tiny_model("llama")
    # Far keys shown at most 200 positions away: effective positions differ from true ones.
    cache = _filled(model, CFG.replace(far_distance=200))
    layer = cache.layers[0]
    assert not torch.equal(layer._eff(torch.tensor([CFG.sinks + 7 * CFG.block_size])),
                           torch.tensor([CFG.sinks + 7 * CFG.block_size]))
    h, d, nb = layer.heads, layer.dim, layer.store.num_blocks
    planted = [7, 20]  # per KV head
    q = _plant(cache, 0, planted, [30, 12])
    ids = layer._exact_select(q, d ** -0.5)
    assert ids.shape == (h, CFG.top_k)
    for head, blk in enumerate(planted):
        assert ids[head, 0] == blk and ids[head, 1] == blk + 1, ids
    assert all(len(set(row[row >= 0].tolist())) == (row >= 0).sum() for row in ids)
    assert ((ids >= -1) & (ids < nb)).all()


def test_exact_ratio_stages_only_blocks_that_rival_the_context():
    """A question whose queries find what they look for in the window stages no stored block;
    a planted stored block that draws more than the window does is staged."""
    model = tiny_model("llama")
    cache = _filled(model, CFG)
    layer = cache.layers[0]
    h, d = layer.heads, layer.dim
    g = model.config.num_attention_heads // h
    k_new = torch.randn(h, 3, d, generator=torch.Generator().manual_seed(1)) * 0.1
    # A window key (slot 10 of the ring) along a direction no stored key has, and queries along
    # it: the window holds the answer.
    u = torch.randn(h, d, generator=torch.Generator().manual_seed(2))
    u = u / u.norm(dim=-1, keepdim=True)
    layer.k[:, layer.WIN + 10] = (8 * u).to(layer.k.dtype)
    q_win = (8 * u).repeat_interleave(g, 0)[:, None, :].expand(-1, 3, d)
    none = layer._exact_select(q_win, d ** -0.5, k_new)
    assert (none == -1).all(), none
    layer.cfg = CFG.replace(exact_ratio=0.0)
    assert (layer._exact_select(q_win, d ** -0.5, k_new) >= 0).all()
    layer.cfg = CFG
    q_store = _plant(cache, 0, [7, 20], [30, 12])
    ids = layer._exact_select(q_store, d ** -0.5, k_new)
    for head, blk in enumerate([7, 20]):
        assert ids[head, 0] == blk and ids[head, 1] == blk + 1, ids


def test_blocks_held_by_the_pinned_tier_are_not_chosen():
    model = tiny_model("llama")
    cfg = CFG.replace(pinned=64)
    patch(model, cfg)
    cache = SSACache(model.config, cfg)
    # Blocks 2 and 3 (positions sinks + 32 .. sinks + 63) are pinned whole.
    span = (cfg.sinks + 2 * cfg.block_size, cfg.sinks + 4 * cfg.block_size)
    prefill(model, cache, torch.randint(0, 300, (1, 700), generator=torch.Generator().manual_seed(0)),
            chunk_size=cfg.chunk_size, anchors=[span])
    layer = cache.layers[1]
    assert layer.n_pin == span[1] - span[0]
    q = torch.randn(model.config.num_attention_heads, 6, layer.dim, generator=torch.Generator().manual_seed(2))
    # Every block is wanted (top_k = all of them): the pinned ones must still be left out.
    layer.cfg = cfg.replace(top_k=layer.store.num_blocks)
    ids = layer._exact_select(q, layer.dim ** -0.5)
    for row in ids:
        chosen = set(row[row >= 0].tolist())
        assert 2 not in chosen and 3 not in chosen
        assert chosen == set(range(layer.store.num_blocks)) - {2, 3}


def _staged_sets(cache) -> list[list[frozenset]]:
    return [[frozenset(r[r >= 0].tolist()) for r in layer.staged_ids.numpy()] for layer in cache.layers]


def _ask(model, exact: bool, mode: str, n_new: int = 150):
    """Fill, ask a 20-token question (exactly or not), decode ``n_new`` tokens greedily."""
    cache = _filled(model, CFG)
    cache.select_exact = exact
    q_ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(9))
    logits = prefill(model, cache, q_ids, chunk_size=CFG.chunk_size)
    cache.select_exact = False
    at_question = _staged_sets(cache)
    decoder = Decoder(model, cache, mode=mode)
    logits = logits.reshape(-1, logits.shape[-1])[-1]
    for _ in range(n_new):
        logits = decoder(int(logits.argmax()))
    return cache, at_question, decoder


@pytest.mark.parametrize("mode", ["eager", "static"])
def test_decode_keeps_the_exact_choice(mode):
    model = tiny_model("llama")
    cache, at_question, decoder = _ask(model, True, mode)
    assert all(layer.exact_staged for layer in cache.layers)
    assert mode == "eager" or decoder.steps["static"] > 100
    # Decode evicted (new index entries) and re-selected many times; the staged blocks stayed.
    assert cache.layers[0].store.num_blocks > 40
    assert _staged_sets(cache) == at_question
    # The bound scorer would have moved them: without the exact choice, decode does re-select.
    plain, plain_at_question, _ = _ask(model, False, mode)
    assert not any(layer.exact_staged for layer in plain.layers)
    assert _staged_sets(plain) != plain_at_question
    # The question's exact choice differs from the bound scorer's somewhere.
    assert at_question != plain_at_question
    # A later chunk chosen without select_exact ends it.
    prefill(model, cache, torch.randint(0, 300, (1, 30)), chunk_size=CFG.chunk_size)
    assert not any(layer.exact_staged for layer in cache.layers)


def test_exact_choice_survives_save_and_load(tmp_path):
    model = tiny_model("llama")
    cache, at_question, _ = _ask(model, True, "eager", n_new=3)
    cache.save(tmp_path / "state.safetensors")
    loaded = SSACache.load(tmp_path / "state.safetensors", model.config, CFG)
    assert all(layer.exact_staged for layer in loaded.layers)
    assert _staged_sets(loaded) == _staged_sets(cache)
    # A state written before the flag existed loads with the bound scorer in charge.
    counters = cache.layers[0].counters()
    del counters["exact_staged"]
    fresh = SSACache(model.config, CFG, device="cpu", dtype=cache.layers[0].dtype)
    fresh.layers[0].restore({k: t.clone() for k, t in cache.layers[0].state_tensors().items()}, counters)
    assert fresh.layers[0].exact_staged is False


def test_select_exact_without_retrieval_changes_nothing():
    model = tiny_model("llama")
    cfg = CFG.replace(top_k=0, store="none")
    cache = _filled(model, cfg)
    cache.select_exact = True
    prefill(model, cache, torch.randint(0, 300, (1, 20)), chunk_size=cfg.chunk_size)
    assert not any(layer.exact_staged for layer in cache.layers)
    np.testing.assert_array_equal(cache.layers[0].staged_ids.numpy(), np.zeros((2, 0), dtype=np.int64))
