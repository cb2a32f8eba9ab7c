"""``ssa-code pack`` and ``ssa-code map`` through Typer's CliRunner: exit codes, stdout, stderr."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssa_code.cli.app import app, main

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample-repo"
GOLDEN = ROOT / "tests" / "context" / "golden" / "sample-repo.txt"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1"}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=repo, env={**os.environ, **GIT_ENV},
                   check=True, capture_output=True)


@pytest.fixture
def sample(tmp_path) -> Path:
    dest = tmp_path / "sample-repo"
    shutil.copytree(SAMPLE, dest)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "sample")
    return dest


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("SSA_CODE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SSA_CODE_WIDTH", "100")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_pack_writes_the_context_to_stdout_and_a_summary_to_stderr(run, sample):
    result = run("pack", sample)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == GOLDEN.read_bytes().decode("utf-8")
    assert "language" in result.stderr and "python" in result.stderr
    assert "web/logo.png: binary (NUL bytes)" in result.stderr
    assert "package-lock.json: lock file" in result.stderr
    assert "Traceback" not in result.stderr


def test_pack_json_format_and_default_tokenizer_ids(run, sample):
    from ssa_code.models import default_tokenizer

    result = run("pack", sample, "--format", "json", "--question", "How is the stock total computed?")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["token_ids"] == default_tokenizer()(data["text"], add_special_tokens=False)["input_ids"]
    assert data["files"][-1]["path"] == "inventory/core.py"
    assert data["anchors"][0] == data["map_span"]
    assert data["anchors"][1:] == [[f["header_start"], f["header_end"]] for f in data["files"]]


def test_pack_output_file_and_json_summary(run, sample, tmp_path):
    out = tmp_path / "ctx.txt"
    result = run("pack", sample, "--output", out, "--json", "--budget", "2000")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    assert summary["tokens"] <= 2000 and summary["omitted"]
    assert out.read_text("utf-8").startswith("=== Repository map: sample-repo ===\n")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ctx.txt")] == []  # no temp file left


def test_pack_is_byte_identical_across_runs(run, sample):
    first = run("pack", sample, "-q", "what does render_report print?")
    second = run("pack", sample, "-q", "what does render_report print?")
    assert first.exit_code == second.exit_code == 0
    assert first.stdout == second.stdout


def test_map_prints_the_outline(run, sample):
    result = run("map", sample)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "inventory/core.py (python)" in lines
    i = lines.index("inventory/core.py (python)")
    assert "    28: def stock_total" in lines[i:i + 12]  # a method, nested under its class
    data = json.loads(run("map", sample, "--json").stdout)
    core = next(f for f in data["files"] if f["path"] == "inventory/core.py")
    assert {"name": "stock_total", "kind": "function", "line": 28, "end_line": 30} in core["definitions"]


@pytest.mark.parametrize("case", ["missing", "not_git", "bare", "no_commits"])
def test_bad_repositories_exit_2_with_one_line(run, tmp_path, case):
    path = tmp_path / case
    if case != "missing":
        path.mkdir()
    if case == "bare":
        _git(path, "init", "-q", "--bare")
    if case == "no_commits":
        _git(path, "init", "-q")
        (path / "a.py").write_text("x\n")
    for command in ("pack", "map"):
        result = run(command, path)
        assert result.exit_code == 2
        assert result.stdout == ""
        assert result.stderr.startswith("ssa-code: ") and result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--budget", "0"], "--budget must be a positive"),
    (["--budget", "3"], "smaller than the repository map"),
    (["--output", "/nonexistent-dir/x.txt"], "does not exist"),
    (["--tokenizer", "/nonexistent/tokenizer.json"], "no tokenizer found offline"),
    (["--max-file-bytes", "-1"], "max-file-bytes"),
])
def test_bad_options_exit_2(run, sample, args, message):
    result = run("pack", sample, *args)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_tokenizer_file_option(run, sample, tmp_path):
    from ssa_code.models import TINY_MODEL_DIR

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert run("pack", sample, "--tokenizer", bad).exit_code == 2
    ok = run("pack", sample, "--tokenizer", TINY_MODEL_DIR / "tokenizer.json", "--format", "json")
    assert ok.exit_code == 0
    assert json.loads(ok.stdout)["token_ids"] == json.loads(run("pack", sample, "--format", "json").stdout)["token_ids"]


def test_console_entry_point_exit_codes(sample, tmp_path, monkeypatch, capsys):
    """``main()`` (the console script) must turn errors into exit codes, not tracebacks."""
    monkeypatch.setenv("SSA_CODE_CACHE_DIR", str(tmp_path / "cache"))
    for argv, code in ([["pack", str(tmp_path / "nope")], 2], [["pack", str(sample), "--bogus"], 2]):
        monkeypatch.setattr(sys, "argv", ["ssa-code", *argv])
        with pytest.raises(SystemExit) as info:
            main()
        assert info.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no such directory" in err
