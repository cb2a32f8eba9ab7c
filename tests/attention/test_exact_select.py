"""Exact question-time selection (SSACache.select_exact): scores, choice, and how long it lasts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssa_code import SSACache, patch
from ssa_code.attention.positions import rotate
from ssa_code.attention.store import HostStore
from ssa_code.attention.scoring import exact_block_scores, pick_with_neighbours
from ssa_code.engine.decode import Decoder
from ssa_code.engine.prefill import prefill

from .conftest import SMALL, filled_cache, tiny_model

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


def test_exact_block_scores_in_bfloat16_stay_close():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(4, 6, 32, generator=gen)
    k = torch.randn(2, 10 * 4, 32, generator=gen)
    got = exact_block_scores(q.bfloat16(), [(0, k.bfloat16())], 10, 4, 32 ** -0.5)
    want = block_scores_reference(q.bfloat16().float(), k.bfloat16().float(), 4, 32 ** -0.5)
    err = (got.double() - want).abs().max().item()
    assert err < 1e-4, f"bfloat16 inputs: error {err:.2e}"


def test_pick_with_neighbours():
    scores = torch.tensor([[0.0, 1.0, 5.0, 2.0, 4.0, 3.0, -1.0, -2.0],
                           [9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]])
    ids = pick_with_neighbours(scores, 4)
    # Head 0: best two (2, 4) each with its successor (3, 5). Head 1: block 0 with 1, block 7 has
    # no successor, then the next best (6).
    assert ids.tolist() == [[2, 3, 4, 5], [0, 1, 7, 6]]
    # Adjacent best blocks share a successor; the freed slots go to the next best.
    scores = torch.tensor([[1.0, 9.0, 8.0, 0.0, 5.0, 4.0]])
    assert pick_with_neighbours(scores, 4).tolist() == [[1, 2, 3, 4]]
    # Blocks not worth staging (-inf) are never chosen, not even as a successor; short rows pad with -1.
    scores = torch.tensor([[3.0, float("-inf"), 1.0]])
    assert pick_with_neighbours(scores, 4).tolist() == [[0, 2, -1, -1]]
    assert pick_with_neighbours(torch.tensor([[1.0, 2.0]]), 1).tolist() == [[1]]


def test_pick_with_neighbours_on_both_sides():
    scores = torch.tensor([[0.0, 1.0, 5.0, 2.0, 4.0, 3.0, -1.0, -2.0, 7.0]])
    # top_k 6 with one block each side: the best two (8, 2) lead; 8 has no successor and 7 in
    # front of it; 2 brings 1 and 3; the freed slot goes to the next best (4).
    assert pick_with_neighbours(scores, 6, before=1, after=1).tolist() == [[8, 7, 2, 1, 3, 4]]
    # No neighbours: the plain top_k.
    assert pick_with_neighbours(scores, 3, before=0, after=0).tolist() == [[8, 2, 4]]
    # Two blocks behind: a third of top_k leads.
    assert pick_with_neighbours(scores, 6, before=0, after=2).tolist() == [[8, 2, 3, 4, 5, 1]]
    # A margin: only blocks within 2.5 of the best (8: 7.0, 2: 5.0) lead; their neighbours
    # join whatever their own scores; nothing else fills.
    assert pick_with_neighbours(scores, 6, before=1, after=1, margin=2.5).tolist() == [[8, 7, 2, 1, 3, -1]]
    assert pick_with_neighbours(scores, 6, before=0, after=1, margin=0.5).tolist() == [[8, -1, -1, -1, -1, -1]]
    # A predecessor not worth staging (-inf) is skipped.
    scores = torch.tensor([[float("-inf"), 5.0, 1.0, 0.5]])
    assert pick_with_neighbours(scores, 3, before=1, after=1).tolist() == [[1, 2, 3]]


def test_a_planted_block_is_chosen_with_its_successor():
    """A stored block whose keys, rotated where attention shows them, equal a group's query wins."""
    model = tiny_model("llama")
    # Far keys shown at most 200 positions away: effective positions differ from true ones.
    cache = filled_cache(model, CFG.replace(far_distance=200))
    layer = cache.layers[0]
    assert not torch.equal(layer._eff(torch.tensor([CFG.sinks + 7 * CFG.block_size])),
                           torch.tensor([CFG.sinks + 7 * CFG.block_size]))
    h, d, b, nb = layer.heads, layer.dim, CFG.block_size, layer.store.num_blocks
    hq = model.config.num_attention_heads
    g = hq // h
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(h, d, generator=gen)
    u = 8 * u / u.norm(dim=-1, keepdim=True)
    planted, decoys = [7, 20], [30, 12]  # per KV head
    k_raw, v = layer.store.state()["k"].clone(), layer.store.state()["v"].clone()  # [H, N, B, D]
    for head, blk in enumerate(planted):
        # A decoy: keys equal to u before rotation, so it wins if the keys are not rotated.
        k_raw[head, decoys[head]] = u[head]
        pos = CFG.sinks + blk * b + torch.arange(b)
        # Un-rotated so that rotating to the block's effective positions gives u exactly.
        k_raw[head, blk] = rotate(u[head].expand(b, d), -layer._eff(pos), cache.inv_freq_on(layer.device))
    layer.store = HostStore(h, b, d, layer.dtype)
    layer.store.append(k_raw, v)
    q = u.repeat_interleave(g, dim=0)[:, None, :].expand(hq, 3, d)  # [Hq, 3, D]
    ids = layer._exact_select(q, d ** -0.5)
    assert ids.shape == (h, CFG.top_k)
    for head, blk in enumerate(planted):
        assert ids[head, 0] == blk and ids[head, 1] == blk + 1, ids
    assert all(len(set(row[row >= 0].tolist())) == (row >= 0).sum() for row in ids)
    assert ((ids >= -1) & (ids < nb)).all()
    # The question's own cap (exact_top_k) keeps the best blocks with their neighbours, fewer.
    layer.cfg = layer.cfg.replace(exact_top_k=3, exact_before=1)
    few = layer._exact_select(q, d ** -0.5)
    assert few.shape == (h, CFG.top_k) and ((few >= 0).sum(1) == 3).all()
    for head, blk in enumerate(planted):
        assert few[head, :3].tolist() == [blk, blk - 1, blk + 1], few


