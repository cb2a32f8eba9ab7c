"""Prompt templates are package data, rendered through the chat template and split at the repository."""

from __future__ import annotations

import pytest

from ssa_code.engine.session import KINDS, build_prompt, load_template
from ssa_code.models import default_tokenizer


@pytest.mark.parametrize("kind", KINDS)
def test_templates_load_and_split(kind):
    text = load_template(kind)
    assert text.count("{repository}") == 1 and "{question}" in text
    tok = default_tokenizer()
    a = build_prompt(tok, kind, "What does main do?")
    b = build_prompt(tok, kind, "Something else entirely, longer than before?")
    # The part before the repository does not depend on the question (so state can be reused).
    assert a.prefix_ids == b.prefix_ids
    assert a.suffix_ids != b.suffix_ids
    prefix = tok.decode(a.prefix_ids)
    suffix = tok.decode(a.suffix_ids)
    assert prefix.startswith(tok.bos_token) and "<|user|>" in prefix
    assert "What does main do?" in suffix and suffix.endswith("<|assistant|>\n")


def test_plain_tokenizer_without_chat_template():
    tok = default_tokenizer()
    saved = tok.chat_template
    try:
        tok.chat_template = None
        p = build_prompt(tok, "ask", "Why?")
    finally:
        tok.chat_template = saved
    assert tok.decode(p.suffix_ids).endswith("Question: Why?\n\nAnswer:\n")


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown prompt kind"):
        load_template("poem")
