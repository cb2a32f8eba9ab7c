"""benchmarks/e2e_ask.py, its whole path on CPU: model folder, git repository, ``ssa-code ask`` child.

A one-layer, 64-wide model of the Qwen2 family (full 152064-entry vocabulary, so answer ids
beyond the tokenizer's are exercised) on a generated source tree of a few hundred lines; the
numbers mean nothing, the point is that the script the GPU machine runs works the first time.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "e2e_ask.py"


def load_script():
    spec = importlib.util.spec_from_file_location("e2e_ask", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["e2e_ask"] = module
    spec.loader.exec_module(module)
    return module


def write_source(root: Path, files: int = 6, functions: int = 6) -> Path:
    """A package of ``files`` modules, each calling the previous one: ~10 lines per function."""
    pkg = root / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "skipped.pyc").write_bytes(b"\x00\x01")
    (pkg / "notes.txt").write_text("not python\n")
    for i in range(files):
        where = pkg / ("sub" if i % 2 else ".") / f"mod{i}.py"
        lines = [f'"""Module {i}."""', "", "import math", ""]
        for j in range(functions):
            lines += [f"def f{i}_{j}(x):", f'    """Step {j} of module {i}."""', f"    y = x * {j + 1}",
                      f"    if y > {10 * j}:", "        y = math.sqrt(y)", f"    return y + {i}", "", ""]
        where.write_text("\n".join(lines))
    return pkg


@pytest.fixture(scope="module")
def e2e():
    return load_script()


def test_copy_source_order_cap_and_lines(tmp_path, e2e):
    src = write_source(tmp_path / "src")
    everything = e2e.copy_source(src, tmp_path / "all", max_lines=10**9)
    assert everything["files"] == 6 and not everything["capped"]
    assert not (tmp_path / "all" / "notes.txt").exists() and not (tmp_path / "all" / "__pycache__").exists()
    on_disk = sum(e2e.count_lines(p.read_bytes()) for p in (tmp_path / "all").rglob("*.py"))
    assert everything["lines"] == on_disk
    capped = e2e.copy_source(src, tmp_path / "some", max_lines=60)
    # A folder's own files come before its subfolders', sorted by name; stops at the cap.
    assert capped["capped"] and capped["lines"] >= 60 and capped["files"] < 6
    assert sorted(p.relative_to(tmp_path / "some").as_posix() for p in (tmp_path / "some").rglob("*.py")) == \
        ["mod0.py", "mod2.py"]


def test_model_config_is_qwen25_7b(e2e):
    from ssa_code.bench.long_context import qwen25_7b_config

    ours, bench = e2e.model_config(), qwen25_7b_config()
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(ours, key) == getattr(bench, key), key
    assert ours.rope_parameters["rope_theta"] == 1e6


def in_process(monkeypatch, e2e):
    """Swap the ask child process for the same command line run in this process.

    A child would spend about 7 s importing torch and transformers on the 2-core CI machine;
    everything else (the command line, the CLI parsing it, the JSON it prints) is the same.
    """
    from typer.testing import CliRunner

    from ssa_code.cli.app import app

    calls = []

    def run(cmd, env, stderr, timeout):
        assert cmd[:3] == [sys.executable, "-c", e2e.ENTRY] and cmd[3] == "ask"
        for key in ("SSA_CODE_CACHE_DIR", "CUDA_VISIBLE_DEVICES"):
            if key in env:
                monkeypatch.setenv(key, env[key])
        result = CliRunner().invoke(app, cmd[3:])
        stderr.write(result.stderr)
        calls.append(cmd)
        return result.exit_code, result.stdout

    monkeypatch.setattr(e2e, "run_child", run)
    return calls


def test_script_end_to_end_on_cpu(tmp_path, e2e, capsys, monkeypatch):
    calls = in_process(monkeypatch, e2e)
    src = write_source(tmp_path / "src", files=3, functions=2)
    out, model_dir = tmp_path / "out", tmp_path / "model"
    args = ["--out", str(out), "--source", str(src), "--min-lines", "40", "--max-lines", "40",
            "--layers", "1", "--hidden", "64", "--device", "cpu", "--ssa", "small", "--max-tokens", "3",
            "--model-dir", str(model_dir)]
    assert e2e.main(args) == 0
    assert len(calls) == 1 and calls[0][calls[0].index("--max-tokens") + 1] == "3" and "--no-state" in calls[0]
    result = json.loads((out / "e2e_ask.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["ask_stderr.log", "e2e_ask.json"]
    assert result["model"]["reused"] is False and result["model"]["shards"] == 1
    assert json.loads((model_dir / "config.json").read_text())["vocab_size"] == 152064
    assert result["source"]["lines"] >= 40 and len(result["source"]["tree_id"]) == 40
    ask = result["run"]["ask"]
    assert ask["tokens"]["repository"] > 0 and 1 <= ask["tokens"]["answer"] <= 3
    assert ask["device"] == "cpu" and ask["memory"]["peak_gpu_bytes"] is None
    s = result["summary"]
    assert s["process_s"] > s["prefill_s"] > 0 and s["peak_rss_GiB"] > 0 and s["peak_gpu_GiB"] is None
    assert s["lines"] == result["source"]["lines"]
    printed = capsys.readouterr().out
    assert "| lines | files | context_tokens |" in printed and f"| {s['lines']:,} |" in printed

    # Too few lines is an error; the model folder written above is reused, not rewritten.
    assert e2e.main([*args[:6], "--min-lines", "10000", *args[8:]]) == 2
    result = json.loads((out / "e2e_ask.json").read_text())
    assert result["model"]["reused"] is True and "run" not in result

    # An ask that outlives --time-limit is killed before it, and the JSON still says so.
    def too_slow(cmd, env, stderr, timeout):
        assert 0 < timeout <= 100 - 15
        raise subprocess.TimeoutExpired(cmd, timeout)

    monkeypatch.setattr(e2e, "run_child", too_slow)
    assert e2e.main([*args, "--time-limit", "100"]) == 1
    assert json.loads((out / "e2e_ask.json").read_text())["run"]["timed_out"] is True