@pytest.mark.parametrize("far_distance", [200, 330, None])
@pytest.mark.parametrize("logits", [1 << 25, 1])
def test_far_runs_rotate_the_queries_back_instead_of_the_keys(far_distance, logits, monkeypatch):
    """_exact_scores equals scoring every stored key rotated to its effective position."""
    model = tiny_model("llama")
    cfg = CFG if far_distance is None else CFG.replace(far_distance=far_distance)
    cache = filled_cache(model, cfg)
    layer = cache.layers[1]
    floor = int(layer._eff(torch.zeros(1, dtype=torch.int64)).item())
    b, h = cfg.block_size, layer.heads
    # 200 and 330 put floor inside the store (330: not on a block boundary); None: true positions.
    assert (floor > cfg.sinks + 2 * b) if far_distance else floor == 0
    # logits = 1: one block per run, so runs split at every block and around floor.
    monkeypatch.setattr(type(layer), "EXACT_LOGITS", logits)
    q = torch.randn(model.config.num_attention_heads, 5, layer.dim, generator=torch.Generator().manual_seed(3))
    got = layer._exact_scores(q, layer.dim ** -0.5)
    k = layer.store.state()["k"]  # [H, N, B, D], un-rotated
    nb = k.shape[1]
    pos = cfg.sinks + torch.arange(nb * b)
    k_eff = rotate(k.reshape(h, nb * b, -1), layer._eff(pos), cache.inv_freq_on(layer.device))
    want = exact_block_scores(q, [(0, k_eff)], nb, b, layer.dim ** -0.5)
    err = (got - want).abs().max().item()
    assert got.shape == (h, nb) and err < 1e-4, f"query-side rotation differs by {err:.2e}"


