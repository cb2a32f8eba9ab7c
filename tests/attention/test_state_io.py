"""Saving and restoring the SSA state: same continuation, corruption detected."""

from __future__ import annotations

import pytest
import torch

from ssa_code import SSACache, patch
from ssa_code.engine.prefill import prefill

from .conftest import SMALL, tiny_model


def test_saved_state_continues_identically(tmp_path):
    model = tiny_model("qwen2")
    patch(model, SMALL)
    ids = torch.randint(0, 300, (1, 500), generator=torch.Generator().manual_seed(0))
    cache = SSACache(model.config, SMALL)
    prefill(model, cache, ids[:, :400], anchors=[(0, 8)])
    cache.save(tmp_path / "state.safetensors")
    want = prefill(model, cache, ids[:, 400:])
    loaded = SSACache.load(tmp_path / "state.safetensors", model.config, SMALL)
    assert loaded.get_seq_length() == 400 and loaded.store_bytes() > 0
    got = prefill(model, loaded, ids[:, 400:])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert loaded.pinned.spans() == [(0, 8)]


def test_corrupted_or_mismatched_state_is_refused(tmp_path):
    model = tiny_model("llama")
    patch(model, SMALL)
    cache = SSACache(model.config, SMALL)
    prefill(model, cache, torch.randint(0, 300, (1, 200)))
    path = tmp_path / "state.safetensors"
    cache.save(path)
    with pytest.raises(ValueError, match="another SSA configuration"):
        SSACache.load(path, model.config, SMALL.replace(window=128))
    other = tiny_model("llama", num_hidden_layers=3)
    with pytest.raises(ValueError, match="another model configuration"):
        SSACache.load(path, other.config, SMALL)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="unreadable state file"):
        SSACache.load(path, model.config, SMALL)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError):
        SSACache.load(path, model.config, SMALL)
