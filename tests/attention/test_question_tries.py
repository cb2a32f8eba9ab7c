"""SSAConfig.exact_tries: the question's exact choice tried several ways on one state, the answer
from the choice whose first token the model is most sure of (engine.question.prefill_question)."""

from __future__ import annotations

import pytest
import torch

import ssa_code.engine.question as question
from ssa_code import SSACache, SSAConfig, patch
from ssa_code.engine.prefill import prefill
from ssa_code.engine.question import prefill_question

from .conftest import SMALL, tiny_model

CFG = SMALL.replace(top_k=6)


def _context(cfg: SSAConfig, seed: int = 0):
    model = tiny_model("llama")
    patch(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 300, (1, 700), generator=gen)
    q = torch.randint(0, 300, (1, 40), generator=gen)
    return model, ids, q


def _fresh(model, cfg: SSAConfig, ids, q) -> tuple[torch.Tensor, list]:
    """A cache that prefilled ``ids`` and read ``q`` under ``cfg`` alone: logits, staged ids."""
    cache = SSACache(model.config, cfg)
    prefill(model, cache, ids, chunk_size=cfg.chunk_size)
    cache.select_exact = cfg.exact_question
    logits = prefill(model, cache, q, chunk_size=cfg.chunk_size)
    cache.select_exact = False
    return logits, [layer.staged_ids.clone() for layer in cache.layers]


def test_exact_tries_are_pairs_of_neighbour_counts():
    assert [(c.exact_before, c.exact_after, c.exact_tries) for c in SSAConfig(exact_tries=(1, 2, 0, 0)).
            question_choices()] == [(0, 1, ()), (1, 2, ()), (0, 0, ())]
    assert SSAConfig().question_choices() == [SSAConfig()]
    for bad in ((1,), (1, -1), (True, 1), [1, 2], (1.0, 2)):
        with pytest.raises(ValueError, match="exact_tries"):
            SSAConfig(exact_tries=bad)


def test_one_choice_reads_the_question_as_before():
    model, ids, q = _context(CFG)
    want, staged = _fresh(model, CFG, ids, q)
    cache = SSACache(model.config, CFG)
    prefill(model, cache, ids, chunk_size=CFG.chunk_size)
    got, choice = prefill_question(model, cache, q)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert choice.exact and choice.chosen == 0 and len(choice.confidence) == 1
    assert cache.select_exact is False
    assert all(torch.equal(layer.staged_ids, s) for layer, s in zip(cache.layers, staged))


@pytest.mark.parametrize("tries", [(1, 2, 0, 0), (0, 1)], ids=["different", "same_as_first"])
def test_the_most_confident_choice_answers_as_a_fresh_cache_would(tries):
    """The answer's logits and staged blocks are those of a cache that read the question under
    the chosen configuration alone. ``same_as_first``: the two choices tie and the first wins,
    so the state is read again after the last try."""
    cfg = CFG.replace(exact_tries=tries)
    model, ids, q = _context(cfg, seed=1)
    cache = SSACache(model.config, cfg)
    prefill(model, cache, ids, chunk_size=cfg.chunk_size)
    blocks = cache.layers[0].store.num_blocks
    got, choice = prefill_question(model, cache, q)
    choices = cfg.question_choices()
    assert len(choice.confidence) == len(choices)
    assert choice.chosen == max(range(len(choices)), key=lambda i: (choice.confidence[i], -i))
    if tries == (0, 1):
        assert choice.confidence[0] == choice.confidence[1] and choice.chosen == 0
    want, staged = _fresh(model, choices[choice.chosen], ids, q)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert all(torch.equal(layer.staged_ids, s) for layer, s in zip(cache.layers, staged))
    # Every try's confidence is that of its own fresh read.
    for c, conf in zip(choices, choice.confidence):
        assert conf == question._confidence(_fresh(model, c, ids, q)[0])
    assert cache.layers[0].store.num_blocks >= blocks and cache.select_exact is False


def test_a_choice_that_is_surer_wins(monkeypatch):
    """The choice with the highest first-token probability answers, whichever place it has."""
    cfg = CFG.replace(exact_tries=(1, 2, 0, 0))
    model, ids, q = _context(cfg, seed=2)
    cache = SSACache(model.config, cfg)
    prefill(model, cache, ids, chunk_size=cfg.chunk_size)
    sure = iter([0.2, 0.9, 0.5])
    monkeypatch.setattr(question, "_confidence", lambda logits: next(sure))
    got, choice = prefill_question(model, cache, q)
    assert choice.chosen == 1 and choice.confidence == [0.2, 0.9, 0.5]
    want, staged = _fresh(model, cfg.question_choices()[1], ids, q)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert all(torch.equal(layer.staged_ids, s) for layer, s in zip(cache.layers, staged))


def test_no_tries_without_an_exact_choice_or_a_context():
    for cfg in (CFG.replace(exact_tries=(1, 2), exact_question=False), CFG.replace(exact_tries=(1, 2), top_k=0)):
        model, ids, q = _context(cfg)
        cache = SSACache(model.config, cfg)
        prefill(model, cache, ids, chunk_size=cfg.chunk_size)
        _, choice = prefill_question(model, cache, q)
        assert not choice.exact and len(choice.confidence) == 1
    cfg = CFG.replace(exact_tries=(1, 2))
    model, _, q = _context(cfg)
    cache = SSACache(model.config, cfg)
    _, choice = prefill_question(model, cache, q)  # nothing before the question: nothing stored
    assert len(choice.confidence) == 1


def test_the_question_reads_under_the_config_it_is_given():
    """``cfg`` differing from the cache's own in question fields governs the choice, with one
    choice as with several (SSACache.use_question_config)."""
    model, ids, q = _context(CFG, seed=3)
    other = CFG.replace(exact_before=1, exact_after=0)
    cache = SSACache(model.config, CFG)
    prefill(model, cache, ids, chunk_size=CFG.chunk_size)
    got, _ = prefill_question(model, cache, q, other)
    patch(model, other)
    want, staged = _fresh(model, other, ids, q)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert all(torch.equal(layer.staged_ids, s) for layer, s in zip(cache.layers, staged))
    with pytest.raises(ValueError):
        cache.use_question_config(CFG.replace(window=128))
