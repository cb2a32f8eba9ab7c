"""Where SSA prefill and decode spend their time on the GPU (a profiling aid, not a benchmark).

Qwen2.5-7B widths with fewer layers; prefills past the window so every tier is busy, then
times each phase of SSALayer.attend with device synchronisation, and prints torch.profiler's
top kernels and CPU ops.   python benchmarks/profile_ssa.py [--layers 4] [--tokens 65536]
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

from ssa_code import SSACache, SSAConfig, patch
from ssa_code.attention import layer_state
from ssa_code.bench.long_context import build_model, qwen25_7b_config
from ssa_code.engine.prefill import forward_chunk

PHASES = ("_rebase", "_stage", "_place", "_commit", "_evict", "_update_heavy", "_write_summaries")


def instrument(totals: dict) -> None:
    for name in PHASES:
        fn = getattr(layer_state.SSALayer, name)

        def timed(self, *a, __fn=fn, __name=name, **k):
            torch.cuda.synchronize()
            t = time.perf_counter()
            r = __fn(self, *a, **k)
            torch.cuda.synchronize()
            totals[__name] += time.perf_counter() - t
            return r

        setattr(layer_state.SSALayer, name, timed)
    import ssa_code.kernels as K

    for name in ("tier_attention", "tier_attention_mass", "score_blocks"):
        fn = getattr(K, name)

        def timed_k(*a, __fn=fn, __name=name, **k):
            torch.cuda.synchronize()
            t = time.perf_counter()
            r = __fn(*a, **k)
            torch.cuda.synchronize()
            totals[__name] += time.perf_counter() - t
            return r

        setattr(K, name, timed_k)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--profile-chunks", type=int, default=4)
    ap.add_argument("--decode", type=int, default=32)
    args = ap.parse_args()
    cfg = qwen25_7b_config(args.layers)
    model = build_model(cfg, "cuda")
    scfg = SSAConfig(chunk_size=args.chunk)
    patch(model, scfg)
    cache = SSACache(model.config, scfg)
    pos = 0
    with torch.no_grad():
        t = time.perf_counter()
        while pos < args.tokens:
            forward_chunk(model, cache, torch.randint(0, 1000, (1, args.chunk), device="cuda"), pos, logits=False)
            pos += args.chunk
        torch.cuda.synchronize()
        print(f"warm-up prefill {args.tokens} tokens, {args.layers} layers: {time.perf_counter() - t:.2f} s")
        # Compile the decode kernels before timing them.
        warm = torch.randint(0, 1000, (1, 1), device="cuda")
        for _ in range(16):
            forward_chunk(model, cache, warm, pos)
            pos += 1
        totals: dict = collections.defaultdict(float)
        instrument(totals)
        t = time.perf_counter()
        for _ in range(args.profile_chunks):
            forward_chunk(model, cache, torch.randint(0, 1000, (1, args.chunk), device="cuda"), pos, logits=False)
            pos += args.chunk
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
        print(f"instrumented prefill: {wall / args.profile_chunks * 1e3:.1f} ms per chunk of {args.chunk}")
        for k, v in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"  {k:22s} {v / args.profile_chunks * 1e3:8.2f} ms/chunk")
        totals.clear()
        tok = torch.randint(0, 1000, (1, 1), device="cuda")
        t = time.perf_counter()
        for _ in range(args.decode):
            forward_chunk(model, cache, tok, pos)
            pos += 1
        torch.cuda.synchronize()
        print(f"instrumented decode: {(time.perf_counter() - t) / args.decode * 1e3:.2f} ms per token")
        for k, v in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"  {k:22s} {v / args.decode * 1e3:8.3f} ms/token")
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                forward_chunk(model, cache, torch.randint(0, 1000, (1, args.chunk), device="cuda"), pos, logits=False)
                pos += args.chunk
            for _ in range(8):
                forward_chunk(model, cache, tok, pos)
                pos += 1
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
