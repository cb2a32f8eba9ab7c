"""benchmarks/probe_needle_misses.py --key-cells: a multi-key cell's own needles, asked densely."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

from ssa_code.bench.needle import make_needles
from ssa_code.models import TINY_MODEL_DIR, default_tokenizer

from .test_needle_prompt import hay  # noqa: F401 (fixture)

PROBE = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_needle_misses.py"


@pytest.mark.skipif(not (TINY_MODEL_DIR / "model.safetensors").is_file(), reason="tiny model checkpoint absent")
def test_key_cells_rebuild_the_cells_needles_and_name_each_answer(hay):  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM

    spec = importlib.util.spec_from_file_location("probe_needle_misses", PROBE)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    model = AutoModelForCausalLM.from_pretrained(str(TINY_MODEL_DIR), dtype=torch.float32,
                                                 local_files_only=True)
    cells = ["3:1048576:4:9", "0:4096:3:1"]
    got = probe.check_key_cells(model, default_tokenizer(), hay, cells, depths=[0.3, 0.8], lengths=[700])
    for cell in cells:
        seed, length, keys, di = (int(x) for x in cell.split(":"))
        needles, asked = make_needles(random.Random(f"{seed}:{length}:{keys}:{di}"), keys)
        r = got[cell]
        # The benchmark's own draw: same keys, same asked key and value.
        assert r["keys"] == [n.key for n in needles] and r["asked"] == needles[asked].key
        assert r["value"] == needles[asked].value
        assert len(r["keys"]) == keys and r["prompts"] == 2 == len(r["answers"])
        assert r["right"] + r["other_needle"] + r["no_needle"] == 2
        assert r["right"] == sum(a.startswith(needles[asked].value) for a in r["answers"])
        others = {n.value for i, n in enumerate(needles) if i != asked}
        wrong_needle = [a for a in r["answers"] if not a.startswith(needles[asked].value)
                        and any(a.startswith(o) for o in others)]
        assert r["other_needle"] == len(wrong_needle)