def test_blocks_held_by_the_pinned_tier_are_not_chosen():
    model = tiny_model("llama")
    # The question may stage more blocks than the store will hold (exact_top_k > top_k: a
    # staging tier of that many blocks), so every block is wanted.
    cfg = CFG.replace(pinned=64, exact_top_k=64)
    patch(model, cfg)
    cache = SSACache(model.config, cfg)
    # Blocks 2 and 3 (positions sinks + 32 .. sinks + 63) are pinned whole.
    span = (cfg.sinks + 2 * cfg.block_size, cfg.sinks + 4 * cfg.block_size)
    prefill(model, cache, torch.randint(0, 300, (1, 700), generator=torch.Generator().manual_seed(0)),
            chunk_size=cfg.chunk_size, anchors=[span])
    layer = cache.layers[1]
    assert layer.n_pin == span[1] - span[0]
    q = torch.randn(model.config.num_attention_heads, 6, layer.dim, generator=torch.Generator().manual_seed(2))
    # Every block is wanted: the pinned ones must still be left out.
    assert layer.store.num_blocks < cfg.exact_top_k
    ids = layer._exact_select(q, layer.dim ** -0.5)
    for row in ids:
        chosen = set(row[row >= 0].tolist())
        assert 2 not in chosen and 3 not in chosen
        assert chosen == set(range(layer.store.num_blocks)) - {2, 3}


def _staged_sets(cache) -> list[list[frozenset]]:
    return [[frozenset(r[r >= 0].tolist()) for r in layer.staged_ids.numpy()] for layer in cache.layers]


def _ask(model, exact: bool, mode: str, n_new: int = 150):
    """Fill, ask a 20-token question (exactly or not), decode ``n_new`` tokens greedily."""
    cache = filled_cache(model, CFG)
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
    cache = filled_cache(model, cfg)
    cache.select_exact = True
    prefill(model, cache, torch.randint(0, 300, (1, 20)), chunk_size=cfg.chunk_size)
    assert not any(layer.exact_staged for layer in cache.layers)
    np.testing.assert_array_equal(cache.layers[0].staged_ids.numpy(), np.zeros((2, 0), dtype=np.int64))


def test_a_question_may_stage_more_blocks_than_a_chunk():
    """exact_top_k > top_k: the staging tier holds that many blocks; prefill chunks still stage
    top_k of them, the question's exact choice all; the empty slots change no prefill output."""
    assert CFG.replace(exact_top_k=10).stage_blocks == 10 and CFG.replace(exact_top_k=2).stage_blocks == CFG.top_k
    assert CFG.replace(exact_top_k=10).capacity == CFG.capacity + 6 * CFG.block_size
    assert CFG.replace(exact_top_k=10, store="none").staging == 0
    model = tiny_model("llama")
    ids = torch.randint(0, 300, (1, 700), generator=torch.Generator().manual_seed(3))
    outs, caches = [], []
    for cfg in (CFG, CFG.replace(exact_top_k=10)):
        patch(model, cfg)
        cache = SSACache(model.config, cfg)
        outs.append(prefill(model, cache, ids[:, :600], chunk_size=cfg.chunk_size))
        caches.append(cache)
    torch.testing.assert_close(outs[1], outs[0], atol=0, rtol=0)
    wide = caches[1]
    assert all(int((layer.staged_ids >= 0).sum(1).max()) <= CFG.top_k for layer in wide.layers)
    wide.select_exact = True
    prefill(model, wide, ids[:, 600:], chunk_size=CFG.chunk_size)
    assert all(int((layer.staged_ids >= 0).sum(1).min()) == 10 for layer in wide.layers)
