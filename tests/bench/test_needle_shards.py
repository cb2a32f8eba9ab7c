"""Splitting the needle benchmark over processes (--shard) and joining the reports (--merge)."""

from __future__ import annotations

import json

import pytest

from ssa_code.bench.needle import METHOD_COST, main, pack_haystack, plan_cells, shard_of
from ssa_code.models import TINY_MODEL_DIR, default_tokenizer

from .test_needle_prompt import committed_copy

CHECKPOINT = [TINY_MODEL_DIR / "model.safetensors", TINY_MODEL_DIR / "config.json"]


def test_shards_cover_every_cell_once_and_balance_the_work():
    plan = plan_cells([4096, 2**20, 65536], [0.0, 0.5, 1.0], [1, 4], ["streaming", "ssa"], rounds=2)
    assert len(plan) == len(set(plan)) == 3 * 3 * 2 * 2
    for n in (1, 3, 5, len(plan) + 2):
        owner = shard_of(plan, n)
        assert sorted(set(owner)) == list(range(min(n, len(plan))))
        cost = [c[1] * METHOD_COST[c[4]] for c in plan]
        load = [sum(w for w, o in zip(cost, owner) if o == s) for s in range(n)]
        # Dearest first to the least loaded: no shard exceeds the mean by more than one cell.
        assert max(load) <= sum(load) / n + max(cost)
    assert shard_of(plan, 4) == shard_of(list(plan), 4)  # every process computes the same split


def _small_benchmark(tmp_path, monkeypatch) -> list[str]:
    """Options of a CPU-sized run (sinks + window, one key) on the packed sample repository."""
    monkeypatch.setenv("SSA_CODE_CACHE_DIR", str(tmp_path / "cache"))
    hay = pack_haystack([str(committed_copy(tmp_path / "sample-repo"))], default_tokenizer())
    hay.save(tmp_path / "hay.npz")
    return ["--tokens", str(tmp_path / "hay.npz"), "--keys", "1", "--methods", "streaming", "--budget", "640",
            "--chunk-size", "256", "--block-size", "32", "--sinks", "16", "--device", "cpu"]


