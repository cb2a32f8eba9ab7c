"""Pooling needle reports of several seeds: accuracy with an exact interval, and methods cell by cell.

One seed of :mod:`ssa_code.bench.needle` is a few dozen cells a length; a claim such as "97% at
1M" needs several seeds pooled, and a claim that one method beats another needs the cells both
ran compared one by one. ``--merge`` cannot do this: it joins shards of *one* benchmark and
refuses runs that differ in seed or jitter. Pooling takes such runs, as long as they are the same
benchmark in everything else (model, budget, chunk, haystack, dtype, each method's config)::

    python -m ssa_code.bench.needle_pool RESULTS/seed0 RESULTS/seed1 ... --lengths 1m

A haystack packed again on another machine has the same tokens but may come from another git
tree (the tree holds files the packer skips, such as ``__pycache__``). With ``--haystack FILE``,
reports whose haystacks differ only in that tree id are pooled once every cell's prompt has been
rebuilt from FILE and found the same (length and needle position; about a second a 1M cell).

It prints, per method and length, right answers over cells run with a 95% Clopper-Pearson
interval (exact, conservative; it treats the cells as independent, which cells of seeds run
without ``--jitter`` are not quite: those share needle lines), and for each pair of methods the
cells where exactly one was right, with the exact two-sided sign test on them.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ssa_code.bench.needle import benchmark_differs, parse_lengths, read_run


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def _bisect(f, lo: float = 0.0, hi: float = 1.0) -> float:
    """The root of f, increasing on [lo, hi] with f(lo) <= 0 <= f(hi)."""
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(x: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion of ``x`` successes in ``n`` trials."""
    if not 0 <= x <= n or n == 0:
        raise ValueError(f"need 0 <= x <= n and n > 0, got x={x}, n={n}")
    a = (1 - level) / 2
    # Lower: the p at which P(X >= x) = a; upper: the p at which P(X <= x) = a.
    lo = 0.0 if x == 0 else _bisect(lambda p: (1 - binom_cdf(x - 1, n, p)) - a)
    hi = 1.0 if x == n else _bisect(lambda p: a - binom_cdf(x, n, p))
    return lo, hi


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test p-value for ``wins`` against ``losses`` (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    return min(1.0, 2 * binom_cdf(min(wins, losses), n, 0.5))


def _without_tree(meta: dict) -> dict:
    """``meta`` with its haystack's repositories named without their git tree id."""
    hay = dict(meta.get("haystack") or {})
    hay["repos"] = [{k: v for k, v in r.items() if k != "tree_id"} for r in hay.get("repos") or []]
    return {**meta, "haystack": hay}


def rebuilt_prompts(runs: Sequence[tuple[Path, list, dict]], tokens: Path,
                    lengths: Sequence[int] | None = None, select=None) -> Iterator[tuple[Path, Any, Any]]:
    """Rebuild the prompt of every measured cell of ``runs`` (folder, cells, meta) from the
    haystack file ``tokens`` and compare its length and needle position with the report's;
    yields ``(folder, cell, prompt)`` for each. ``select(cell)``: only the measured cells it
    accepts (default: all). Raises ValueError at the first cell that differs."""
    from ssa_code.bench.needle import Haystack, LineBoundaries, cell_prompt, depth_grid, tokenizer_digest
    from ssa_code.models import default_tokenizer

    hay = Haystack.load(tokens)
    tokenizer = default_tokenizer()
    if tokenizer_digest(tokenizer) != hay.meta.get("tokenizer"):
        raise ValueError(f"{tokens}: packed with another tokenizer than the tiny model's")
    lines = LineBoundaries(tokenizer)
    packed = _without_tree({"haystack": hay.meta})["haystack"]
    for folder, cells, meta in runs:
        if _without_tree(meta)["haystack"] != packed:
            raise ValueError(f"{folder}: its haystack is not {tokens} (beyond the tree id)")
        for length in sorted({c.length for c in cells if not lengths or c.length in lengths}):
            # Every planned cell is listed, run or not: the depths give the grid they came from.
            depths = sorted({c.depth for c in cells if c.length == length})
            if depth_grid(len(depths)) != depths:
                raise ValueError(f"{folder}: the depths at {length} tokens are not a benchmark grid")
            for c in cells:
                if c.length != length or c.correct is None or (select is not None and not select(c)):
                    continue
                p = cell_prompt(hay, lines, tokenizer, meta["seed"], length, c.keys, depths.index(c.depth),
                                depths, meta.get("jitter", 0))
                if len(p.ids) != c.prompt_tokens or p.needle_pos / len(p.ids) != c.needle_depth:
                    raise ValueError(f"{folder}: cell {c.method} keys={c.keys} length={length} depth={c.depth} "
                                     f"is another prompt from {tokens}")
                yield folder, c, p


def check_prompts(runs: Sequence[tuple[Path, list, dict]], tokens: Path,
                  lengths: Sequence[int] | None = None, select=None) -> int:
    """:func:`rebuilt_prompts` run through: the number of cells checked (ValueError at the first
    that differs)."""
    return sum(1 for _ in rebuilt_prompts(runs, tokens, lengths, select))


def pool(folders: Sequence[Path], lengths: Sequence[int] | None = None,
         haystack: Path | None = None) -> dict:
    """Accuracy per (method, length) and pairwise discordance over the runs in ``folders``.

    With ``haystack`` (a packed haystack file), runs whose haystacks differ only in the git tree
    id are one benchmark once :func:`check_prompts` finds every cell's prompt the same.

    Raises ValueError when two runs are another benchmark (beyond seed and jitter) or when two
    runs measured the same cell of the same seed (a shard given twice)."""
    if not folders:
        raise ValueError("no reports given")
    runs = [(Path(f), *read_run(Path(f))) for f in folders]
    checked = check_prompts(runs, haystack, lengths) if haystack else None
    same = _without_tree if haystack else (lambda meta: meta)
    first_dir, _, first = runs[0]
    seen: dict[tuple, Path] = {}
    results: dict[tuple, bool] = {}
    for folder, cells, meta in runs:
        diff = [d for d in benchmark_differs(same(first), same(meta)) if d not in ("seed", "jitter")]
        if diff:
            raise ValueError(f"{folder}: another benchmark than {first_dir} (differs in {', '.join(diff)})")
        run_id = (meta.get("seed"), meta.get("jitter", 0))
        for c in cells:
            if c.correct is None or (lengths and c.length not in lengths):
                continue
            key = (*run_id, c.method, c.keys, c.length, c.depth)
            if key in seen:
                raise ValueError(f"{folder}: cell {c.method} keys={c.keys} length={c.length} "
                                 f"depth={c.depth} of seed {run_id[0]} is also in {seen[key]}")
            seen[key] = folder
            results[key] = bool(c.correct)
    if not results:
        raise ValueError("no measured cell" + (" at the lengths asked" if lengths else ""))
    methods = sorted({k[2] for k in results})
    accuracy = []
    for m in methods:
        for length in sorted({k[4] for k in results if k[2] == m}):
            got = [v for k, v in results.items() if k[2] == m and k[4] == length]
            lo, hi = clopper_pearson(sum(got), len(got))
            accuracy.append({"method": m, "length": length, "right": sum(got), "run": len(got),
                             "rate": sum(got) / len(got), "ci95": [lo, hi],
                             "seeds": sorted({k[0] for k in results if k[2] == m and k[4] == length})})
    pairs = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            shared = [k for k in results if k[2] == a and (*k[:2], b, *k[3:]) in results]
            a_only = sum(results[k] and not results[(*k[:2], b, *k[3:])] for k in shared)
            b_only = sum(not results[k] and results[(*k[:2], b, *k[3:])] for k in shared)
            pairs.append({"a": a, "b": b, "shared": len(shared), "a_only": a_only, "b_only": b_only,
                          "sign_test_p": sign_test(a_only, b_only)})
    return {"reports": [str(f) for f in folders], "accuracy": accuracy, "pairs": pairs,
            "prompts_checked": checked}


def _length_name(n: int) -> str:
    return f"{n // 2**20}M" if n % 2**20 == 0 else f"{n // 1024}K" if n % 1024 == 0 else str(n)


def markdown(result: dict) -> str:
    lines = ["| method | length | right / run | accuracy | 95% interval | seeds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in result["accuracy"]:
        lo, hi = r["ci95"]
        lines.append(f"| {r['method']} | {_length_name(r['length'])} | {r['right']} / {r['run']} | "
                     f"{r['rate']:.1%} | {lo:.1%}-{hi:.1%} | {', '.join(map(str, r['seeds']))} |")
    if result.get("prompts_checked") is not None:
        lines += ["", f"Prompts rebuilt from the haystack and found the same: {result['prompts_checked']} cells."]
    if result["pairs"]:
        lines += ["", "| a | b | cells both ran | only a right | only b right | sign test p |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for p in result["pairs"]:
            lines.append(f"| {p['a']} | {p['b']} | {p['shared']} | {p['a_only']} | {p['b_only']} | "
                         f"{p['sign_test_p']:.3g} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog or "python -m ssa_code.bench.needle_pool",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("reports", nargs="+", type=Path, metavar="DIR",
                    help="folders holding a needle.json (a run or a merged report), one per seed")
    ap.add_argument("--lengths", help="only these lengths, e.g. 1m or 256k,1m (default: every one)")
    ap.add_argument("--haystack", type=Path, metavar="FILE",
                    help="pool reports whose haystacks differ only in the git tree id, after rebuilding "
                         "every cell's prompt from this packed haystack and checking it")
    args = ap.parse_args(argv)
    try:
        lengths = parse_lengths(args.lengths) if args.lengths else None
        result = pool(args.reports, lengths, args.haystack)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
