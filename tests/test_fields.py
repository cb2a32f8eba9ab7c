"""ssa_code.fields: FIELD=VALUE options typed like the field they change."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ssa_code.bench.needle import method_configs
from ssa_code.fields import parse_fields

REPO = Path(__file__).resolve().parents[1]


def test_each_value_is_typed_like_its_field():
    ssa = method_configs(4096, chunk_size=1024)["ssa"]
    got = parse_fields(ssa, ["summaries=0", "exact_question=false", "far_distance=3000",
                             "threshold=0.5", "store=disk"], "--ssa-set")
    assert got == {"summaries": 0, "exact_question": False, "far_distance": 3000, "threshold": 0.5,
                   "store": "disk"}
    assert type(got["threshold"]) is float and type(got["summaries"]) is int
    assert parse_fields(ssa.replace(far_distance=10), ["far_distance=none"]) == {"far_distance": None}
    for bad in (["nope=1"], ["summaries"], ["summaries=many"], ["exact_question=maybe"]):
        with pytest.raises(ValueError, match="^--ssa-set "):
            parse_fields(ssa, bad, "--ssa-set")


@dataclass
class _Train:
    compile: bool = False
    eval_contexts: tuple[int, ...] = (2048, 4096)
    lr: float = 1e-3
    extra: dict | None = None


def test_tuples_booleans_and_excluded_fields():
    cfg = _Train()
    assert parse_fields(cfg, ["eval_contexts=512, 1024", "compile=yes", "lr=3e-4"]) == {
        "eval_contexts": (512, 1024), "compile": True, "lr": 3e-4}
    assert parse_fields(cfg, ["compile=0"]) == {"compile": False}
    with pytest.raises(ValueError, match=r"--set eval_contexts: '512,x' is not a valid tuple"):
        parse_fields(cfg, ["eval_contexts=512,x"])
    with pytest.raises(ValueError, match="field of _Train, got 'extra=1'"):
        parse_fields(cfg, ["extra=1"], exclude=("extra",))


@pytest.mark.parametrize("item, words", [("lr=abc", "--set lr: 'abc' is not a valid float"),
                                         ("seq_len=999999", "exceeds max_position"),
                                         ("extra=1", "field of TrainConfig")])
def test_train_tiny_set_errors_are_one_line(item, words, tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "train_tiny.py"), "--cpu-smoke", "--set", item,
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error: ") and words in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
