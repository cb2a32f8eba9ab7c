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


def _answer(model, cache, question: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """A question's chunk chosen exactly, then ``steps`` greedy tokens: every step's logits."""
    from ssa_code.engine.generate import forward_tokens

    cache.select_exact = True
    out = [prefill(model, cache, question)[0]]
    for _ in range(steps):
        tok = out[-1].argmax().reshape(1, 1)
        out.append(forward_tokens(model, cache, tok).reshape(-1))
    cache.select_exact = False
    return torch.stack([o.reshape(-1) for o in out])


def test_rewound_state_answers_as_a_fresh_one():
    """checkpoint / rewind: questions asked one after another of one prefill, each rewound to
    it, answer exactly as on a cache that prefilled the same tokens and asked only that one."""
    cfg = SMALL.replace(top_k=4)
    model = tiny_model("llama")
    patch(model, cfg)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (1, 600), generator=gen)
    questions = [torch.randint(0, 300, (1, 120), generator=gen) for _ in range(2)]
    cache = SSACache(model.config, cfg)
    prefill(model, cache, ids, anchors=[(0, 8)], chunk_size=cfg.chunk_size)
    saved = cache.checkpoint()
    blocks = cache.layers[0].store.num_blocks
    got = []
    for q in questions:
        got.append(_answer(model, cache, q))
        # The 120-token question evicted blocks into the store; the rewind forgets them.
        assert cache.layers[0].store.num_blocks > blocks
        cache.rewind(saved)
        assert cache.layers[0].store.num_blocks == blocks and cache.get_seq_length() == 600
    for q, answer in zip(questions, got):
        fresh = SSACache(model.config, cfg)
        prefill(model, fresh, ids, anchors=[(0, 8)], chunk_size=cfg.chunk_size)
        torch.testing.assert_close(answer, _answer(model, fresh, q), atol=0, rtol=0)
    # A question-time knob changed between rewinds (what the needle benchmark's variants do).
    other = cfg.replace(exact_before=1)
    cache.rewind(saved, question_config=other)
    varied = _answer(model, cache, questions[0])
    fresh = SSACache(model.config, other)
    patch(model, other)
    prefill(model, fresh, ids, anchors=[(0, 8)], chunk_size=cfg.chunk_size)
    torch.testing.assert_close(varied, _answer(model, fresh, questions[0]), atol=0, rtol=0)
    # Only question-time fields may change under a cache, and the question must fit its tier.
    for bad in (cfg.replace(window=128), cfg.replace(exact_top_k=cfg.top_k + 1)):
        with pytest.raises(ValueError):
            cache.rewind(saved, question_config=bad)
