"""``ssa-code bench needle`` and ``ssa-code bench pool``: the options reach the benchmark's own
parser, and bad input ends in one line and exit code 2."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ssa_code.cli.app import app


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_error(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    err = result.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    return err


def test_bench_needle_passes_help_and_refuses_a_missing_or_bad_haystack(tmp_path):
    result = invoke("bench", "needle", "--help")
    assert result.exit_code == 0 and "--tokens" in result.stdout and "--jitter" in result.stdout
    assert result.stdout.startswith("usage: ssa-code bench needle")
    assert "x.npz: not a packed haystack" in one_line_error(
        invoke("bench", "needle", "--tokens", str(tmp_path / "x.npz"), "--out", str(tmp_path / "o")))
    (tmp_path / "junk.npz").write_text("not numpy\n")
    assert "junk.npz: not a packed haystack" in one_line_error(
        invoke("bench", "needle", "--tokens", str(tmp_path / "junk.npz"), "--out", str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_bench_pool_prints_the_pooled_table(tmp_path):
    for seed, ok in ((0, True), (1, False)):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        meta = {"model": "m", "device": "cpu", "seed": seed, "budget": 640, "chunk_size": 256,
                "haystack": {"tokens": 9}, "configs": {"ssa": {"top_k": 16}}}
        cell = {"method": "ssa", "keys": 1, "length": 2**20, "depth": 0.5, "correct": ok}
        (run / "needle.json").write_text(json.dumps({"meta": meta, "cells": [cell]}))
    result = invoke("bench", "pool", str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--lengths", "1m")
    assert result.exit_code == 0, result.stderr
    assert "| ssa | 1M | 1 / 2 | 50.0% |" in result.stdout
    assert "not a needle.json" in one_line_error(invoke("bench", "pool", str(tmp_path / "none")))
