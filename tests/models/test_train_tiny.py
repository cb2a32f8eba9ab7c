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
