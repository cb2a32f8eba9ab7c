"""Run the cells that earlier needle reports answered wrong again, many reports at once.

``python -m ssa_code.bench.needle --retry DIR`` reruns one report's misses with that report's
settings; a change (``--ssa-set``) is what a retry is for. This script does it for several
reports (one seed each) in one device call: every missed cell is its own process (``--shard i/n``
of its report's retry), at most ``--procs`` at a time, each report's settings (lengths, keys,
depths, seed, jitter, chunk size) read from the ``argv`` its ``needle.json`` records. Each
report's cells land in ``OUT/<label>/<report folder name>/s<i>/``, joined into ``merged/`` beside
them as soon as the report's last cell ends.

Usage (repository root, GPU machine; the haystack file as in BENCHMARKS.md)::

    python3 benchmarks/needle_retry.py --out $OUT/misses --label default --procs 14 --minutes 6 \\
        benchmarks/results/needle_h100_ckpt3_ssa16/seed6 ... -- --ssa-set exact_before=1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# The needle options that make a report's cells what they are; copied from its argv.
_SETTINGS = ("--lengths", "--keys", "--depths", "--seed", "--jitter", "--chunk-size", "--budget",
             "--block-size", "--sinks", "--dtype")


def report_settings(folder: Path, method: str) -> tuple[list[str], int]:
    """``(needle options, cells of method answered wrong)`` of the report in ``folder``."""
    data = json.loads((folder / "needle.json").read_text())
    argv = data["meta"].get("argv") or []
    opts: list[str] = []
    for i, a in enumerate(argv[:-1]):
        if a in _SETTINGS:
            opts += [a, argv[i + 1]]
    wrong = sum(1 for c in data["cells"] if c["method"] == method and c.get("correct") is False)
    return opts, wrong


def merge(dest: Path) -> None:
    """Join the shard reports under ``dest`` into ``dest/merged`` (``needle --merge``)."""
    parts = sorted(str(p) for p in dest.glob("s*") if (p / "needle.json").exists())
    if parts:
        subprocess.run([sys.executable, "-m", "ssa_code.bench.needle", "--merge", *parts, "--out",
                        str(dest / "merged")], check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", type=Path, help="needle report folders (needle.json)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--label", default="retry", help="subfolder of --out for this run's reports")
    ap.add_argument("--method", default="ssa")
    ap.add_argument("--procs", type=int, default=14, help="processes at a time")
    ap.add_argument("--minutes", type=float, default=6.0, help="each process's --max-minutes")
    ap.add_argument("--tokens", default="bench_data/haystack_stdlib.npz")
    args = ap.parse_args(argv)

    jobs: list[tuple[Path, list[str]]] = []
    left: dict[Path, int] = {}  # per report: its processes not yet finished
    for folder in args.reports:
        opts, wrong = report_settings(folder, args.method)
        dest = args.out / args.label / folder.name
        left[dest] = wrong
        for i in range(wrong):
            cmd = [sys.executable, "-m", "ssa_code.bench.needle", "--tokens", args.tokens, "--methods",
                   args.method, "--no-warmup", "--retry", str(folder), "--shard", f"{i}/{wrong}",
                   "--max-minutes", str(args.minutes), "--out", str(dest / f"s{i}"), *opts, *extra]
            jobs.append((dest, cmd))
    print(f"{len(jobs)} missed cells of {len(args.reports)} reports, {args.procs} at a time", flush=True)
    running: list[tuple[subprocess.Popen, Path]] = []
    t0 = time.time()
    while jobs or running:
        while jobs and len(running) < args.procs:
            dest, cmd = jobs.pop(0)
            shard = Path(cmd[cmd.index("--out") + 1])
            shard.mkdir(parents=True, exist_ok=True)
            with open(shard.with_suffix(".log"), "w") as log:
                running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), dest))
        time.sleep(1.0)
        for p, dest in list(running):
            if p.poll() is None:
                continue
            running.remove((p, dest))
            print(f"{time.time() - t0:6.0f}s {dest}: exit {p.returncode}", flush=True)
            left[dest] -= 1
            if left[dest] == 0:
                # Joined as soon as the report's last cell ends, so a call cut short keeps it.
                merge(dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
