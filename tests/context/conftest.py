"""Fixtures for the repository-context tests: throwaway git repositories and tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest

from repo_helpers import SAMPLE_REPO, copy_sample


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Every test gets its own cache directory, never the user's."""
    monkeypatch.setenv("SSA_CODE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """A GPT-2-style byte-level BPE trained offline on a little code (HF fast tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [p.read_text("utf-8", "replace") for p in sorted(SAMPLE_REPO.rglob("*")) if p.is_file()]
    corpus += ["def main():\n    return 0\n\n\n", "=== path (python, 3 lines) ===\n"] * 5
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


@pytest.fixture(scope="session")
def metaspace_tokenizer():
    """A SentencePiece-like tokenizer (prefix space), whose blocks do not split cleanly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    corpus = [p.read_text("utf-8", "replace") for p in sorted(SAMPLE_REPO.rglob("*")) if p.is_file()]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"],
                                                        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


@pytest.fixture(scope="session")
def default_tok():
    from ssa_code.models import default_tokenizer

    return default_tokenizer()


@pytest.fixture
def sample_repo(tmp_path) -> Path:
    return copy_sample(tmp_path)
