"""Pooling needle reports of several seeds (accuracy intervals, methods compared cell by cell)."""

from __future__ import annotations

import json

import pytest

from ssa_code.bench.needle import main as needle_main
from ssa_code.bench.needle_pool import clopper_pearson, main, pool, sign_test

from .test_needle_shards import CHECKPOINT, _small_benchmark


def _run(folder, seed, cells, jitter=0, **meta):
    folder.mkdir(parents=True)
    base = {"model": "m", "device": "cpu", "seed": seed, "jitter": jitter, "budget": 640,
            "chunk_size": 256, "haystack": {"tokens": 9, "repos": [{"repo": "r", "tokens": 9}]},
            "configs": {"ssa": {"top_k": 16}, "infllm": {"top_k": 32}}, "seconds": 1.0}
    rows = [{"method": m, "keys": 1, "length": length, "depth": d, "correct": ok, "expected": "x",
             "output": "x" if ok else "y"} for m, length, d, ok in cells]
    (folder / "needle.json").write_text(json.dumps({"meta": {**base, **meta}, "cells": rows}))
    return folder


def test_clopper_pearson_matches_known_intervals():
    lo, hi = clopper_pearson(87, 90)
    assert (round(lo, 4), round(hi, 4)) == (0.9057, 0.9931)
    lo, hi = clopper_pearson(0, 10)  # closed forms at x = 0 and x = n: 1 - a^(1/n), a^(1/n)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** 0.1, abs=1e-9)
    lo, hi = clopper_pearson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** 0.1, abs=1e-9)
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)


def test_sign_test_is_exact_and_two_sided():
    assert sign_test(12, 1) == pytest.approx(2 * 14 / 2**13)
    assert sign_test(1, 12) == sign_test(12, 1)
    assert sign_test(0, 0) == 1.0 and sign_test(3, 3) == 1.0


def test_pool_joins_seeds_and_compares_methods_on_shared_cells(tmp_path):
    M = 2**20
    a = _run(tmp_path / "s0", 0, [("ssa", M, 0.0, True), ("ssa", M, 0.5, True), ("infllm", M, 0.0, False),
                                  ("infllm", M, 0.5, True), ("ssa", 4096, 0.0, False),
                                  ("ssa", M, 1.0, None)])
    b = _run(tmp_path / "s1", 1, [("ssa", M, 0.0, False), ("infllm", M, 0.0, True), ("ssa", M, 0.5, True)],
             jitter=64)
    got = pool([a, b], lengths=[M])
    acc = {(r["method"], r["length"]): (r["right"], r["run"], r["seeds"]) for r in got["accuracy"]}
    # Unrun cells and other lengths are left out; seeds with other jitter pool.
    assert acc == {("ssa", M): (3, 4, [0, 1]), ("infllm", M): (2, 3, [0, 1])}
    (pair,) = got["pairs"]
    assert (pair["a"], pair["b"], pair["shared"], pair["a_only"], pair["b_only"]) == ("infllm", "ssa", 3, 1, 1)
    assert len(pool([a, b])["accuracy"]) == 3  # every length when none is asked


def test_pool_refuses_another_benchmark_or_a_cell_twice(tmp_path, capsys):
    a = _run(tmp_path / "a", 0, [("ssa", 4096, 0.0, True)])
    other = _run(tmp_path / "other", 1, [("ssa", 4096, 0.0, True)], budget=1024)
    again = _run(tmp_path / "again", 0, [("ssa", 4096, 0.0, False)])
    with pytest.raises(ValueError, match="differs in budget"):
        pool([a, other])
    with pytest.raises(ValueError, match="also in"):
        pool([a, again])
    with pytest.raises(ValueError, match="no measured cell at the lengths asked"):
        pool([a], lengths=[2**20])
    for argv in ([str(a), str(again)], [str(tmp_path / "missing")], [str(a), "--lengths", "zz"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1
    assert main([str(a)]) == 0
    assert "| ssa | 4K | 1 / 1 | 100.0% |" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not all(p.is_file() for p in CHECKPOINT), reason="tiny model checkpoint absent")
def test_pool_with_haystack_joins_a_repacked_tree_after_rebuilding_every_prompt(tmp_path, monkeypatch):
    args = [*_small_benchmark(tmp_path, monkeypatch), "--lengths", "512", "--depths", "2", "--no-warmup"]
    for seed in (0, 1):
        assert needle_main([*args, "--seed", str(seed), "--out", str(tmp_path / f"s{seed}")]) == 0
    # Seed 1 as if packed again elsewhere: same tokens, another git tree (e.g. other __pycache__).
    report = tmp_path / "s1" / "needle.json"
    data = json.loads(report.read_text())
    data["meta"]["haystack"]["repos"][0]["tree_id"] = "0" * 40
    report.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="differs in haystack"):
        pool([tmp_path / "s0", tmp_path / "s1"])
    got = pool([tmp_path / "s0", tmp_path / "s1"], haystack=tmp_path / "hay.npz")
    assert got["prompts_checked"] == 4 and sum(r["run"] for r in got["accuracy"]) == 4
    # A cell whose prompt the haystack does not rebuild: refused.
    data["cells"][0]["prompt_tokens"] += 1
    report.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="another prompt"):
        pool([tmp_path / "s0", tmp_path / "s1"], haystack=tmp_path / "hay.npz")
