"""The question after a prefilled context: its exact block choice, tried more than one way.

With ``SSAConfig.exact_question`` a question chooses the stored blocks its answer reads by exact
attention over the whole store (``SSACache.select_exact``): the best blocks, each with
neighbours (``exact_before`` / ``exact_after``) so that a line crossing a block boundary stays
whole. Which neighbours a fact needs depends on where its line meets those boundaries, and a
choice that cuts it leaves the model unsure of the first answer token. With
``SSAConfig.exact_tries`` the question is read once per choice from the same state
(``SSACache.checkpoint`` / ``rewind``) and the answer comes from the choice whose first token the
model is most sure of.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from ssa_code.attention.cache import SSACache
from ssa_code.attention.config import SSAConfig
from ssa_code.engine.prefill import prefill


@dataclass
class QuestionChoice:
    """How the question's blocks were chosen.

    Attributes:
        exact: whether the question chose its blocks by exact attention over the store.
        confidence: per configuration tried (``SSAConfig.question_choices``), the probability
            of its most likely first answer token; one entry when only one was tried.
        chosen: index of the configuration the answer comes from (the first on ties).
    """

    exact: bool
    confidence: list[float] = field(default_factory=list)
    chosen: int = 0


@torch.no_grad()
def prefill_question(model: torch.nn.Module, cache: SSACache, ids: torch.Tensor, cfg: SSAConfig | None = None,
                     *, anchors: Iterable[tuple[int, int]] = ()) -> tuple[torch.Tensor, QuestionChoice]:
    """Feed the question ``ids [1, M]`` after the context in ``cache``, choosing its blocks.

    ``cfg``: the question-time configuration (default: the cache's own); it may differ from
    the cache's in ``QUESTION_FIELDS`` only. ``anchors``: spans to pin, as for ``prefill``.
    Returns the float32 logits ``[1, V]`` of the question's last token, with the cache in the
    state of the chosen configuration (its staged blocks are those the answer reads), and the
    :class:`QuestionChoice`.
    """
    cfg = cfg or cache.ssa_config
    anchors = list(anchors)
    exact = cfg.exact_question and cfg.staging > 0
    choices = cfg.question_choices() if exact else [cfg]
    # Trying choices needs a state to go back to; an empty cache has no blocks to choose.
    if len(choices) > 1 and not all(layer.is_initialized for layer in cache.layers):
        choices = choices[:1]

    def read(choice: SSAConfig) -> torch.Tensor:
        cache.use_question_config(choice)
        cache.select_exact = exact
        try:
            return prefill(model, cache, ids, chunk_size=choice.chunk_size, anchors=anchors)
        finally:
            cache.select_exact = False

    if len(choices) == 1:
        logits = read(choices[0])
        return logits, QuestionChoice(exact, [_confidence(logits)], 0)
    saved = cache.checkpoint()
    confidence = []
    for i, choice in enumerate(choices):
        if i:
            cache.rewind(saved)
        logits = read(choice)
        confidence.append(_confidence(logits))
    best = surest(confidence)
    if best != len(choices) - 1:
        # The last read left its own state: read the winner again (the same logits, the same
        # staged blocks; the state is deterministic given its checkpoint).
        cache.rewind(saved)
        logits = read(choices[best])
    return logits, QuestionChoice(exact, confidence, best)


def surest(confidence: Sequence[float]) -> int:
    """Index of the choice whose first answer token is most probable; the first wins ties."""
    return max(range(len(confidence)), key=lambda i: (confidence[i], -i))


def _confidence(logits: torch.Tensor) -> float:
    """The probability of the most likely next token."""
    return float(torch.softmax(logits.float().reshape(-1, logits.shape[-1])[-1], -1).max())
