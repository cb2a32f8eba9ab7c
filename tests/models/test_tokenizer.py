"""The bundled tokenizer: loads offline, round-trips code, splits digits, renders chat."""

from __future__ import annotations

import pytest

from ssa_code.models import TINY_MODEL_DIR, default_tokenizer


def test_loads_offline_with_specials():
    tok = default_tokenizer()
    assert len(tok) == 8192
    assert (TINY_MODEL_DIR / "tokenizer.json").is_file()
    for name in ("<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"):
        assert tok.convert_tokens_to_ids(name) < 16
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|eos|>" and tok.bos_token == "<|bos|>"


@pytest.mark.parametrize("text", [
    "def f(x):\n    return x + 12345\n",
    "#include <stdio.h>\nint main(void) { return 0; }\n",
    "SECRET_TOKEN = \"k3f9a2\"\n\tAPI_KEY_7 = 0x3fa9  # ünïcödé ✓\r\n",
    "",
])
def test_round_trip_and_no_specials_added(text):
    tok = default_tokenizer()
    ids = tok(text, add_special_tokens=True)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids


def test_digits_are_single_tokens():
    tok = default_tokenizer()
    ids = tok("x = 9081726354")["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    assert pieces[-10:] == list("9081726354")


def test_chat_template():
    tok = default_tokenizer()
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<|bos|><|system|>\nS<|eos|>\n<|user|>\nQ<|eos|>\n<|assistant|>\n"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.convert_tokens_to_ids("<|assistant|>") in ids
