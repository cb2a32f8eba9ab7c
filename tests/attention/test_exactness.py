"""Exact when it fits: SSA equals dense attention while every evicted block is retrieved."""

from __future__ import annotations

import inspect

import pytest
import torch

from ssa_code import SSACache, patch
from ssa_code.engine.prefill import prefill

from .conftest import SMALL, tiny_model


def _generate_kwargs(model, cache) -> dict:
    # transformers >= 5.24 names the cache `cache`; 5.17 only knows `past_key_values`.
    return {"cache": cache} if "cache" in inspect.signature(model.forward).parameters else {"past_key_values": cache}


def test_logits_match_dense_after_evictions(family):
    model = tiny_model(family)
    ids = torch.randint(0, 300, (1, 700), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = model(ids).logits[:, -1].float()
    patch(model, SMALL)
    cache = SSACache(model.config, SMALL)
    ssa = prefill(model, cache, ids, chunk_size=100, anchors=[(10, 20), (300, 310)])
    # 700 tokens through a 64-token window: blocks were evicted, stored, indexed and summarised.
    layer = cache.layers[0]
    assert layer.store.num_blocks > 30 and layer.summaries.n > 0 and layer.n_heavy > 0 and layer.n_pin == 20
    err = (ssa - dense).abs().max().item()
    assert err < 1e-4 * max(1.0, dense.abs().max().item()), f"max |ssa - dense| = {err}"


def test_greedy_decoding_matches_dense(family):
    model = tiny_model(family, seed=3)
    ids = torch.randint(0, 300, (1, 400), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=20, do_sample=False)
    patch(model, SMALL)
    cache = SSACache(model.config, SMALL)
    prefill(model, cache, ids[:, :-1], chunk_size=128)
    got = model.generate(ids, max_new_tokens=20, do_sample=False, **_generate_kwargs(model, cache))
    assert torch.equal(got, want), f"{got[0, -20:].tolist()} != {want[0, -20:].tolist()}"
    assert cache.get_seq_length() == ids.shape[1] + 19


@pytest.mark.parametrize("chunk", [1, 37, 256])
def test_chunk_size_does_not_change_the_result(chunk):
    model = tiny_model("llama")
    ids = torch.randint(0, 300, (1, 300), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        dense = model(ids).logits[:, -1].float()
    patch(model, SMALL)
    cache = SSACache(model.config, SMALL)
    ssa = prefill(model, cache, ids, chunk_size=chunk)
    assert (ssa - dense).abs().max().item() < 1e-4


def test_over_budget_degrades_but_stays_finite():
    """Past the budget (few retrieved blocks) SSA approximates; it must stay finite and close-ish."""
    model = tiny_model("qwen2")
    ids = torch.randint(0, 300, (1, 900), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        dense = torch.log_softmax(model(ids).logits[:, -1].float(), -1)
    cfg = SMALL.replace(top_k=2)
    patch(model, cfg)
    cache = SSACache(model.config, cfg)
    ssa = torch.log_softmax(prefill(model, cache, ids, chunk_size=128), -1)
    assert torch.isfinite(ssa).all()
    kl = torch.sum(dense.exp() * (dense - ssa)).item()
    assert 0.0 <= kl < 0.5, kl
