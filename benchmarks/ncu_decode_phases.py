"""Where a decode kernel's time goes, read off an Nsight Compute profile: per profiled kernel,
its duration, elapsed and SM-active cycles, and the warp-stall samples of the split kernel's
three phases (before its main loop, the loop, after it) with their largest stall reasons.

    python benchmarks/ncu_decode_phases.py DIR

DIR holds what scripts/device_decode_profile.sh writes: ncu_raw.csv and ncu_source.csv, the
`--page raw` and `--page source --print-source sass` exports of one report (either may be
gzipped, as in benchmarks/results/decode_profile_h100). The main loop is the backward branch
enclosing the most tensor-core instructions (HMMA); everything the program executes before the
loop's first wait for its async copies is the prologue. Samples are per warp, so a phase's share
of a kernel's samples is its share of the time its warps were resident.
"""
from __future__ import annotations

import argparse
import collections
import csv
import gzip
import io
import os
import re


def read_text(path):
    """The text of ``path``, or of ``path``.gz when only that exists."""
    if not os.path.exists(path):
        path += ".gz"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return f.read()


def source_sections(path):
    """(kernel name, header, rows) for every kernel in a `--page source` CSV export."""
    text = read_text(path)
    parts = re.split(r'^"Kernel Name","([^"]*)",\s*$', text, flags=re.M)
    for name, body in zip(parts[1::2], parts[2::2]):
        rows = [r for r in csv.reader(io.StringIO(body.strip("\n"))) if r]
        yield name, rows[0], rows[1:]


def main_loop(instrs, executed):
    """Index range [a, b] of the main loop: a backward branch to an earlier address enclosing
    the most HMMA, among the instructions that ran."""
    addr = {a: i for i, (a, _) in enumerate(instrs)}
    best = None
    for i, (_, text) in enumerate(instrs):
        m = re.search(r"BRA\s+(0x[0-9a-f]+)", text)
        if not m or executed[i] == 0:
            continue
        j = addr.get(m.group(1))
        if j is None or j >= i:
            continue
        n_mma = sum("HMMA" in t for _, t in instrs[j:i + 1])
        if best is None or n_mma > best[0]:
            best = (n_mma, j, i)
    return (best[1], best[2]) if best and best[0] else None


def phases(header, rows):
    col = {h: k for k, h in enumerate(header)}
    instrs = [(r[col["Address"]], r[col["Source"]].strip()) for r in rows]
    executed = [int(r[col["Instructions Executed"]] or 0) for r in rows]
    samples = [int(r[col["Warp Stall Sampling (All Samples)"]] or 0) for r in rows]
    stalls = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    loop = main_loop(instrs, executed)
    if loop is None:
        return None
    a, b = loop
    # The loop's entry waits for the prologue's copies: the prologue ends at that wait.
    waits = [i for i in range(a, b + 1) if instrs[i][1].startswith("DEPBAR")]
    a = waits[0] if waits else a
    out = {}
    for name, (lo, hi) in (("before the loop", (0, a)), ("loop", (a, b + 1)),
                           ("after the loop", (b + 1, len(rows)))):
        reasons = collections.Counter()
        for r in rows[lo:hi]:
            for s in stalls:
                v = r[col[s]]
                if v not in ("", "0"):
                    reasons[s[len("stall_"):]] += int(v)
        out[name] = (sum(samples[lo:hi]), reasons)
    return out


def raw_metrics(path):
    rows = list(csv.reader(io.StringIO(read_text(path))))
    header = rows[0]
    return [dict(zip(header, r)) for r in rows[2:]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", help="folder with ncu_raw.csv[.gz] and ncu_source.csv[.gz]")
    args = ap.parse_args(argv)
    src = os.path.join(args.dir, "ncu_source.csv")
    raw = raw_metrics(os.path.join(args.dir, "ncu_raw.csv"))
    for k, (name, header, rows) in enumerate(source_sections(src)):
        m = raw[k] if k < len(raw) else {}
        line = (f"{k} {name} grid {m.get('Grid Size', '?')} block {m.get('Block Size', '?')}: "
                f"{m.get('gpu__time_duration.sum', '?')} us, elapsed "
                f"{m.get('gpc__cycles_elapsed.max', '?')} cycles, SM active "
                f"{float(m.get('sm__cycles_active.avg', 'nan').replace(',', '')):.0f}")
        print(line)
        ph = phases(header, rows)
        if ph is None:
            continue
        total = sum(n for n, _ in ph.values()) or 1
        for pname, (n, reasons) in ph.items():
            top = ", ".join(f"{r} {c}" for r, c in reasons.most_common(4))
            print(f"    {pname}: {n} samples ({n / total:.0%}); {top}")


if __name__ == "__main__":
    main()
