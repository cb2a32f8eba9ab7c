"""Each SSA mechanism on its own: scoring, consolidation, anchors."""

from __future__ import annotations

import dataclasses

import torch

from ssa_code import SSACache, patch
from ssa_code.attention.anchors import PinnedSpans, select_heavy_hitters
from ssa_code.attention.consolidation import Consolidated, merge_older_half
from ssa_code.attention.scoring import select_blocks
from ssa_code.engine.prefill import prefill

from .conftest import SMALL, filled_cache, tiny_model


def test_select_blocks_top_k_threshold_and_coarse_entries():
    scores = torch.tensor([[0.0, 5.0, 1.0, 4.0, -9.0], [3.0, 0.0, 0.0, 0.0, 9.0]])
    lo = torch.tensor([0, 1, 2, 3, 5])
    hi = torch.tensor([1, 2, 3, 5, 6])  # entry 3 covers two blocks
    ids = select_blocks(scores, lo, hi, n_valid=5, top_k=3, threshold=0.0)
    assert ids[0].tolist() == [1, 3, 4]
    assert ids[1].tolist() == [5, 0, 3] or ids[1].tolist()[:2] == [5, 0]
    # A threshold on the softmax share keeps only the dominant entry.
    ids = select_blocks(scores, lo, hi, n_valid=5, top_k=3, threshold=0.5)
    assert ids[1].tolist() == [5, -1, -1]
    # Entries past n_valid never count.
    ids = select_blocks(scores, lo, hi, n_valid=2, top_k=3, threshold=0.0)
    assert set(ids[1].tolist()) == {0, 1, -1}


def test_merge_keeps_count_weighted_means():
    key = torch.randn(2, 6, 4)
    count = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0, 1.0])
    lo = torch.arange(6) * 10
    hi = lo + 10
    k, v, c, l, h = merge_older_half(key, key.clone(), count, lo, hi)
    assert c.tolist() == [4.0, 4.0, 5.0, 1.0]
    torch.testing.assert_close(k[:, 0], (key[:, 0] * 1 + key[:, 1] * 3) / 4)
    assert l.tolist() == [0, 20, 40, 50] and h.tolist() == [20, 40, 50, 60]


def test_consolidated_is_bounded_and_covers_everything():
    tier = Consolidated(8, heads=2, dim=4, device=torch.device("cpu"), dtype=torch.float32, with_values=True)
    total = 0
    for step in range(20):
        n = 3
        lo = torch.arange(total, total + n) * 16
        tier.add(torch.randn(2, n, 4), torch.randn(2, n, 4), torch.full((n,), 16.0), lo, lo + 16)
        total += n
        assert tier.n <= 8
        # Spans stay ordered and contiguous; counts add up to every token ever added.
        assert tier.lo[0] == 0 and torch.equal(tier.lo[1:tier.n], tier.hi[: tier.n - 1])
        assert tier.count[: tier.n].sum().item() == 16 * total
    # Progressive: older entries are coarser than newer ones.
    assert tier.count[0] > tier.count[tier.n - 1]


def test_pinned_spans_merge_and_contain():
    spans = PinnedSpans()
    spans.add(10, 20)
    spans.add(15, 30)
    spans.add(40, 41)
    assert spans.spans() == [(10, 30), (40, 41)] and spans.tokens() == 21
    pos = torch.tensor([9, 10, 29, 30, 40, 41])
    assert spans.contains(pos).tolist() == [False, True, True, False, True, False]


def test_heavy_hitters_keep_highest_mass():
    cur = torch.tensor([[5.0, 1.0]])
    cand = torch.tensor([[3.0, 9.0, 0.5]])
    assert select_heavy_hitters(cur, cand, 3).tolist() == [[3, 0, 2]]


def test_heavy_hitter_tier_holds_the_most_attended_tokens():
    """Tokens whose keys every query likes end up in the heavy tier after leaving the window."""
    model = tiny_model("llama")
    patch(model, SMALL)
    cache = SSACache(model.config, SMALL)
    prefill(model, cache, torch.randint(0, 300, (1, 600), generator=torch.Generator().manual_seed(0)), chunk_size=50)
    layer = cache.layers[0]
    heavy = layer.pos[:, layer.HEAVY: layer.HEAVY + layer.n_heavy]
    assert layer.n_heavy == SMALL.heavy
    # Each heavy hitter has left the window and is not a sink or a pinned token.
    assert (heavy >= SMALL.sinks).all() and (heavy < layer.frontier).all()
    # Mass is sorted: the tier keeps the highest-mass tokens first.
    m = layer.mass[:, layer.HEAVY: layer.HEAVY + layer.n_heavy]
    assert (m[:, :-1] >= m[:, 1:]).all()