@pytest.mark.slow
@pytest.mark.skipif(not all(p.is_file() for p in CHECKPOINT), reason="tiny model checkpoint absent")
def test_sharded_runs_merge_into_the_unsharded_report(tmp_path, monkeypatch, capsys):
    args = [*_small_benchmark(tmp_path, monkeypatch), "--lengths", "512,1k", "--depths", "3"]
    assert main([*args, "--out", str(tmp_path / "all")]) == 0
    # One unrecorded warm-up prompt per method, at the shortest length, before the cells.
    assert "streaming warm-up at 512 tokens" in capsys.readouterr().err
    for i in range(2):
        assert main([*args, "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}")]) == 0
    assert main(["--merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "merged")]) == 0

    def cells(folder):
        data = json.loads((tmp_path / folder / "needle.json").read_text())
        return sorted((c["length"], c["depth"], c["expected"], c["output"]) for c in data["cells"])

    parts = [cells("s0"), cells("s1")]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert cells("merged") == cells("all") and len(cells("all")) == 6
    assert (tmp_path / "merged" / "needle_streaming.png").is_file()
    # A shard given twice is refused, with one line and no traceback.
    capsys.readouterr()
    assert main(["--merge", str(tmp_path / "s0"), str(tmp_path / "s0"), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "also in another shard" in err and len(err.splitlines()) == 1
    assert main([*args, "--shard", "2/2", "--out", str(tmp_path / "x")]) == 2


def _write_run(folder, cells, **meta):
    folder.mkdir(parents=True)
    base = {"model": "m", "device": "cpu", "seed": 0, "budget": 640, "chunk_size": 256, "haystack": {"tokens": 9, "repos": [{"repo": "r", "tokens": 9}]},
            "configs": {"streaming": {"budget": 640}}, "seconds": 1.0}
    (folder / "needle.json").write_text(json.dumps({"meta": {**base, **meta}, "cells": cells}))


def _cell(depth, correct, method="streaming", output="x"):
    return {"method": method, "keys": 1, "length": 512, "depth": depth, "correct": correct,
            "expected": "x", "output": output if correct is not None else "",
            "seconds": 1.0 if correct is not None else None,
            "note": "" if correct is not None else "not run: time budget"}


def test_merge_fills_unrun_cells_and_refuses_a_cell_measured_twice(tmp_path, capsys):
    _write_run(tmp_path / "first", [_cell(0.0, True), _cell(0.5, None), _cell(1.0, None)])
    # A resumed run of the same benchmark measured one of the two unrun cells, with another method.
    _write_run(tmp_path / "fill", [_cell(0.5, False, output="y"), _cell(0.5, True, method="ssa")],
               configs={"ssa": {"budget": 640}})
    assert main(["--merge", str(tmp_path / "first"), str(tmp_path / "fill"), "--out", str(tmp_path / "m")]) == 0
    data = json.loads((tmp_path / "m" / "needle.json").read_text())
    got = {(c["method"], c["depth"]): (c["correct"], c["output"]) for c in data["cells"]}
    assert got == {("streaming", 0.0): (True, "x"), ("streaming", 0.5): (False, "y"),
                   ("streaming", 1.0): (None, ""), ("ssa", 0.5): (True, "x")}
    assert set(data["meta"]["configs"]) == {"streaming", "ssa"}
    capsys.readouterr()
    # Measured in both: refused. Same method with another config: another benchmark.
    _write_run(tmp_path / "again", [_cell(0.0, False)])
    _write_run(tmp_path / "other", [_cell(1.0, True)], configs={"streaming": {"budget": 1024}})
    _write_run(tmp_path / "half", [_cell(1.0, True)], dtype="bfloat16")
    _write_run(tmp_path / "moved", [_cell(1.0, True)], jitter=2000)
    # A report from before --dtype (no dtype: auto's) joins a run that names auto's dtype.
    _write_run(tmp_path / "named", [_cell(1.0, True)], dtype="float32")
    assert main(["--merge", str(tmp_path / "first"), str(tmp_path / "named"), "--out", str(tmp_path / "n")]) == 0
    capsys.readouterr()
    # A report from before a config field existed joins one that names the field's default
    # (summary_tokens=0: no cap), not one that sets it.
    _write_run(tmp_path / "field", [_cell(1.0, True)], configs={"streaming": {"budget": 640, "summary_tokens": 0}})
    assert main(["--merge", str(tmp_path / "first"), str(tmp_path / "field"), "--out", str(tmp_path / "f")]) == 0
    capsys.readouterr()
    _write_run(tmp_path / "capped", [_cell(1.0, True)], configs={"streaming": {"budget": 640, "summary_tokens": 9}})
    for second, words in (("again", "also in another shard"), ("other", "differs in configs"),
                          ("capped", "differs in configs"),
                          ("half", "differs in dtype"), ("moved", "differs in jitter")):
        assert main(["--merge", str(tmp_path / "first"), str(tmp_path / second), "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and words in err and len(err.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not all(p.is_file() for p in CHECKPOINT), reason="tiny model checkpoint absent")
def test_resume_runs_only_the_cells_left_unrun(tmp_path, monkeypatch, capsys):
    args = [*_small_benchmark(tmp_path, monkeypatch), "--depths", "2"]
    assert main([*args, "--lengths", "512", "--out", str(tmp_path / "first")]) == 0
    capsys.readouterr()
    assert main([*args, "--lengths", "512,1k", "--resume", str(tmp_path / "first"), "--out", str(tmp_path / "fill")]) == 0
    assert "--resume: 2 cells already measured" in capsys.readouterr().err
    fill = json.loads((tmp_path / "fill" / "needle.json").read_text())["cells"]
    assert sorted((c["length"], c["depth"]) for c in fill) == [(1024, 0.0), (1024, 1.0)]
    assert main(["--merge", str(tmp_path / "first"), str(tmp_path / "fill"), "--out", str(tmp_path / "m")]) == 0
    assert len(json.loads((tmp_path / "m" / "needle.json").read_text())["cells"]) == 4
    # Another seed is another benchmark: refused in one line.
    capsys.readouterr()
    assert main([*args, "--lengths", "1k", "--seed", "3", "--resume", str(tmp_path / "first"),
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "differs in seed" in err and len(err.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not all(p.is_file() for p in CHECKPOINT), reason="tiny model checkpoint absent")
def test_retry_runs_only_the_cells_answered_wrong(tmp_path, monkeypatch, capsys):
    args = [*_small_benchmark(tmp_path, monkeypatch), "--depths", "3", "--lengths", "512"]
    assert main([*args, "--out", str(tmp_path / "first")]) == 0
    path = tmp_path / "first" / "needle.json"
    data = json.loads(path.read_text())
    assert len(data["cells"]) == 3
    # Whatever the model answered, mark the middle depth wrong and the others right; and let
    # the earlier run have had another config (what a retry with --ssa-set compares against).
    for c in data["cells"]:
        c["correct"] = c["depth"] != 0.5
    data["meta"]["configs"]["streaming"]["window"] += 64
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert main([*args, "--retry", str(tmp_path / "first"), "--out", str(tmp_path / "again")]) == 0
    assert "--retry: 1 cells answered wrong" in capsys.readouterr().err
    again = json.loads((tmp_path / "again" / "needle.json").read_text())
    assert [(c["length"], c["depth"]) for c in again["cells"]] == [(512, 0.5)]
    assert again["meta"]["retry"] == str(tmp_path / "first")
    # Another seed is another benchmark: refused in one line.
    assert main([*args, "--seed", "3", "--retry", str(tmp_path / "first"), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--retry" in err and "differs in seed" in err and len(err.splitlines()) == 1
    # The same haystack packed on another machine (another git tree id, the same tokens): the
    # retry checks that the missed cell's prompt is the same and runs it.
    for r in data["meta"]["haystack"]["repos"]:
        r["tree_id"] = "0" * 40
    path.write_text(json.dumps(data))
    assert main([*args, "--retry", str(tmp_path / "first"), "--out", str(tmp_path / "repacked")]) == 0
    assert [c["depth"] for c in json.loads((tmp_path / "repacked" / "needle.json").read_text())["cells"]] == [0.5]
    # ... and refuses it when the prompt differs (here: the report's recorded length).
    for c in data["cells"]:
        c["prompt_tokens"] += 1
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert main([*args, "--retry", str(tmp_path / "first"), "--out", str(tmp_path / "bad2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "another prompt" in err and len(err.splitlines()) == 1


def test_model_dtype_names():
    import torch

    from ssa_code.bench.needle import model_dtype

    assert model_dtype("auto", "cpu") == torch.float32
    assert model_dtype("auto", "cuda") == torch.bfloat16
    assert model_dtype("float32", "cuda") == torch.float32
    assert model_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        model_dtype("int8", "cpu")


def test_report_names_the_jitter_of_a_jittered_run(tmp_path):
    """A jittered run's report says so (its depths are where the needles were aimed, not where
    each one sits); one without --jitter says nothing about it."""
    _write_run(tmp_path / "moved", [_cell(1.0, True)], jitter=2000)
    _write_run(tmp_path / "fixed", [_cell(1.0, True)])
    for name in ("moved", "fixed"):
        assert main(["--merge", str(tmp_path / name), "--out", str(tmp_path / f"m_{name}")]) == 0
    assert "within 2000 tokens of its depth" in (tmp_path / "m_moved" / "needle.md").read_text()
    assert "jitter" not in (tmp_path / "m_fixed" / "needle.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not all(p.is_file() for p in CHECKPOINT), reason="tiny model checkpoint absent")
def test_retry_driver_reruns_the_misses_of_several_reports(tmp_path, monkeypatch, capsys):
    """benchmarks/needle_retry.py: each report's missed cells rerun with its own settings (here
    its seed), one process per cell, joined per report."""
    import subprocess
    import sys
    from pathlib import Path

    args = [*_small_benchmark(tmp_path, monkeypatch), "--depths", "3", "--lengths", "512"]
    for seed, wrong in ((0, 0.5), (4, 1.0)):
        out = tmp_path / f"seed{seed}"
        assert main([*args, "--seed", str(seed), "--out", str(out)]) == 0
        data = json.loads((out / "needle.json").read_text())
        for c in data["cells"]:
            c["correct"] = c["depth"] != wrong
        (out / "needle.json").write_text(json.dumps(data))
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "needle_retry.py"
    run = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "again"), "--label", "x",
                          "--method", "streaming", "--procs", "2", "--tokens", args[1],
                          str(tmp_path / "seed0"), str(tmp_path / "seed4")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "2 missed cells of 2 reports" in run.stdout
    for seed, wrong in ((0, 0.5), (4, 1.0)):
        got = json.loads((tmp_path / "again" / "x" / f"seed{seed}" / "merged" / "needle.json").read_text())
        assert got["meta"]["seed"] == seed
        assert [(c["depth"], c["correct"] is not None) for c in got["cells"]] == [(wrong, True)]


@pytest.mark.skipif(not all(p.is_file() for p in CHECKPOINT), reason="tiny model checkpoint absent")
def test_progress_is_saved_after_each_group_and_after_any_long_cell(tmp_path, monkeypatch):
    from ssa_code.bench.needle import method_configs, run_benchmark

    monkeypatch.setenv("SSA_CODE_CACHE_DIR", str(tmp_path / "cache"))
    tok = default_tokenizer()
    hay = pack_haystack([str(committed_copy(tmp_path / "sample-repo"))], tok)
    configs = method_configs(640, chunk_size=256, block_size=32, sinks=16, max_position=4096)

    def saves(save_every: float) -> list[int]:
        seen: list[int] = []
        run_benchmark(hay, tok, TINY_MODEL_DIR, lengths=[512, 1024], depths=[0.2, 0.5, 0.8], keys=[1],
                      methods=["streaming"], configs=configs, dense_max=0, max_seconds=1e9, seed=0,
                      device="cpu", warmup=False, log=lambda s: None,
                      on_progress=lambda cells: seen.append(len(cells)), save_every=save_every)
        return seen

    # Cells shorter than save_every: one save per length, after its last depth.
    assert saves(1e9) == [3, 6]
    # Every cell counts as long: each one is saved as soon as it ends.
    assert saves(0.0) == [1, 2, 3, 4, 5, 6]
