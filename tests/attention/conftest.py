"""Tiny random models of every supported family, built from their config classes."""

from __future__ import annotations

import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from ssa_code import SSACache, SSAConfig, patch
from ssa_code.engine.prefill import prefill

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=300, max_position_embeddings=4096)

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),
}


def tiny_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    config_cls, model_cls, extra = FAMILIES[family]
    config = config_cls(**{**COMMON, **extra, **overrides})
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return model_cls(config).eval()


def filled_cache(model: torch.nn.Module, cfg: SSAConfig, n: int = 700, seed: int = 0) -> SSACache:
    """``model`` patched with ``cfg`` and an SSACache prefilled with ``n`` seeded random tokens
    in ``cfg.chunk_size`` chunks."""
    patch(model, cfg)
    cache = SSACache(model.config, cfg)
    prefill(model, cache, torch.randint(0, 300, (1, n), generator=torch.Generator().manual_seed(seed)),
            chunk_size=cfg.chunk_size)
    return cache


# Tiers of a few blocks each: a 700-token context evicts ~40 blocks and consolidates them.
SMALL = SSAConfig(sinks=4, pinned=32, heavy=16, window=64, summaries=16, block_size=16, index_size=64,
                  top_k=64, observe=8, chunk_size=100, rebase_every=16)


@pytest.fixture(params=list(FAMILIES))
def family(request) -> str:
    return request.param
