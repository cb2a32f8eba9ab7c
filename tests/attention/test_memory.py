"""Constant memory: the SSA state is fixed-size; only the off-GPU store grows."""

from __future__ import annotations

import numpy as np
import torch

from ssa_code import SSACache, SSAConfig, patch
from ssa_code.engine.prefill import forward_chunk

from .conftest import tiny_model

BUDGET = SSAConfig(sinks=8, pinned=16, heavy=16, window=128, summaries=16, block_size=32, index_size=32,
                   top_k=4, observe=8, chunk_size=1024)


def _fill(cache, model, total: int, marks: list[int]) -> dict[int, tuple[int, int]]:
    seen = {}
    gen = torch.Generator().manual_seed(0)
    pos = cache.get_seq_length()
    while pos < total:
        ids = torch.randint(0, 300, (1, 512), generator=gen)
        with torch.no_grad():
            forward_chunk(model, cache, ids, pos, logits=False)
        pos += 512
        if pos in marks:
            seen[pos] = (cache.gpu_bytes(), cache.store_bytes())
    return seen


def test_state_bytes_constant_and_store_linear():
    model = tiny_model("llama", num_hidden_layers=1)
    patch(model, BUDGET)
    cache = SSACache(model.config, BUDGET)
    marks = [4096, 16384, 65536]
    seen = _fill(cache, model, 65536, marks)
    gpu = {n: g for n, (g, _) in seen.items()}
    assert len(set(gpu.values())) == 1, gpu
    stored = {n: s for n, (_, s) in seen.items()}
    # Every token that left the window is stored once, at full resolution.
    per_token = 2 * model.config.num_key_value_heads * 16 * 4  # K and V, head_dim 16, float32
    for n, s in stored.items():
        evicted = cache.layers[0].store.num_blocks * BUDGET.block_size if n == 65536 else None
        assert s > 0
        if evicted is not None:
            assert s == evicted * per_token
    ratio = stored[65536] / stored[16384]
    assert 4.0 < ratio < 4.2, ratio


def test_store_none_keeps_nothing_and_state_stays_fixed():
    cfg = BUDGET.replace(store="none")
    model = tiny_model("qwen2", num_hidden_layers=1)
    patch(model, cfg)
    cache = SSACache(model.config, cfg)
    seen = _fill(cache, model, 16384, [4096, 16384])
    assert {s for _, s in seen.values()} == {0}
    assert len({g for g, _ in seen.values()}) == 1


def test_disk_store_round_trips(tmp_path):
    cfg = BUDGET.replace(store="disk", store_dir=str(tmp_path / "store"))
    model = tiny_model("llama", num_hidden_layers=1)
    patch(model, cfg)
    cache = SSACache(model.config, cfg)
    _fill(cache, model, 4096, [4096])
    layer = cache.layers[0]
    assert layer.store.nbytes() > 0 and any((tmp_path / "store").iterdir())
    k = torch.full((4, cfg.block_size, model.config.head_dim), float("nan"), dtype=layer.dtype)
    v = k.clone()
    layer.store.read_into(np.array([0, 0, 1]), np.array([0, 1, 2]), k, v, np.array([3, 1, 2]))
    full = layer.store.state()
    assert torch.equal(k[2], full["k"][1, 2]) and torch.equal(v[1], full["v"][0, 1])
    assert torch.equal(k[3], full["k"][0, 0]) and k[0].isnan().all()
    cache.close()
    assert not any((tmp_path / "store").iterdir())
