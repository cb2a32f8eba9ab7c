"""The decode loop agrees with transformers' own greedy generation and streams text."""

from __future__ import annotations

import pytest
import torch

from ssa_code.engine.generate import (
    GenerationConfig,
    TextStream,
    forward_tokens,
    generate,
    pick_token,
    repeated_line,
)
from ssa_code.engine.models import ModelSpec, load_model


def test_greedy_matches_hf_generate(random_model_dir):
    from transformers import DynamicCache

    loaded = load_model(ModelSpec(str(random_model_dir), "option"))
    tok, model = loaded.tokenizer, loaded.model
    ids = torch.tensor([tok.encode("def add(a, b):\n    return", add_special_tokens=False)])
    cache = DynamicCache(config=model.config)
    logits = forward_tokens(model, cache, ids)
    steps = list(generate(model, cache, logits, tok, GenerationConfig(max_new_tokens=12), stop_ids=[]))
    ref = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
    assert [s.token_id for s in steps] == ref[0, ids.shape[1]:].tolist()
    assert "".join(s.text for s in steps) == tok.decode([s.token_id for s in steps], skip_special_tokens=True)
    # Every generated token but the last was fed back into the cache.
    assert cache.get_seq_length() == ids.shape[1] + 11


def test_stops_at_stop_token(random_model_dir):
    from transformers import DynamicCache

    loaded = load_model(ModelSpec(str(random_model_dir), "option"))
    ids = torch.tensor([[5, 6, 7]])
    cache = DynamicCache(config=loaded.model.config)
    logits = forward_tokens(loaded.model, cache, ids)
    first = int(torch.argmax(logits))
    assert list(generate(loaded.model, cache, logits, loaded.tokenizer, GenerationConfig(), stop_ids=[first])) == []


def test_sampling_is_seeded_and_respects_top_p():
    logits = torch.tensor([5.0, 4.9, -10.0, -10.0])
    cfg = GenerationConfig(temperature=1.0, top_p=0.5)
    picks = {pick_token(logits, cfg, torch.Generator().manual_seed(s)) for s in range(30)}
    assert picks == {0}
    cfg = GenerationConfig(temperature=1.0, top_p=1.0)
    picks = {pick_token(logits, cfg, torch.Generator().manual_seed(s)) for s in range(60)}
    assert picks == {0, 1}
    assert pick_token(logits, GenerationConfig()) == 0


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5),
                                 dict(stop_repeats=1), dict(stop_repeats=-1)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        GenerationConfig(**bad)


def test_text_stream_holds_back_partial_characters():
    from ssa_code.models import default_tokenizer

    tok = default_tokenizer()
    ids = tok.encode("naïve → ok", add_special_tokens=False)
    stream = TextStream(tok)
    deltas = [stream.push(i) for i in ids]
    assert "".join(deltas) == "naïve → ok"
    assert all("\ufffd" not in d for d in deltas)


def test_repeated_line_needs_that_many_complete_non_blank_lines():
    assert repeated_line("intro\nx = 1\nx = 1\nx = 1\nx = 1\n", 4) == "x = 1"
    assert repeated_line("x = 1\nx = 1\nx = 1\n", 4) is None  # three times only
    assert repeated_line("x = 1\nx = 1\nx = 1\nx = 1", 4) is None  # the fourth is not complete
    assert repeated_line("a\n\n\n\n\n", 4) is None  # blank lines are not a loop
    assert repeated_line("x = 1\nx = 1\nx = 2\nx = 1\nx = 1\n", 4) is None
    assert repeated_line("x\nx\nx\nx\n", 0) is None


def test_generation_stops_when_the_answer_repeats_a_line(monkeypatch):
    from ssa_code.models import default_tokenizer

    tok = default_tokenizer()
    seq = tok.encode("print(x)\n", add_special_tokens=False) * 10

    def logits_for(i: int) -> torch.Tensor:
        out = torch.full((len(tok),), -1e9)
        out[seq[i]] = 0.0
        return out

    class LoopingDecoder:
        """Stands in for the model: answers "print(x)" line after line."""

        def __init__(self, model, cache):
            self.i = 0

        def __call__(self, token):
            self.i += 1
            return logits_for(self.i)

    monkeypatch.setattr("ssa_code.engine.decode.Decoder", LoopingDecoder)
    steps = list(generate(None, None, logits_for(0), tok, GenerationConfig(max_new_tokens=len(seq)), stop_ids=[]))
    assert "".join(s.text for s in steps) == "print(x)\n" * 4
    # stop_repeats=0: only max_new_tokens ends it.
    steps = list(generate(None, None, logits_for(0), tok, GenerationConfig(max_new_tokens=len(seq), stop_repeats=0),
                          stop_ids=[]))
    assert len(steps) == len(seq)
