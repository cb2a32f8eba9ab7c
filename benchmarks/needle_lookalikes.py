"""Print the text SSA staged beside the needle when a needle cell's answer started.

Each SSA cell of a needle report records, per layer and KV head, the stored blocks staged for the
answer (``diag.staged``, block ``i`` holds prompt positions ``sinks + i * block_size`` on) and the
needle blocks' ranks in the question's exact choice (``diag.ranks``). This rebuilds the cell's
prompt from the packed haystack and prints, for the heads that ranked the needle's block among
their best, every staged block's text: what the answer's first token had to choose from.

Usage::

    python benchmarks/needle_lookalikes.py REPORT_DIR --haystack bench_data/haystack_stdlib.npz \\
        [--all] [--rank 3] [--width 110]

By default only cells whose answer (or any question variant's answer) was wrong are shown.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _flat(text: str, width: int) -> str:
    text = text.replace("\n", "\u23ce").replace("\t", " ")
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="a needle report folder (needle.json)")
    ap.add_argument("--haystack", type=Path, required=True, help="the packed haystack the report ran on")
    ap.add_argument("--all", action="store_true", help="every SSA cell with diagnostics, not only wrong ones")
    ap.add_argument("--rank", type=int, default=3, help="show heads whose best needle block ranked at most this")
    ap.add_argument("--width", type=int, default=110, help="characters of text per block")
    args = ap.parse_args(argv)

    from ssa_code.bench.needle import read_run
    from ssa_code.bench.needle_pool import rebuilt_prompts
    from ssa_code.models import default_tokenizer

    def answers(c) -> dict:
        """The run's answer and every question variant's: name -> (right, output)."""
        variants = (c.diag or {}).get("variants") or {}
        return {"run": (c.correct, c.output), **{n: (v["correct"], v["output"]) for n, v in variants.items()}}

    def shown_cell(c) -> bool:
        return (c.method == "ssa" and bool((c.diag or {}).get("staged"))
                and (args.all or not all(ok for ok, _ in answers(c).values())))

    try:
        cells, meta = read_run(args.report)
        cfg = meta["configs"]["ssa"]
        block, sinks = cfg["block_size"], cfg["sinks"]
        tokenizer = default_tokenizer()
        # Every measured cell's prompt is rebuilt and checked against the report before any is
        # printed; only the shown ones are kept.
        shown_prompts = [(c, p) for _, c, p in rebuilt_prompts([(args.report, cells, meta)], args.haystack)
                         if shown_cell(c)]
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for c, p in shown_prompts:
        diag = c.diag
        needle = range(p.needle_pos, p.needle_pos + p.needle_len)
        print(f"\n=== keys={c.keys} depth={c.depth} expected {c.expected!r}; "
              + ", ".join(f"{n}: {'right' if ok else repr(out.strip()[:16])}" for n, (ok, out) in answers(c).items()))
        print(f"    needle line at {p.needle_pos}: {_flat(tokenizer.decode(p.ids[needle.start:needle.stop]), 80)}")
        for pair, staged in enumerate(diag["staged"]):
            ranks = (diag.get("ranks") or [[]] * len(diag["staged"]))[pair]
            best = min((r for r in ranks if r >= 0), default=None)
            if best is None or best > args.rank:
                continue
            held = (diag.get("held") or [None] * len(diag["staged"]))[pair]
            print(f"  pair {pair} (needle rank {best}, held {held}): {len(staged)} blocks staged")
            for b in staged:
                lo = sinks + b * block
                mark = "*" if lo < needle.stop and needle.start < lo + block else " "
                print(f"   {mark}{b:6d} @{lo:8d} {_flat(tokenizer.decode(p.ids[lo:lo + block]), args.width)}")
    print(f"\n{len(shown_prompts)} cell(s) shown")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
