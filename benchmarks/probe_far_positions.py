"""Does the distance far keys are shown at change how well the model copies a needle? (CPU)

SSA (like InfLLM) shows every far-tier key at one distance from the current chunk:
``eff = max(p, ref - far_distance)`` (``ssa_code.attention.positions``). This probe isolates
that choice from everything else SSA does: a needle prompt that fits the model's trained range
is prefilled densely with true positions, then the cached keys of every token older than
``T - FD`` are re-rotated to an effective position, and the cue is answered greedily with
dense attention over the whole cache. Variants:

- ``true``: no re-rotation (plain dense attention);
- ``collapse@FD``: ``eff = max(p, T - FD)``, what SSA does with ``far_distance = FD``;
- ``block@FD``: older keys at ``T - FD - (B - 1 - p % B)``: one distance per 64-token block
  position, so each block keeps its own order (blocks overlap each other).

Usage (repository root; the haystack file as in BENCHMARKS.md)::

    .venv/bin/python benchmarks/probe_far_positions.py --examples 80 \\
        --variants true,collapse@2048,block@2048 --out OUT.json
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

BLOCK = 64


def effective(T: int, variant: str) -> torch.Tensor:
    """Effective positions ``[T]`` of a cache of ``T`` tokens for one variant name."""
    p = torch.arange(T)
    if variant == "true":
        return p
    kind, _, fd = variant.partition("@")
    if kind not in ("collapse", "block") or not fd.isdigit() or int(fd) < 1:
        raise ValueError(f"variant must be true, collapse@FD or block@FD, got {variant!r}")
    floor = T - int(fd)
    if floor <= 0:
        return p
    if kind == "collapse":
        return p.clamp(min=floor)
    return torch.where(p < floor, floor - (BLOCK - 1 - p % BLOCK), p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=80, help="prompts (alternately 1 and 4 keys)")
    ap.add_argument("--length", type=int, default=4000, help="prompt tokens (within the trained range)")
    ap.add_argument("--depth-min", type=float, default=0.05)
    ap.add_argument("--depth-max", type=float, default=0.45)
    ap.add_argument("--variants", default="true,collapse@2048,block@2048")
    ap.add_argument("--tokens", type=Path, default=Path("bench_data/haystack_stdlib.npz"))
    ap.add_argument("--model", default=None, help="checkpoint folder (default: bundled tiny)")
    ap.add_argument("--out", type=Path, default=None, help="JSON with every answer")
    args = ap.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    from ssa_code.attention.positions import rope_parameters, rotate
    from ssa_code.bench.needle import Haystack, build_prompt, make_needles
    from ssa_code.bench.synthetic import LineBoundaries
    from ssa_code.models import TINY_MODEL_DIR

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        for v in variants:
            effective(8, v)
        if args.examples < 1 or not 0 <= args.depth_min <= args.depth_max <= 1:
            raise ValueError("--examples must be >= 1 and 0 <= --depth-min <= --depth-max <= 1")
        if not args.tokens.is_file():
            raise ValueError(f"{args.tokens}: no such haystack file (see BENCHMARKS.md to make it)")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model_dir = args.model or str(TINY_MODEL_DIR)
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True).eval()
    if args.length > model.config.max_position_embeddings:
        print(f"error: --length {args.length} exceeds the trained range", file=sys.stderr)
        return 2
    inv_freq, _ = rope_parameters(model.config)
    hay = Haystack.load(args.tokens)
    lines = LineBoundaries(tok)

    @torch.no_grad()
    def answer(cache, cue: list[int], T: int, n_new: int = 14) -> str:
        ids, pos, out = torch.tensor([cue]), T, []
        for _ in range(n_new):
            pid = torch.arange(pos, pos + ids.shape[1])[None]
            logits = model(input_ids=ids, past_key_values=cache, position_ids=pid, use_cache=True).logits
            pos += ids.shape[1]
            out.append(int(logits[0, -1].argmax()))
            ids = torch.tensor([[out[-1]]])
            if "\n" in tok.decode(out):
                break
        return tok.decode(out)

    rows: list[dict] = []
    t0 = time.time()
    half = max(1, args.examples // 2 - 1)
    for i in range(args.examples):
        rng = random.Random(f"pos:{i}")
        keys = 1 if i % 2 == 0 else 4
        depth = args.depth_min + (args.depth_max - args.depth_min) * min(1.0, (i // 2) / half)
        needles, asked = make_needles(rng, keys)
        prompt = build_prompt(hay, lines, tok, args.length, depth, needles, asked, rng)
        ids = prompt.ids.tolist()
        body, cue = ids[:-prompt.cue_len], ids[-prompt.cue_len:]
        T = len(body)
        with torch.no_grad():
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.tensor([body]), past_key_values=cache, use_cache=True)
        row = {"example": i, "keys": keys, "depth": round(depth, 3), "distance": T - prompt.needle_pos,
               "expected": prompt.asked.value}
        for v in variants:
            c = copy.deepcopy(cache)
            delta = effective(T, v) - torch.arange(T)
            if bool(delta.any()):
                for layer in c.layers:
                    layer.keys = rotate(layer.keys, delta, inv_freq)
            got = answer(c, cue, T)
            row[v] = {"correct": got.startswith(prompt.asked.value + '"'), "output": got}
        rows.append(row)
        print(f"{i:3d} keys={keys} distance={row['distance']:5d} "
              + " ".join(f"{v}={'OK' if row[v]['correct'] else 'no'}" for v in variants)
              + f"  {time.time() - t0:.0f}s", file=sys.stderr, flush=True)

    summary = {}
    for v in variants:
        acc = [r[v]["correct"] for r in rows]
        summary[v] = {"all": float(np.mean(acc)), "right": int(sum(acc)), "n": len(acc),
                      "keys1": float(np.mean([r[v]["correct"] for r in rows if r["keys"] == 1])),
                      "keys4": float(np.mean([r[v]["correct"] for r in rows if r["keys"] == 4] or [np.nan]))}
    print("| variant | right | accuracy | 1 key | 4 keys |\n| --- | --- | --- | --- | --- |")
    for v, s in summary.items():
        print(f"| {v} | {s['right']}/{s['n']} | {s['all']:.3f} | {s['keys1']:.3f} | {s['keys4']:.3f} |")
    if args.out:
        from ssa_code.atomic import write_text

        write_text(args.out, json.dumps({"argv": argv if argv is not None else sys.argv[1:],
                                         "summary": summary, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
