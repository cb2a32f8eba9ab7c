"""benchmarks/ncu_decode_phases.py: a profiled kernel's warp samples split at its main loop."""

from __future__ import annotations

import csv
import gzip
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "ncu_decode_phases.py"
PROFILE = ROOT / "benchmarks" / "results" / "decode_profile_h100" / "call1_190006e"


def load():
    spec = importlib.util.spec_from_file_location("ncu_decode_phases", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


HEADER = ["Address", "Source", "Warp Stall Sampling (All Samples)", "Instructions Executed",
          "stall_long_sb", "stall_wait", "stall_long_sb (Not Issued)"]
# (source, samples, executed, long_sb, wait): a prologue, a loop from 0x30 to 0x60 whose entry
# waits for copies, an epilogue; a second, smaller backward branch without HMMA.
KERNEL = [
    ("LDC R1, c[0x0][0x28]", 5, 4, 0, 5),
    ("LDG.E R2, desc[UR4][R4.64]", 1, 4, 0, 1),
    ("LDGSTS.E.BYPASS.128 [R3], desc[UR4][R6.64]", 0, 4, 0, 0),
    ("BAR.SYNC.DEFER_BLOCKING 0x0", 2, 16, 0, 2),
    ("DEPBAR.LE SB0, 0x3", 20, 16, 20, 0),
    ("HMMA.16816.F32.BF16 R8, R10, R12, R8", 3, 16, 0, 3),
    ("@P0 BRA 0x30", 1, 16, 0, 1),
    ("@P1 BRA 0x60", 0, 4, 0, 0),
    ("STG.E [R2], R8", 4, 4, 4, 0),
]


def write_export(folder: Path) -> None:
    rows = [[f"0x{16 * i:x}", f"      {src}", str(s), str(ex), str(lsb), str(w), "0"]
            for i, (src, s, ex, lsb, w) in enumerate(KERNEL)]
    with gzip.open(folder / "ncu_source.csv.gz", "wt", newline="") as f:
        f.write('"Kernel Name","ssa_attn_fwd_kernel",\n')
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows([HEADER] + rows)
    with open(folder / "ncu_raw.csv", "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["ID", "Kernel Name", "Grid Size", "Block Size", "gpu__time_duration.sum",
                    "gpc__cycles_elapsed.max", "sm__cycles_active.avg"])
        w.writerow(["", "", "", "", "us", "cycle", "cycle"])
        w.writerow(["0", "ssa_attn_fwd_kernel", "(1, 4, 33)", "(128, 1, 1)", "11.5", "21,322",
                    "16,558.5"])


def test_phases_split_at_the_loop_s_first_wait(tmp_path, capsys):
    mod = load()
    write_export(tmp_path)
    (name, header, rows), = mod.source_sections(str(tmp_path / "ncu_source.csv"))
    assert name == "ssa_attn_fwd_kernel" and len(rows) == len(KERNEL)
    ph = mod.phases(header, rows)
    # Before the loop: everything up to its entry wait (the barrier before it included).
    assert ph["before the loop"][0] == 5 + 1 + 0 + 2
    assert ph["loop"][0] == 20 + 3 + 1
    assert ph["after the loop"][0] == 0 + 4
    assert ph["loop"][1]["long_sb"] == 20 and ph["before the loop"][1]["wait"] == 8
    mod.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "grid (1, 4, 33)" in out and "SM active 16558" in out and "loop: 24 samples (67%)" in out


def test_the_committed_h100_profile_reads_as_benchmarks_md_says(capsys):
    """BENCHMARKS.md quotes these shares (8K default: 25% / 69% / 6%)."""
    load().main([str(PROFILE)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("0 ssa_attn_fwd_kernel grid (1, 4, 33)")
    assert out[1].strip().startswith("before the loop: 262 samples (25%)")
    assert out[2].strip().startswith("loop: 719 samples (69%)")
    assert out[3].strip().startswith("after the loop: 62 samples (6%)")
