"""Compare the question variants of needle reports (``--question-variant``) with SSA's own answer.

Each SSA cell of a report run with ``--question-variant`` holds, in ``diag.variants``, the
answers of the same prefill's cue under changed question-time fields. This prints, per variant:
cells right, cells where only the default or only the variant was right, and the sign test
over those (``needle_pool.sign_test``); then every cell where any answer was wrong, with the
needle's held share and its best block rank per answer.

``--surest b1a2`` (or ``--surest b1,a2``; repeatable) adds a row for answering each cell from
whichever of SSA's own choice and those variants gave its first answer token the highest
probability (the first on ties): what ``SSAConfig.exact_tries`` does on one run, computed here
from the recorded first-token distributions.

Usage::

    python benchmarks/needle_variants.py REPORT_DIR [REPORT_DIR ...] [--surest NAMES] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ssa_code.bench.needle_pool import clopper_pearson, sign_test
from ssa_code.engine.question import surest


def _best_rank(diag: dict) -> int | None:
    """The needle's best block rank over the layers and heads that chose exactly."""
    ranks = [r for head in (diag.get("ranks") or []) for r in head if r >= 0]
    return min(ranks) if ranks else None


def _paired(both: list[tuple[bool, bool]]) -> dict:
    """(default right, variant right) per cell -> the variant's row: right, interval, cells only
    one of the two answered, sign test."""
    right = sum(v for _, v in both)
    only_default = sum(d and not v for d, v in both)
    only_variant = sum(v and not d for d, v in both)
    return {"cells": len(both), "right": right, "interval": clopper_pearson(right, len(both)),
            "only_default": only_default, "only_variant": only_variant, "p": sign_test(only_variant, only_default)}


def _surest(c: dict, names: list[str]) -> bool | None:
    """Whether the surest of SSA's own answer and the ``names`` variants' was right (None: the
    cell lacks one of them)."""
    variants = c["diag"]["variants"]
    if any(n not in variants for n in names):
        return None
    answers = [(c["correct"], c["diag"]["first"])] + [(variants[n]["correct"], variants[n]["first"]) for n in names]
    return bool(answers[surest([first["top"][0][1] for _, first in answers])][0])


def compare(reports: list[Path], surest: list[list[str]] = ()) -> dict:
    cells = []
    for folder in reports:
        data = json.loads((folder / "needle.json").read_text())
        for c in data["cells"]:
            if c["method"] == "ssa" and c.get("correct") is not None and (c.get("diag") or {}).get("variants"):
                cells.append((folder, c))
    names = sorted({n for _, c in cells for n in c["diag"]["variants"]})
    out = {"cells": len(cells), "default": sum(bool(c["correct"]) for _, c in cells), "variants": {}, "wrong": []}
    for name in names:
        both = [(c["correct"], c["diag"]["variants"][name]["correct"]) for _, c in cells
                if name in c["diag"]["variants"]]
        out["variants"][name] = _paired(both)
    for names in surest:
        both = [(c["correct"], ok) for _, c in cells if (ok := _surest(c, names)) is not None]
        if not both:
            raise ValueError(f"--surest {','.join(names)}: no cell has all of these variants")
        out["variants"]["surest:" + "+".join(names)] = _paired(both)
    for folder, c in cells:
        answers = {"default": (c["correct"], c["output"], c.get("needle_held"), _best_rank(c["diag"]))}
        for name, v in c["diag"]["variants"].items():
            answers[name] = (v["correct"], v["output"], v["needle_held"], _best_rank(v))
        if not all(a[0] for a in answers.values()):
            out["wrong"].append({"report": str(folder), "keys": c["keys"], "depth": c["depth"],
                                 "expected": c["expected"], "answers": answers})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("--surest", action="append", default=[], metavar="NAMES",
                    help="comma-separated variants: answer from the surest first token among them and SSA's own")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    try:
        res = compare(args.reports, [[n.strip() for n in s.split(",") if n.strip()] for s in args.surest])
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{res['cells']} SSA cells with variants; default right in {res['default']}")
    print("| variant | right | 95% interval | only default right | only variant right | sign test p |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, v in res["variants"].items():
        lo, hi = v["interval"]
        print(f"| {name} | {v['right']} / {v['cells']} | {100 * lo:.1f}-{100 * hi:.1f}% | {v['only_default']} "
              f"| {v['only_variant']} | {v['p']:.3f} |")
    for w in res["wrong"]:
        print(f"{w['report']} keys={w['keys']} depth={w['depth']} want {w['expected']!r}")
        for name, (ok, text, held, rank) in w["answers"].items():
            print(f"    {name:8s} {'OK ' if ok else 'no '} held {held:.3f} best rank {rank} got {text!r}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
