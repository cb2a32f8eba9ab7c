"""Public API, validation at the boundary, and refusal of mismatched models."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config
from transformers.cache_utils import Cache

import ssa_code
from ssa_code import SSACache, SSAConfig, patch
from ssa_code.engine.prefill import prefill

from .conftest import SMALL, tiny_model


def test_public_names():
    assert ssa_code.SSAConfig is SSAConfig and issubclass(SSACache, Cache)
    model = tiny_model("llama")
    assert patch(model, SMALL) is model
    assert model.config._attn_implementation == "ssa"
    cache = SSACache(model.config, SMALL)
    assert cache.gpu_bytes() == 0 and cache.store_bytes() == 0
    prefill(model, cache, torch.randint(0, 300, (1, 50)))
    assert cache.gpu_bytes() > 0 and cache.get_seq_length() == 50


@pytest.mark.parametrize("field,value", [
    ("window", 0), ("window", 8), ("sinks", -1), ("block_size", 0), ("top_k", 1.5), ("threshold", 1.0),
    ("threshold", float("nan")), ("store", "cloud"), ("kernels", "cuda"), ("far_distance", 0), ("chunk_size", -4),
    ("exact_question", 1),
])
def test_bad_config_names_field_and_value(field, value):
    with pytest.raises(ValueError) as info:
        SSAConfig(**{field: value})
    assert field in str(info.value) and repr(value) in str(info.value)


def test_disk_store_needs_a_folder():
    with pytest.raises(ValueError, match="store_dir"):
        SSAConfig(store="disk")


def test_presets():
    assert SSAConfig.from_name("default") == SSAConfig()
    assert SSAConfig.from_name("streaming").store == "none"
    assert SSAConfig.from_name("small", window=512).window == 512
    with pytest.raises(ValueError, match="unknown SSAConfig preset 'huge'"):
        SSAConfig.from_name("huge")


def test_unsupported_family_lists_supported_ones():
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2)
    with pytest.raises(ValueError) as info:
        SSACache(config, SMALL)
    for name in ("llama", "mistral", "qwen2", "qwen3"):
        assert name in str(info.value)


def test_cache_for_another_model_is_refused():
    small = tiny_model("llama")
    other = tiny_model("llama", num_attention_heads=8, num_key_value_heads=4)
    patch(other, SMALL)
    cache = SSACache(small.config, SMALL)
    with pytest.raises(ValueError, match="another model configuration"):
        prefill(other, cache, torch.randint(0, 300, (1, 20)))


def test_unpatched_model_is_refused():
    model = tiny_model("qwen2")
    cache = SSACache(model.config, SMALL)
    with pytest.raises(ValueError, match="patched"):
        prefill(model, cache, torch.randint(0, 300, (1, 20)))


def test_batch_of_two_is_refused():
    model = tiny_model("qwen3")
    patch(model, SMALL)
    cache = SSACache(model.config, SMALL)
    with pytest.raises(ValueError, match="one sequence"):
        with torch.no_grad():
            model(torch.randint(0, 300, (2, 8)), past_key_values=cache)


def test_bad_pin_span():
    model = tiny_model("llama")
    cache = SSACache(model.config, SMALL)
    with pytest.raises(ValueError, match="pin span"):
        cache.pin(5, 2)


def test_dense_fallback_without_ssa_cache():
    """A patched model called without an SSACache attends densely (same as SDPA)."""
    model = tiny_model("mistral")
    ids = torch.randint(0, 300, (1, 40))
    with torch.no_grad():
        want = model(ids).logits
        patch(model, SMALL)
        got = model(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fit_keeps_window_and_chunk_inside_the_trained_range():
    short = tiny_model("llama", max_position_embeddings=4096).config
    fitted = SSAConfig().fit(short)
    assert fitted.chunk_size == 1024 and fitted.chunk_size + fitted.window + fitted.block_size <= 4096
    assert fitted.window % fitted.block_size == 0
    long = tiny_model("llama", max_position_embeddings=32768).config
    assert SSAConfig().fit(long) is not None and SSAConfig().fit(long) == SSAConfig()
