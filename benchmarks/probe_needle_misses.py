"""Are the 1M-token needle misses about the values, the model's rounding or the spot? CPU checks.

1. ``values``: each value (the misses' and, as controls, the hits') planted as
   ``SECRET_TOKEN = "<value>"`` in short prompts of the same haystack (within the model's trained
   range) at several depths, answered greedily by plain dense attention in float32. A value the
   model cannot copy even here is a model limit, not a long-context one.
2. ``dtypes``: one stretch of the haystack through the model in float32, float16 and bfloat16:
   how often the next-token argmax agrees with float32's, the largest logit error, and the
   largest activation in float32 (float16's range ends at 65504).
3. ``key sets`` (``--key-cells SEED:LENGTH:KEYS:DEPTH_INDEX,...``, multi-key cells of the
   benchmark): each cell's own needles (keys and values, the asked one asked) planted in short
   prompts at ``--depths`` x ``--lengths``, answered densely. Wrong here too: the model cannot
   tell those keys apart even in its trained range, and the 1M miss is the model's, not the
   method's; the answers show which needle's value it gave.
4. ``spot`` (``--spot SEED:LENGTH:KEYS:DEPTH_INDEX:DEPTHS``, a cell of the benchmark): the
   missed needle's own surroundings in that cell's prompt (``--spot-windows`` BEFORE+AFTER
   tokens around the planted line, then the prompt's last TAIL tokens before the cue), short
   enough for the trained range, answered densely for the ``--misses`` and ``--controls``
   values. Right here but wrong in the long prompt: the long context, not the spot, loses it.

Usage (repository root; the haystack file as in BENCHMARKS.md)::

    .venv/bin/python benchmarks/probe_needle_misses.py --misses fxr94rdz,jti0f02i,jzrjv9om \\
        --controls t7itek5l,vuvnyan7,n59yn019,h5bo56pn,pr4gp0sr,2as2ujab,vii6ckxb,qsw7mnte --out OUT.json
    .venv/bin/python benchmarks/probe_needle_misses.py --spot 1:1048576:1:15:20 --misses 2as2ujab,bunug98q \
        --controls qw7b3pdk,hx4py8gp,an0rlyke,i2iiaann,kksum8nl,mytbx0kj --dtype-tokens 0 --out OUT.json
    .venv/bin/python benchmarks/probe_needle_misses.py --key-cells 3:1048576:4:2,3:1048576:4:7 \
        --dtype-tokens 0 --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch


def greedy_answer(model, tokenizer, ids, value: str) -> str:
    """The greedy continuation of ``ids`` (a 1-d int array), one token longer than ``value``."""
    from ssa_code.bench.needle import encode

    x = torch.from_numpy(ids)[None]
    with torch.no_grad():
        gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                             max_new_tokens=len(encode(tokenizer, value)) + 1)
    return tokenizer.decode(gen[0, x.shape[1]:])


def check_values(model, tokenizer, hay, values: list[str], depths: list[float], lengths: list[int]) -> dict:
    """Right answers per value over ``depths x lengths`` prompts (dense, greedy)."""
    from ssa_code.bench.needle import build_prompt
    from ssa_code.bench.synthetic import LineBoundaries, Needle

    lines = LineBoundaries(tokenizer)
    out = {}
    for value in values:
        right = 0
        for depth in depths:
            for length in lengths:
                rng = random.Random(f"probe:{value}:{depth}:{length}")
                p = build_prompt(hay, lines, tokenizer, length, depth, [Needle("SECRET_TOKEN", value, "str")], 0, rng)
                right += greedy_answer(model, tokenizer, p.ids, value).startswith(value)
        out[value] = {"right": right, "prompts": len(depths) * len(lengths)}
        print(f"{value}: {right} of {len(depths) * len(lengths)}", flush=True)
    return out


def check_spot(model, tokenizer, hay, cell: str, values: list[str], windows: list[tuple[int, int, int]],
               jitter: int = 0) -> dict:
    """Right answers per ``(before, after, tail)`` window around the asked needle of ``cell``
    (``jitter``: the run's ``--jitter``, without which a jittered cell's needle is elsewhere)."""
    import numpy as np

    from ssa_code.bench.needle import cell_prompt, depth_grid, encode
    from ssa_code.bench.synthetic import LineBoundaries, Needle

    seed, length, keys, di, n_depths = (int(x) for x in cell.split(":"))
    depths = depth_grid(n_depths)
    depth = depths[di]
    p = cell_prompt(hay, LineBoundaries(tokenizer), tokenizer, seed, length, keys, di, depths, jitter)
    # The prompt without the asked needle's line and the cue; pos: where that line was planted.
    base = np.concatenate([p.ids[:p.needle_pos], p.ids[p.needle_pos + p.needle_len:len(p.ids) - p.cue_len]])
    pos = p.needle_pos
    out = {"cell": cell, "depth": depth, "jitter": jitter, "needle_pos": int(pos), "windows": {}}
    for before, after, tail in windows:
        right = 0
        for value in values:
            needle = Needle("SECRET_TOKEN", value, "str")
            line, cue = encode(tokenizer, needle.line), encode(tokenizer, needle.cue)
            ids = np.concatenate([base[pos - before:pos], line, base[pos:pos + after],
                                  base[len(base) - tail:] if tail else base[:0], cue]).astype(np.int64)
            right += greedy_answer(model, tokenizer, ids, value).startswith(value)
        out["windows"][f"{before}+{after}+{tail}"] = {"right": right, "prompts": len(values)}
        print(f"spot {cell} window {before}+{after}+{tail}: {right} of {len(values)}", flush=True)
    return out


def check_key_cells(model, tokenizer, hay, cells: list[str], depths: list[float],
                    lengths: list[int]) -> dict:
    """Per benchmark cell ``SEED:LENGTH:KEYS:DEPTH_INDEX``: its needles (as the benchmark draws
    them) in ``depths x lengths`` short prompts, answered densely; each answer counts as
    ``right`` (the asked value), ``other_needle`` (another needle's value) or ``no_needle``."""
    from ssa_code.bench.needle import build_prompt, cell_needles
    from ssa_code.bench.synthetic import LineBoundaries

    lines = LineBoundaries(tokenizer)
    out = {}
    for cell in cells:
        needles, asked, _ = cell_needles(*(int(x) for x in cell.split(":")))
        want = needles[asked].value
        tally = {"right": 0, "other_needle": 0, "no_needle": 0}
        answers = []
        for depth in depths:
            for n in lengths:
                rng = random.Random(f"probe-keys:{cell}:{depth}:{n}")
                p = build_prompt(hay, lines, tokenizer, n, depth, needles, asked, rng)
                text = greedy_answer(model, tokenizer, p.ids, want)
                kind = ("right" if text.startswith(want) else "other_needle"
                        if any(text.startswith(x.value) for x in needles) else "no_needle")
                tally[kind] += 1
                answers.append(text.split('"')[0])
        out[cell] = {"keys": [x.key for x in needles], "asked": needles[asked].key, "value": want,
                     **tally, "prompts": len(depths) * len(lengths), "answers": answers}
        print(f"key cell {cell} ({needles[asked].key} of {', '.join(x.key for x in needles)}): "
              f"{tally}", flush=True)
    return out


def check_dtypes(model_dir: Path, hay, start: int, length: int) -> dict:
    """Argmax agreement and logit error of float16 and bfloat16 against float32 on one stretch."""
    from transformers import AutoModelForCausalLM

    ids = torch.from_numpy(hay.token_ids[start:start + length].copy()).long()[None]
    peak = 0.0

    def hook(_module, _inputs, output):
        nonlocal peak
        t = output[0] if isinstance(output, tuple) else output
        if torch.is_tensor(t):
            peak = max(peak, float(t.abs().max()))

    logits = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        m = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
        if dtype == torch.float32:
            for layer in m.model.layers:
                layer.register_forward_hook(hook)
                layer.mlp.register_forward_hook(hook)
        with torch.no_grad():
            logits[dtype] = m(ids).logits.float()[0]
    ref = logits[torch.float32]
    out = {"tokens": length, "start": start, "float32_peak_activation": peak}
    for dtype in (torch.float16, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        out[name] = {"argmax_agrees": float((logits[dtype].argmax(-1) == ref.argmax(-1)).float().mean()),
                     "max_logit_error": float((logits[dtype] - ref).abs().max()),
                     "finite": bool(torch.isfinite(logits[dtype]).all())}
        print(f"{name}: {out[name]}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    from ssa_code.models import TINY_MODEL_DIR

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--misses", default="", help="comma-separated values the long run missed")
    ap.add_argument("--controls", default="", help="comma-separated values the long run answered")
    ap.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    ap.add_argument("--lengths", default="2048,3584", help="prompt tokens (within the trained range)")
    ap.add_argument("--dtype-tokens", type=int, default=4096, help="haystack stretch for the dtype check (0: skip)")
    ap.add_argument("--dtype-start", type=int, default=50000)
    ap.add_argument("--spot", metavar="SEED:LENGTH:KEYS:DEPTH_INDEX:DEPTHS",
                    help="check the values at this benchmark cell's needle spot instead of at --depths")
    ap.add_argument("--key-cells", default="", metavar="SEED:LENGTH:KEYS:DEPTH_INDEX,...",
                    help="check these multi-key benchmark cells' own needles in short prompts")
    ap.add_argument("--jitter", type=int, default=0, metavar="TOKENS",
                    help="the benchmark run's --jitter, for --spot (seeds 6 on ran with 16384)")
    ap.add_argument("--spot-windows", default="1000:1000:0,1500:500:1500,600:200:1500",
                    help="BEFORE:AFTER:TAIL token windows of the spot check")
    ap.add_argument("--tokens", type=Path, default=Path("bench_data/haystack_stdlib.npz"))
    ap.add_argument("--model", type=Path, default=TINY_MODEL_DIR)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ssa_code.atomic import write_text
    from ssa_code.bench.needle import Haystack

    if not args.tokens.is_file():
        print(f"error: no haystack at {args.tokens} (see BENCHMARKS.md, needle)", file=sys.stderr)
        return 2
    try:
        depths = [float(d) for d in args.depths.split(",") if d]
        lengths = [int(n) for n in args.lengths.split(",") if n]
        windows = [tuple(int(x) for x in w.split(":")) for w in args.spot_windows.split(",") if w]
        if any(len(w) != 3 or min(w) < 0 for w in windows):
            raise ValueError(f"--spot-windows must be BEFORE:AFTER:TAIL token counts, got {args.spot_windows!r}")
        if args.spot and (len(args.spot.split(":")) != 5 or not all(x.isdigit() for x in args.spot.split(":"))):
            raise ValueError(f"--spot must be SEED:LENGTH:KEYS:DEPTH_INDEX:DEPTHS, got {args.spot!r}")
        key_cells = [c for c in args.key_cells.split(",") if c]
        for c in key_cells:
            parts = c.split(":")
            if len(parts) != 4 or not all(x.isdigit() for x in parts) or int(parts[2]) < 2:
                raise ValueError(f"--key-cells takes SEED:LENGTH:KEYS:DEPTH_INDEX with KEYS >= 2, got {c!r}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    hay = Haystack.load(args.tokens)
    tokenizer = AutoTokenizer.from_pretrained(str(args.model), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32, local_files_only=True)
    t0 = time.time()
    report = {"model": str(args.model), "depths": depths, "lengths": lengths, "spot": args.spot,
              "torch": torch.__version__}
    for kind in ("misses", "controls"):
        values = [v for v in getattr(args, kind).split(",") if v]
        if args.spot:
            report[kind] = check_spot(model, tokenizer, hay, args.spot, values, windows, args.jitter)
        else:
            report[kind] = check_values(model, tokenizer, hay, values, depths, lengths)
    if key_cells:
        report["key_cells"] = check_key_cells(model, tokenizer, hay, key_cells, depths, lengths)
    if args.dtype_tokens:
        report["dtypes"] = check_dtypes(args.model, hay, args.dtype_start, args.dtype_tokens)
    report["seconds"] = round(time.time() - t0, 1)
    if args.out:
        write_text(args.out, json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
