"""How fast ``scripts/train_tiny.py`` builds its training rows on the CPU, without a GPU.

The training loop builds every micro-batch on the host (``Batcher.batch``: windows of the packed
stream, half of them with planted needles) while the GPU runs the previous one. This script
reads and packs a corpus exactly as training does, then times ``Batcher.batch`` alone, so the
result can be set beside the tokens/s a training run logs: a batcher slower than the GPU would
be the limit of the run.

Usage (repository root)::

    .venv/bin/python benchmarks/bench_train_batches.py [--seconds 15] [--data-tokens 20000000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_train_script():
    """``scripts/train_tiny.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("train_tiny", REPO / "scripts" / "train_tiny.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="how long to time batches")
    ap.add_argument("--data-tokens", type=int, default=20_000_000, help="corpus size to pack first")
    ap.add_argument("--data-root", default="", help="source folder (default: site-packages)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.data_tokens <= 0:
        print("error: --seconds and --data-tokens must be positive", file=sys.stderr)
        return 2

    tt = load_train_script()
    from transformers import AutoTokenizer

    from ssa_code.bench.synthetic import LineBoundaries

    cfg = tt.TrainConfig(minutes=1.0, data_seconds=60.0, data_tokens=args.data_tokens, device="cpu",
                         data_root=args.data_root, seed=args.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(tt.TOKENIZER_DIR), local_files_only=True)
    train, _, stats = tt.build_corpora(cfg, tt.TOKENIZER_DIR / "tokenizer.json", tt.Log())
    batcher = tt.Batcher(train, tokenizer, LineBoundaries(tokenizer), cfg, seed=cfg.seed + 11)
    batcher.batch(cfg.micro_batch, cfg.seq_len)  # first call fills caches
    n = ret = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        *_, n_ret = batcher.batch(cfg.micro_batch, cfg.seq_len)
        n += 1
        ret += n_ret
    dt = time.perf_counter() - t0
    rows = n * cfg.micro_batch
    result = {
        "micro_batch": cfg.micro_batch, "seq_len": cfg.seq_len,
        "retrieval_fraction": cfg.retrieval_fraction, "corpus_tokens": stats["train"]["tokens"],
        "batches": n, "seconds": round(dt, 2), "rows_per_second": round(rows / dt, 1),
        "retrieval_rows": ret, "tokens_per_second": round(rows * cfg.seq_len / dt),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
