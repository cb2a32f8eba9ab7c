"""scripts/train_tiny.py end to end at toy size on the CPU: one process, and two under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "train_tiny.py"

pytestmark = pytest.mark.slow


def _run(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_one_process_writes_a_loadable_checkpoint_and_its_card(tmp_path):
    out = tmp_path / "out"
    r = _run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out / "tiny"), local_files_only=True)
    assert model.config.num_hidden_layers == 2
    result = json.loads((out / "loss.json").read_text())["result"]
    assert result["processes"] == 1 and result["steps"] == 6 and result["replicas_equal"]
    card = (out / "model_card.md").read_text()
    assert "| command | `PYTHONPATH=. python3 scripts/train_tiny.py --cpu-smoke --out" in card
    assert "| processes (data parallel) | 1 |" in card


def test_two_processes_agree_on_every_step_and_keep_equal_weights(tmp_path):
    """Time-budgeted (no step limit), so the processes must agree on the clock to stop together."""
    out = tmp_path / "out"
    r = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              str(SCRIPT), "--cpu-smoke", "--minutes", "0.45", "--set", "max_steps=0",
              "--set", "log_every=5", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads((out / "loss.json").read_text())["result"]
    assert result["processes"] == 2 and result["rows_per_step"] == 4
    assert result["steps"] >= 1 and result["replicas_equal"] is True
    assert result["tokens_seen"] == result["steps"] * 4 * 256
    # The card's command is the one that reproduces the run: the launcher included.
    assert result["command"].startswith(
        "PYTHONPATH=. python3 -m torch.distributed.run --standalone --nproc_per_node 2 scripts/train_tiny.py --cpu-smoke")
    # Only the first process logs and writes.
    assert r.stdout.count("] done in ") == 1
    assert sorted(p.name for p in out.iterdir()) == ["loss.json", "model_card.md", "tiny", "train.log"]


def _train_module():
    import importlib.util

    name = "train_tiny_under_test"
    if name not in sys.modules:  # dataclasses look their module up in sys.modules
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_confusable_keys_reach_the_retrieval_rows_and_zero_draws_as_before(monkeypatch, fraction):
    """--set confusable_keys=F: that fraction of multi-key rows asks random_needles for keys that
    differ by a digit swap or one digit; at 0 the rows are the ones runs before the option drew."""
    from types import SimpleNamespace

    import numpy as np

    from ssa_code.bench.synthetic import LineBoundaries
    from ssa_code.models import default_tokenizer

    tt = _train_module()
    tok = default_tokenizer()
    ids = np.asarray(tok("def f(x):\n    return x + 1\n\n" * 400, add_special_tokens=False)["input_ids"])
    corpus = SimpleNamespace(tokens=ids, pack_starts=np.array([0]))
    calls = []
    real = tt.random_needles

    def spy(rng, n, **kw):
        calls.append((n, kw.get("confusable", False), kw))
        return real(rng, n, **kw)

    monkeypatch.setattr(tt, "random_needles", spy)
    lines = LineBoundaries(tok)
    cfg = tt.smoke_config(1.0)
    cfg.confusable_keys = fraction
    b = tt.Batcher(corpus, tok, lines, cfg, seed=4)
    rows = [b.retrieval_row(256) for _ in range(40)]
    multi = [c for c in calls if c[0] > 1]
    assert multi and all(c[1] == (fraction == 1.0) for c in multi)
    assert all(c[1] is False for c in calls if c[0] == 1)
    assert any(r is not None for r in rows)
    if fraction == 0.0:  # the call of the runs before the option, argument for argument
        assert all(c[2] == {} for c in calls)
    with pytest.raises(ValueError, match="confusable_keys"):
        tt.TrainConfig(confusable_keys=1.5)


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_fragment_rows_lay_retrieval_rows_out_as_ssa_shows_them(monkeypatch, fraction):
    """--set fragment_rows=F: that fraction of retrieval rows is built on a pack's start, blocks
    from random places and a contiguous stretch; at 0 no row is."""
    from types import SimpleNamespace

    import numpy as np

    from ssa_code.bench.synthetic import LineBoundaries
    from ssa_code.models import default_tokenizer

    tt = _train_module()
    tok = default_tokenizer()
    ids = np.asarray(tok("def f(x):\n    return x + 1\n\n" * 400, add_special_tokens=False)["input_ids"])
    corpus = SimpleNamespace(tokens=ids, pack_starts=np.array([0, 700]))
    cfg = tt.smoke_config(1.0)
    cfg.fragment_rows, cfg.fragment_block = fraction, 16
    b = tt.Batcher(corpus, tok, LineBoundaries(tok), cfg, seed=4)
    made = []
    real = b.fragmented

    def spy(n):
        out = real(n)
        made.append((n, out))
        return out

    monkeypatch.setattr(b, "fragmented", spy)
    rows = [b.retrieval_row(512) for _ in range(20)]
    done = [r for r in rows if r is not None]
    assert done and all(r[0].shape == (512,) and r[1].shape == (512,) and (r[1] > 1).any() for r in done)
    if fraction == 0.0:
        assert made == []
        return
    assert len(made) >= len(done)
    for n, out in made:
        assert out.shape == (n,)
        # The first block is a pack's start.
        assert any(np.array_equal(out[:16], ids[s:s + 16]) for s in (0, 700))
    with pytest.raises(ValueError, match="fragment_rows"):
        tt.TrainConfig(fragment_rows=-0.1)
