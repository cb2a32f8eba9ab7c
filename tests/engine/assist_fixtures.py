"""Shared fixtures for the assistant's tests (engine and CLI): tiny models, sample repositories.

Models are built from config classes with random weights (speed does not depend on weight
values) and saved to a temporary folder, which also exercises the local-path route of
``--model``. ``chain_model_dir`` builds a model whose greedy output is a chosen text, so the
review pipeline's parsing, severities and exit codes can be checked end to end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_REPO = ROOT / "examples" / "sample-repo"

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=check, capture_output=True, text=True)


def init_repo(path: Path) -> Path:
    """``git init`` + commit everything in ``path``."""
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.com")
    git(path, "config", "commit.gpgsign", "false")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def copy_sample_repo(dest: Path) -> Path:
    if not SAMPLE_REPO.is_dir():
        pytest.fail(f"{SAMPLE_REPO} is missing (the packer's sample repository)")
    shutil.copytree(SAMPLE_REPO, dest, ignore=shutil.ignore_patterns(".git"))
    return init_repo(dest)


def save_random_llama(directory: Path, *, seed: int = 0, layers: int = 2, hidden: int = 64) -> Path:
    """A random Llama with the default tokenizer's vocabulary, saved with that tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ssa_code.models import default_tokenizer

    tok = default_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def save_chain_llama(directory: Path, start_token: int, text: str, *, hidden: int = 128) -> Path:
    """A Llama whose greedy continuation after ``start_token`` is ``text`` then end-of-sequence.

    Attention and MLP outputs are zeroed, so the last hidden state is the current token's
    embedding; ``lm_head`` maps each token of the chain to its successor. Every token of the
    chain must have one successor, which the caller's text must allow (checked here).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ssa_code.models import default_tokenizer

    tok = default_tokenizer()
    ids = tok.encode(text, add_special_tokens=False)
    chain = [start_token, *ids, tok.eos_token_id]
    succ: dict[int, int] = {}
    for a, b in zip(chain, chain[1:]):
        assert succ.setdefault(a, b) == b, f"token {tok.decode([a])!r} needs two successors in {text!r}"
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        emb = torch.randn(len(tok), hidden)
        model.model.embed_tokens.weight.copy_(emb)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros(len(tok), hidden)
        for a, b in succ.items():
            head[b] += 30.0 * emb[a] / emb[a].norm()
        model.lm_head.weight.copy_(head)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """No user config, model, cache or width leaks into a test."""
    base = tmp_path_factory.mktemp("env")
    monkeypatch.setenv("SSA_CODE_CACHE_DIR", str(base / "cache"))
    monkeypatch.setenv("SSA_CODE_CONFIG_DIR", str(base / "config"))
    monkeypatch.setenv("SSA_CODE_WIDTH", "100")
    monkeypatch.delenv("SSA_CODE_MODEL", raising=False)
    for k, v in GIT_ENV.items():
        monkeypatch.setenv(k, v)
    return base


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory) -> Path:
    return save_random_llama(tmp_path_factory.mktemp("random-llama"))


@pytest.fixture
def sample_repo(tmp_path) -> Path:
    return copy_sample_repo(tmp_path / "sample-repo")


def states(cache_dir: Path) -> list[Path]:
    root = cache_dir / "states"
    return sorted(root.iterdir()) if root.is_dir() else []
