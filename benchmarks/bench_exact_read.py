"""Time the question's exact choice at 7B sizes: the store read, against plain copies.

``SSALayer._exact_select`` reads every stored key of a layer once per question (1 GiB per layer
at 1M tokens for Qwen2.5-7B: 4 KV heads x 128 dims in bf16) and scores it on the GPU. This
script times, per layer:

- ``pageable``: each run of blocks sent with ``.to(device)`` straight from the store's pageable
  pages (the path before ``store.to_device_runs``);
- ``pinned feed``: ``store.to_device_runs`` (two page-locked buffers, the host copy of the next
  run overlapping the transfer and scoring of this one);
- ``on device``: the scoring alone, keys already on the GPU (the floor);
- ``on device, keys rotated``: the same with every key rotated to its effective position first,
  as ``SSALayer._exact_select`` did before it rotated the queries back instead (far keys all sit
  at one effective position at the question: ``positions.py``);
- ``on device, queries rotated``: the same keys, un-rotated, scored with the queries rotated
  back once (``SSALayer._exact_scores`` now);
- ``on device, queries rotated, kernel``: the same through the Triton block log-sum-exp
  (``ssa_code.kernels.block_lse``: no logits in memory; what SSA uses on CUDA);
- ``on device, queries rotated, kernel, one run``: the same with the whole layer in one launch
  instead of runs of ``--piece-blocks`` (sized for the PyTorch path's logits);
- ``pinned feed, kernel``: ``pinned feed`` scored through the kernel (the copy should then bound it);

beside two plain copies of the same bytes in the same run: one 1-run pageable ``.to(device)``
and one from page-locked memory (the link's speed).

Usage (CUDA machine): ``python benchmarks/bench_exact_read.py [--tokens 1048576] [--piece-blocks N]
[--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from ssa_code.atomic import write_text
from ssa_code.attention.layer_state import SSALayer
from ssa_code.attention.positions import rotate
from ssa_code.attention.scoring import exact_block_scores
from ssa_code.attention.store import HostStore, to_device_runs


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1 << 20, help="stored tokens per layer")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="folder for bench_exact_read.json")
    ap.add_argument("--piece-blocks", type=int, default=0,
                    help="blocks per run of keys (default: SSALayer's, sized for the PyTorch logits)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA device", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    h, hq, d, b, m = 4, 28, 128, 64, 64  # Qwen2.5-7B heads; 64 observed question queries
    n_blocks = args.tokens // b
    store = HostStore(h, b, d, torch.bfloat16)
    step = 2048
    for first in range(0, n_blocks, step):
        n = min(step, n_blocks - first)
        k = torch.randn(h, n, b, d, device=dev, dtype=torch.bfloat16)
        store.append(k, k)
    next(store.key_runs(1))  # waits for the store's writer thread to finish the appends
    q = torch.randn(hq, m, d, device=dev, dtype=torch.bfloat16)
    piece = args.piece_blocks or max(1, SSALayer.EXACT_LOGITS // (hq * m * b))
    scale = d ** -0.5
    key_bytes = n_blocks * h * b * d * 2

    def flat(k):  # a run as the store keeps it, [n, H, B, D], as exact_block_scores takes it
        return k.transpose(0, 1).reshape(h, -1, d)

    def score(runs, prefer="torch"):
        return exact_block_scores(q, ((f, flat(k)) for f, k in runs), n_blocks, b, scale, prefer=prefer)

    on_device = [(f, k.to(dev)) for f, k in store.key_runs(piece)]
    # Qwen2.5-7B's RoPE (theta 1e6, 128 dims); far keys shown at one position near the end.
    inv = 1.0 / (1e6 ** (torch.arange(0, d, 2, dtype=torch.float64, device=dev) / d)).float()
    floor = args.tokens - 2048

    def keys_rotated():
        runs = ((f, flat(k)) for f, k in on_device)
        return exact_block_scores(q, ((f, rotate(k, torch.full(k.shape[1:2], floor, device=dev), inv))
                                      for f, k in runs), n_blocks, b, scale)

    def queries_rotated(prefer="torch", runs=None):
        q_far = rotate(q.float(), torch.tensor(-floor, device=dev), inv)
        return exact_block_scores(q, ((f, flat(k), q_far) for f, k in runs or on_device), n_blocks, b, scale,
                                  prefer=prefer)

    one_run = [(0, torch.cat([k for _, k in on_device]))]  # the whole layer in one launch

    big_pageable = torch.empty(key_bytes // 2, dtype=torch.bfloat16).normal_()
    big_pinned = torch.empty(key_bytes // 2, dtype=torch.bfloat16, pin_memory=True).copy_(big_pageable)
    cases = {
        "pageable": lambda: score((f, k.to(dev)) for f, k in store.key_runs(piece)),
        "pinned feed": lambda: score(to_device_runs(store.key_runs(piece), dev)),
        "on device": lambda: score(iter(on_device)),
        "on device, keys rotated": keys_rotated,
        "on device, queries rotated": queries_rotated,
        "on device, queries rotated, kernel": lambda: queries_rotated("triton"),
        "on device, queries rotated, kernel, one run": lambda: queries_rotated("triton", one_run),
        "pinned feed, kernel": lambda: score(to_device_runs(store.key_runs(piece), dev), "triton"),
        "copy, pageable, one run": lambda: big_pageable.to(dev),
        "copy, page-locked, one run": lambda: big_pinned.to(dev, non_blocking=True),
    }
    ref = score(iter(on_device))
    got = score(to_device_runs(store.key_runs(piece), dev))
    assert torch.allclose(ref, got, rtol=0, atol=1e-5), "the pinned feed changed the scores"
    # bf16 keys rotated then rounded (before) against exact keys with fp32 queries (now).
    err = (keys_rotated() - queries_rotated()).abs().max().item()
    assert err < 0.05, f"rotating the queries back changed the scores by {err:.3f}"
    err = (queries_rotated("triton") - queries_rotated()).abs().max().item()
    assert err < 0.05, f"the block log-sum-exp kernel changed the scores by {err:.3f}"
    err = (queries_rotated("triton", one_run) - queries_rotated("triton")).abs().max().item()
    assert err < 1e-4, f"scoring the layer in one run changed the kernel's scores by {err:.2e}"
    results = {}
    for name, fn in cases.items():
        fn()  # warm up (kernels, the caching host allocator's pinned blocks)
        sec = _timed(fn, args.repeats)
        results[name] = {"seconds": sec, "GB_per_s": key_bytes / sec / 1e9}
        print(f"{name:44s} {sec * 1e3:8.1f} ms  {key_bytes / sec / 1e9:6.1f} GB/s of keys", flush=True)
    meta = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "tokens": args.tokens,
            "key_bytes": key_bytes, "piece_blocks": piece, "repeats": args.repeats}
    print(json.dumps(meta))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text(args.out / "bench_exact_read.json", json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
