"""``ask``, ``explain``, ``review`` and ``install-hook`` end to end on CPU with tiny random models.

Stdout (data) and stderr (progress, diagnostics) are checked separately: click >= 8.2's
CliRunner keeps them apart (``result.stdout`` / ``result.stderr``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from assist_fixtures import git, init_repo, isolated_env, save_chain_llama, states  # noqa: F401 (autouse fixture)
from ssa_code.cli.app import app

FAST = ["--ssa", "small", "--max-tokens", "6"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def no_traceback(result) -> None:
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def one_line_error(result, code: int, pattern: str) -> None:
    no_traceback(result)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines()
             if ln.startswith("ssa-code:") and not ln.startswith("ssa-code: warning:")]
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]


# -- ask -------------------------------------------------------------------------------------------


def test_ask_streams_answer_cites_sources_and_reuses_state(sample_repo, random_model_dir, isolated_env):
    model = str(random_model_dir)
    first = invoke("ask", "Where is the entry point?", "--repo", str(sample_repo), "--model", model, *FAST, "-v")
    no_traceback(first)
    assert first.exit_code == 0, first.stderr
    # Progress and timings on stderr, never on stdout.
    assert "prefill" in first.stderr and "tokens" in first.stderr and "tok/s" in first.stderr
    assert re.search(r"ttft [\d.]+ s · prefill [\d.]+ s · state reused: no", first.stderr)
    assert "tok/s" not in first.stdout
    packed_paths = {p.relative_to(sample_repo).as_posix() for p in sample_repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    cited = re.findall(r"^\s+([\d.]+)%\s+(\S+)$", first.stdout, re.M)
    assert cited, first.stdout
    assert {path for _, path in cited} <= packed_paths
    shares = [float(s) for s, _ in cited]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.5
    assert len(states(isolated_env / "cache")) == 1

    second = invoke("ask", "What does the tokenizer do?", "--repo", str(sample_repo), "--model", model, *FAST, "--json")
    assert second.exit_code == 0, second.stderr
    data = json.loads(second.stdout)
    assert data["state_reused"] is True and data["prefill_s"] == 0.0
    assert data["ttft_s"] > 0 and data["question"] == "What does the tokenizer do?"
    assert {s["path"] for s in data["sources"]} <= packed_paths
    assert "prefill ━" not in second.stderr  # no prefill ran
    assert len(states(isolated_env / "cache")) == 1


def test_ask_json_shape_and_no_state(sample_repo, random_model_dir, isolated_env):
    r = invoke("ask", "What is tested?", "--repo", str(sample_repo), "--model", str(random_model_dir), *FAST,
               "--json", "--no-state")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data) >= {"answer", "sources", "ttft_s", "prefill_s", "state_reused", "tokens", "model"}
    assert data["state_reused"] is False and data["prefill_s"] > 0
    assert data["tokens"]["answer"] <= 6
    assert states(isolated_env / "cache") == []
    # Process peaks: GPU memory only when the model ran on CUDA; host RSS at least the model's weights.
    memory = data["memory"]
    assert set(memory) == {"peak_gpu_bytes", "peak_rss_bytes"}
    if data["device"].startswith("cuda"):
        assert memory["peak_gpu_bytes"] > 0 and data["model_load"] in ("direct", "via_cpu")
    else:
        assert memory["peak_gpu_bytes"] is None and data["model_load"] == "cpu"
    assert memory["peak_rss_bytes"] > 50 * 2**20  # torch and transformers alone take more


def test_default_model_is_tiny_with_a_note(sample_repo, isolated_env):
    from ssa_code.models import TINY_MODEL_DIR

    r = invoke("ask", "hi", "--repo", str(sample_repo), *FAST)
    assert "a larger model gives better answers" in r.stderr
    assert "larger model" not in r.stdout
    no_traceback(r)
    if (TINY_MODEL_DIR / "config.json").is_file():
        assert r.exit_code == 0, r.stderr
        assert r.stdout.strip()
    else:
        # Until the bundled weights are trained, the default says so in one line.
        one_line_error(r, 1, "bundled tiny model is missing")
    # Named explicitly, there is no note.
    r = invoke("ask", "hi", "--repo", str(sample_repo), "--model", "tiny", *FAST)
    assert "larger model" not in r.stderr


# -- explain ---------------------------------------------------------------------------------------


def _a_defined_name(repo: Path) -> tuple[str, str]:
    from ssa_code.context import pack_repository

    packed = pack_repository(str(repo))
    graph = packed.graph
    for name in graph.defined_names():
        defs = graph.definitions(name)
        callers = [c for c in graph.callers(name) if c.path not in {d.path for d in defs}]
        if len(defs) == 1 and callers:
            return name, defs[0].path
    pytest.fail("the sample repository has no name used across files")


def test_explain_pins_definition_and_callers(sample_repo, random_model_dir):
    name, path = _a_defined_name(sample_repo)
    r = invoke("explain", name, "--repo", str(sample_repo), "--model", str(random_model_dir), *FAST, "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    roles = {p["role"] for p in data["pieces"]}
    assert {"target", "caller"} <= roles
    target = next(p for p in data["pieces"] if p["role"] == "target")
    assert target["path"] == path and target["name"] == name
    assert all(p["path"] != path for p in data["pieces"] if p["role"] == "caller")

    text = invoke("explain", f"{path}:{target['line']}", "--repo", str(sample_repo), "--model",
                  str(random_model_dir), *FAST)
    assert text.exit_code == 0, text.stderr
    assert re.search(rf"target\s+{re.escape(path)}:{target['line']}\s+{re.escape(name)}", text.stdout)


def test_explain_unknown_target(sample_repo, random_model_dir):
    r = invoke("explain", "no_such_symbol_anywhere", "--repo", str(sample_repo), "--model", str(random_model_dir), *FAST)
    one_line_error(r, 2, "neither a packed file")


# -- review and hooks ------------------------------------------------------------------------------


def _stage_change(repo: Path) -> str:
    target = sorted(p for p in repo.rglob("*.py") if ".git" not in p.parts and "generated" not in p.parts)[0]
    with target.open("a") as fh:
        fh.write("\n\ndef divide(a, b):\n    return a / b\n")
    git(repo, "add", str(target))
    return target.relative_to(repo).as_posix()


def _chain_model(tmp_path: Path, finding: str) -> Path:
    from ssa_code.engine.session import build_prompt
    from ssa_code.models import default_tokenizer

    last = build_prompt(default_tokenizer(), "review", "x").suffix_ids[-1]
    return save_chain_llama(tmp_path / "chain", last, finding)


def test_review_findings_strict_and_fail_on(sample_repo, tmp_path):
    path = _stage_change(sample_repo)
    line = sum(1 for _ in (sample_repo / path).open())
    model = _chain_model(tmp_path, f"{path}:{line} error divide by zero")
    base = ["review", "--staged", "--repo", str(sample_repo), "--model", str(model), "--ssa", "small", "--max-tokens", "40"]

    r = invoke(*base)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == f"{path}:{line}: error: divide by zero"
    assert "1 finding in the staged change" in r.stderr

    strict = invoke(*base, "--strict")
    assert strict.exit_code == 1
    assert "at or above 'error'" in strict.stderr

    js = invoke(*base, "--strict", "--fail-on", "warning", "--json")
    assert js.exit_code == 1
    data = json.loads(js.stdout)
    assert data["findings"] == [{"path": path, "line": line, "severity": "error", "message": "divide by zero"}]


def test_review_revision_range(sample_repo, tmp_path):
    path = _stage_change(sample_repo)
    git(sample_repo, "commit", "-q", "--no-verify", "-m", "divide")
    model = _chain_model(tmp_path, f"{path}:2 warning check b")
    r = invoke("review", "--rev", "HEAD~1..HEAD", "--repo", str(sample_repo), "--model", str(model), "--ssa", "small",
               "--max-tokens", "40", "--json", "--strict", "--fail-on", "warning")
    assert r.exit_code == 1, r.stderr
    data = json.loads(r.stdout)
    assert data["reviewed"] == "HEAD~1..HEAD" and data["files"] == [path]
    assert data["findings"] == [{"path": path, "line": 2, "severity": "warning", "message": "check b"}]


def test_review_below_threshold_passes_strict(sample_repo, tmp_path):
    path = _stage_change(sample_repo)
    model = _chain_model(tmp_path, f"{path}:1 info style")
    r = invoke("review", "--repo", str(sample_repo), "--model", str(model), "--ssa", "small", "--max-tokens", "40",
               "--strict", "--fail-on", "warning")
    assert r.exit_code == 0, r.stderr
    assert f"{path}:1: info: style" in r.stdout


def test_review_fail_open_when_model_cannot_run(sample_repo, tmp_path):
    _stage_change(sample_repo)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    r = invoke("review", "--staged", "--strict", "--repo", str(sample_repo), "--model", str(tmp_path / "broken"))
    no_traceback(r)
    assert r.exit_code == 0
    assert "review skipped, the model could not run" in r.stderr
    assert r.stdout == ""


def test_review_nothing_staged(sample_repo, random_model_dir):
    r = invoke("review", "--repo", str(sample_repo), "--model", str(random_model_dir))
    assert r.exit_code == 0
    assert "nothing to review" in r.stderr and r.stdout == ""


def test_review_bad_options(sample_repo):
    one_line_error(invoke("review", "--staged", "--rev", "HEAD~1..HEAD", "--repo", str(sample_repo)), 2, "either --staged or --rev")
    one_line_error(invoke("review", "--fail-on", "fatal", "--repo", str(sample_repo)), 2, "not a severity")
    one_line_error(invoke("review", "--rev", "nope..HEAD", "--repo", str(sample_repo)), 2, "cannot diff")


def test_install_hook_refuses_to_replace(sample_repo):
    hook = sample_repo / ".git" / "hooks" / "pre-commit"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text("#!/bin/sh\nexit 0\n")
    one_line_error(invoke("install-hook", "--repo", str(sample_repo)), 1, "already exists; pass --force")
    assert hook.read_text() == "#!/bin/sh\nexit 0\n"
    r = invoke("install-hook", "--repo", str(sample_repo), "--force", "--strict", "--fail-on", "warning")
    assert r.exit_code == 0, r.stderr
    text = hook.read_text()
    assert "review --staged --strict --fail-on warning" in text and os.access(hook, os.X_OK)


def test_git_commit_runs_the_hook_in_both_modes(sample_repo, tmp_path, isolated_env):
    """A real ``git commit`` runs the installed hook (a subprocess), default then --strict."""
    path = _stage_change(sample_repo)
    line = sum(1 for _ in (sample_repo / path).open())
    model = _chain_model(tmp_path, f"{path}:{line} error divide by zero")
    # The hook runs in git's environment, which inherits this one (SSA_CODE_CACHE_DIR included).
    r = invoke("install-hook", "--repo", str(sample_repo), "--force", "--strict", "--model", str(model), "--ssa", "small")
    assert r.exit_code == 0, r.stderr
    blocked = git(sample_repo, "commit", "-m", "divide", check=False)
    assert blocked.returncode == 1, blocked.stderr
    assert f"{path}:{line}: error: divide by zero" in blocked.stdout + blocked.stderr
    assert git(sample_repo, "rev-list", "--count", "HEAD").stdout.strip() == "1"

    r = invoke("install-hook", "--repo", str(sample_repo), "--force", "--model", str(model), "--ssa", "small")
    assert r.exit_code == 0, r.stderr
    passed = git(sample_repo, "commit", "-m", "divide", check=False)
    assert passed.returncode == 0, passed.stderr
    assert "1 finding" in passed.stderr
    assert git(sample_repo, "rev-list", "--count", "HEAD").stdout.strip() == "2"


# -- bad input -------------------------------------------------------------------------------------


def test_not_a_repository(tmp_path, random_model_dir):
    for cmd in (["ask", "what?"], ["explain", "main"]):
        r = invoke(*cmd, "--repo", str(tmp_path), "--model", str(random_model_dir))
        one_line_error(r, 2, "not a git repository")


def test_empty_question(sample_repo):
    one_line_error(invoke("ask", "   ", "--repo", str(sample_repo)), 2, "question is empty")
    one_line_error(invoke("explain", "", "--repo", str(sample_repo)), 2, "question is empty")


def test_repository_without_text_files(tmp_path, random_model_dir):
    repo = tmp_path / "bin"
    repo.mkdir()
    (repo / "blob.bin").write_bytes(bytes(range(256)) * 8)
    init_repo(repo)
    r = invoke("ask", "what?", "--repo", str(repo), "--model", str(random_model_dir), *FAST)
    one_line_error(r, 1, r"no text files to read \(1 skipped: 1 binary")
    # The reason is the walk's: here the --include glob matches nothing.
    (repo / "a.py").write_text("x = 1\n")
    init_repo(repo)
    r = invoke("ask", "what?", "--repo", str(repo), "--model", str(random_model_dir), *FAST, "--include", "zzz/**")
    one_line_error(r, 1, r"\(2 skipped: 2 not matched by --include\)")


def test_model_path_that_is_not_a_model(sample_repo, tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(invoke("ask", "q", "--repo", str(sample_repo), "--model", str(tmp_path / "empty")), 2,
                   "not a model directory")


def test_hub_model_not_cached(sample_repo, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    one_line_error(invoke("ask", "q", "--repo", str(sample_repo), "--model", "nobody/nothing-7b"), 2,
                   "neither a local path nor in the local Hugging Face cache")


def test_context_over_budget(sample_repo, random_model_dir, isolated_env):
    r = invoke("ask", "q", "--repo", str(sample_repo), "--model", str(random_model_dir), *FAST, "--budget", "50")
    one_line_error(r, 1, r"needs [\d,]+ tokens .* budget is 50")
    (isolated_env / "config").mkdir(parents=True, exist_ok=True)
    (isolated_env / "config" / "config.toml").write_text("budget = 60\n")
    r = invoke("ask", "q", "--repo", str(sample_repo), "--model", str(random_model_dir), *FAST)
    one_line_error(r, 1, "budget is 60")


def test_ctrl_c_during_prefill_leaves_no_state(sample_repo, random_model_dir, isolated_env, monkeypatch):
    import ssa_code.engine.prefill as prefill_mod

    real = prefill_mod.prefill
    calls = []

    def interrupted(*args, progress=None, **kwargs):
        def boom(done, total):
            calls.append(done)
            raise KeyboardInterrupt

        return real(*args, progress=boom, **kwargs)

    monkeypatch.setattr(prefill_mod, "prefill", interrupted)
    r = invoke("ask", "q", "--repo", str(sample_repo), "--model", str(random_model_dir), *FAST)
    one_line_error(r, 130, "interrupted")
    assert calls, "prefill never reported progress"
    root = isolated_env / "cache" / "states"
    assert not root.exists() or list(root.iterdir()) == []


def test_ctrl_c_while_saving_leaves_no_state(sample_repo, random_model_dir, isolated_env, monkeypatch):
    from ssa_code.attention import SSACache

    real_save = SSACache.save

    def half_save(self, path):
        real_save(self, path)
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(SSACache, "save", half_save)
    r = invoke("ask", "q", "--repo", str(sample_repo), "--model", str(random_model_dir), *FAST)
    one_line_error(r, 130, "interrupted")
    root = isolated_env / "cache" / "states"
    assert not root.exists() or list(root.iterdir()) == []


def test_corrupted_state_is_rebuilt_with_warning(sample_repo, random_model_dir, isolated_env):
    args = ["ask", "q", "--repo", str(sample_repo), "--model", str(random_model_dir), *FAST, "--json"]
    assert invoke(*args).exit_code == 0
    [state] = states(isolated_env / "cache")
    blob = state / "cache.safetensors"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))

    r = invoke(*args)
    assert r.exit_code == 0, r.stderr
    assert re.search(r"warning: saved state .* corrupted .*rebuilding", r.stderr)
    assert json.loads(r.stdout)["state_reused"] is False
    again = invoke(*args)
    assert json.loads(again.stdout)["state_reused"] is True and "warning" not in again.stderr

    (state / "cache.safetensors").write_bytes(b"not safetensors")
    r = invoke(*args)
    assert r.exit_code == 0 and "corrupted" in r.stderr and json.loads(r.stdout)["state_reused"] is False
