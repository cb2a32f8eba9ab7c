"""The 1M-token benchmark script, every code path on CPU with a few-MB model (--smoke).

Its numbers mean nothing here; the point is that the script the GPU runs works the first time.
"""

from __future__ import annotations

import json

from ssa_code.bench.long_context import main


def test_long_context_script_runs_end_to_end(tmp_path, capsys):
    rc = main(["--smoke", "--device", "cpu", "--marks", "512,1024", "--chunk", "256", "--decode-tokens", "3",
               "--dense-prefill-marks", "512", "--dense-decode-filled", "1024", "--out", str(tmp_path)])
    assert rc == 0
    result = json.loads((tmp_path / "long_context.json").read_text())
    assert [r["tokens"] for r in result["ssa"]] == [512, 1024]
    assert [r["tokens"] for r in result["dense"]] == [512]
    assert result["dense_decode_filled"][0]["tokens"] == 1024
    # The SSA state is fixed-size; the store grows with the context.
    first, last = result["ssa"]
    assert first["ssa_state_GiB"] == last["ssa_state_GiB"] > 0 and last["store_GiB"] > first["store_GiB"]
    assert (tmp_path / "long_context.png").stat().st_size > 0
    assert "| 1024 |" in capsys.readouterr().out
