"""Needle prompts: exact tokenization, needle inside a file body, anchors still on their text."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ssa_code.bench.needle import (
    Haystack, build_prompt, main, make_needles, method_configs, pack_haystack,
    parse_lengths,
)
from ssa_code.bench.synthetic import LineBoundaries, encode
from ssa_code.models import default_tokenizer

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample-repo"


def committed_copy(dest: Path) -> Path:
    """examples/sample-repo copied to ``dest`` as a one-commit git repository."""
    shutil.copytree(SAMPLE, dest)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(dest), "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin"}
    for args in (["init", "-q"], ["add", "-A"], ["-c", "commit.gpgsign=false", "commit", "-q", "-m", "s"]):
        subprocess.run(["git", *args], cwd=dest, env=env, check=True, capture_output=True)
    return dest


@pytest.fixture(scope="module")
def hay(tmp_path_factory) -> Haystack:
    tmp = tmp_path_factory.mktemp("needle")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSA_CODE_CACHE_DIR", str(tmp / "cache"))
        return pack_haystack([str(committed_copy(tmp / "sample-repo"))], default_tokenizer())


@pytest.mark.parametrize("length,depth,keys", [(1024, 0.0, 1), (1500, 0.5, 1), (6000, 0.9, 4), (3000, 1.0, 3)])
def test_prompt_is_exact_and_anchors_hold(hay, tmp_path, length, depth, keys):
    tok = default_tokenizer()
    lines = LineBoundaries(tok)
    rng = random.Random(length)
    needles, asked = make_needles(rng, keys)
    p = build_prompt(hay, lines, tok, length, depth, needles, asked, rng)
    assert p.ids.size <= length
    text = tok.decode(p.ids.tolist())
    assert encode(tok, text) == p.ids.tolist()
    assert text.endswith("\n" + needles[asked].cue)
    # The asked needle sits where reported, on a line of its own.
    line = encode(tok, needles[asked].line)
    assert p.ids[p.needle_pos:p.needle_pos + len(line)].tolist() == line
    assert tok.decode(p.ids[:p.needle_pos].tolist()).endswith("\n")
    for n in needles:
        assert text.count(n.line) == 1
    # Anchors (map and file headers) still cover their text after the insertions.
    assert p.anchors
    for s, e in p.anchors:
        piece = tok.decode(p.ids[s:e].tolist())
        assert piece.startswith("=== ") and piece.endswith("\n") and piece.count("\n") >= 1
    # Save/load round trip.
    f = tmp_path / "h.npz"
    hay.save(f)
    back = Haystack.load(f)
    assert np.array_equal(back.token_ids, hay.token_ids) and back.meta["tokenizer"] == hay.meta["tokenizer"]


def test_depth_orders_needles(hay):
    tok = default_tokenizer()
    lines = LineBoundaries(tok)
    pos = []
    for d in (0.1, 0.5, 0.9):
        rng = random.Random(0)
        needles, asked = make_needles(rng, 1)
        pos.append(build_prompt(hay, lines, tok, 2400, d, needles, asked, rng).needle_pos)
    assert pos[0] < pos[1] < pos[2]


def test_jitter_moves_the_needle_by_seed_within_its_reach(hay):
    tok = default_tokenizer()
    lines = LineBoundaries(tok)

    def place(seed: int, jitter: int) -> int:
        rng = random.Random(seed)
        needles, asked = make_needles(rng, 1)
        return build_prompt(hay, lines, tok, 6000, 0.5, needles, asked, rng, jitter).needle_pos

    fixed = place(0, 0)
    assert all(place(seed, 0) == fixed for seed in range(1, 6))  # no jitter: one line per depth
    moved = {place(seed, 800) for seed in range(12)}
    assert len(moved) > 3 and all(abs(m - fixed) <= 800 + 64 for m in moved)
    with pytest.raises(ValueError, match="jitter"):
        place(0, -1)


def test_method_configs_share_the_budget():
    cfgs = method_configs(4096, chunk_size=1024, block_size=64, sinks=64, max_position=4096)
    assert set(cfgs) == {"streaming", "h2o", "infllm", "ssa"}
    for name, c in cfgs.items():
        assert c.capacity <= 4096 + 64, (name, c.capacity)
        assert c.window + c.chunk_size <= 4096
    assert cfgs["streaming"].top_k == 0 and cfgs["streaming"].heavy == 0
    assert cfgs["h2o"].heavy > 0 and cfgs["h2o"].top_k == 0
    assert cfgs["infllm"].top_k > 0 and cfgs["infllm"].heavy == 0 and cfgs["infllm"].summaries == 0
    assert all(getattr(cfgs["ssa"], t) > 0 for t in ("pinned", "heavy", "summaries", "top_k"))
    # SSA stages at most a quarter of the budget as retrieved blocks; retrieval only, half.
    assert cfgs["ssa"].top_k * 64 == 4096 // 4 and cfgs["infllm"].top_k * 64 == 4096 // 2
    with pytest.raises(ValueError):
        method_configs(100, block_size=64, sinks=64)


def test_option_errors_are_one_line(hay, tmp_path, capsys):
    hay.save(tmp_path / "hay.npz")
    base = ["--tokens", str(tmp_path / "hay.npz"), "--out", str(tmp_path / "o")]
    # --ssa-set: an unknown field, a value SSAConfig refuses, one that breaks the shared budget;
    # a negative --jitter.
    for bad in (["--ssa-set", "nope=1"], ["--ssa-set", "summaries=-1"], ["--ssa-set", "summaries=100000"],
                ["--jitter", "-5"]):
        capsys.readouterr()
        assert main([*base, *bad, "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_parse_lengths():
    assert parse_lengths("4k, 16K,1m,5000") == [4096, 16384, 2**20, 5000]
    with pytest.raises(ValueError):
        parse_lengths("12")
    with pytest.raises(ValueError):
        parse_lengths("abc")