def test_staging_fetches_only_missing_blocks():
    cfg = SMALL.replace(top_k=4)
    cache = filled_cache(tiny_model("llama"), cfg, n=600)
    layer = cache.layers[0]
    fetched = []
    original = layer.store.read_into
    layer.store.read_into = lambda heads, ids, k, v, rows: (fetched.append(ids.copy()), original(heads, ids, k, v, rows))
    ids = layer.staged_ids.numpy().copy()
    layer.stager.place(ids)
    assert fetched == [] and not layer.stager.ready
    swapped = ids.copy()
    swapped[0, 0] = next(b for b in range(layer.store.num_blocks) if b not in ids[0].tolist())
    before = layer.k[0, layer.STAGE + 1 * cfg.block_size].clone()
    layer.stager.place(swapped)
    assert len(fetched) == 1 and fetched[0].tolist() == [swapped[0, 0]]
    # Nothing changes in the tier buffer before the install.
    assert layer.staged_ids[0, 0].item() == ids[0, 0]
    layer.stager.install()
    # Untouched slots keep their content; the new block sits where the dropped one was.
    assert torch.equal(layer.k[0, layer.STAGE + 1 * cfg.block_size], before)
    assert layer.pos[0, layer.STAGE].item() == cfg.sinks + swapped[0, 0] * cfg.block_size
    assert layer.staged_ids[0, 0].item() == swapped[0, 0]


def test_prefill_scores_with_the_last_queries_and_a_stride():
    model = tiny_model("llama")
    cfg = SMALL.replace(score_queries=8, observe=3)
    patch(model, cfg)
    cache = SSACache(model.config, cfg)
    prefill(model, cache, torch.randint(0, 300, (1, 50)), chunk_size=50)
    layer = cache.layers[0]
    q = torch.arange(40.0).view(1, 40, 1).expand(2, 40, 4)
    kept = layer._scoring_queries(q)[0, :, 0].tolist()
    assert len(kept) <= 8 and kept[-3:] == [37.0, 38.0, 39.0] and kept[0] == 0.0
    assert kept == sorted(set(kept))
    short = q[:, :8]
    assert layer._scoring_queries(short) is short
    assert SSACache(model.config, cfg.replace(score_queries=0)).ssa_config.score_queries == 0


def test_decode_evicts_decode_evict_blocks_at_a_time():
    from ssa_code.engine.generate import forward_tokens

    model = tiny_model("llama")
    cfg = SMALL.replace(decode_evict=3)
    cache = filled_cache(model, cfg, n=400, seed=1)
    layer = cache.layers[0]
    assert layer.cfg.ring == cfg.window + 3 * cfg.block_size
    moves = []
    with torch.inference_mode():
        for token in range(200):
            before = layer.frontier
            forward_tokens(model, cache, torch.tensor([[token % 300]]))
            if layer.frontier != before:
                moves.append(layer.frontier - before)
            # Every window token is still in the ring, at its slot.
            held = set(layer.pos[0, layer.WIN:].tolist())
            assert set(range(layer.frontier, layer.seen)) <= held
    assert moves and all(m == 3 * cfg.block_size for m in moves)


def test_summary_tokens_caps_the_summaries_total_weight():
    model = tiny_model("llama")
    plain, capped = (filled_cache(model, dataclasses.replace(SMALL, summary_tokens=cap)).layers[0]
                     for cap in (0, 100))
    n = plain.summaries.n
    count = plain.summaries.count[:n]
    assert n > 2 and count.sum() > 100  # the 700-token context evicts far more than the cap
    # Uncapped: log n each; capped: the same weights relative to each other, summing to 100 tokens.
    torch.testing.assert_close(plain._summary_bias(), count.log())
    torch.testing.assert_close(capped._summary_bias().exp().sum(), torch.tensor(100.0))
    torch.testing.assert_close(capped._summary_bias() - plain._summary_bias(),
                               torch.full((n,), -float((count.sum() / 100).log())))
    # The buffer's summary slots carry that bias wherever a staged block does not mask them.
    bias = capped.bias[:, capped.SUMM:capped.SUMM + n]
    live = torch.isfinite(bias)
    assert live.any()
    torch.testing.assert_close(bias[live], capped._summary_bias().expand_as(bias)[live])
