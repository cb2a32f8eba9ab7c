"""Where SSA prefill and decode spend their time on the GPU (a profiling aid, not a benchmark).

Qwen2.5-7B widths with fewer layers; prefills past the window so every tier is busy, then
times prefill chunks and Decoder steps (by kind: graph, eager) as they run, then each phase of
the SSA step with device synchronisation, and prints torch.profiler's top kernels and CPU ops
of two prefill chunks.   python benchmarks/profile_ssa.py [--layers 4] [--tokens 65536]
"""

from __future__ import annotations

import argparse
import collections
import time
import traceback
import warnings
from pathlib import Path

import torch

from ssa_code import SSACache, SSAConfig, patch
from ssa_code.attention import consolidation, layer_state, staging, store
from ssa_code.bench.long_context import build_model, qwen25_7b_config
from ssa_code.engine.decode import Decoder
from ssa_code.engine.prefill import forward_chunk

PHASES = (
    (layer_state.SSALayer, ("_rebase", "_stage_chunk", "_observe", "_commit", "_evict", "_update_heavy",
                            "_write_summaries", "_rotate_index", "_remask_staging")),
    (staging.Stager, ("prepare", "place", "install")),
    (store.HostStore, ("append", "read_into")),
    (consolidation.Consolidated, ("add",)),
)


def _timed(owner, name: str, label: str, totals: dict) -> None:
    """Replace ``owner.name`` by a wrapper adding its synchronised wall time to ``totals[label]``."""
    fn = getattr(owner, name)

    def timed(*a, **k):
        torch.cuda.synchronize()
        t = time.perf_counter()
        r = fn(*a, **k)
        torch.cuda.synchronize()
        totals[label] += time.perf_counter() - t
        return r

    setattr(owner, name, timed)


def instrument(totals: dict) -> None:
    """Time each phase with a device synchronisation on both sides (nested phases count in both)."""
    for owner, names in PHASES:
        for name in names:
            _timed(owner, name, f"{owner.__name__}.{name}", totals)
    import ssa_code.kernels as K

    for name in ("tier_attention", "tier_attention_mass", "score_blocks"):
        _timed(K, name, name, totals)


def sync_sites(fn) -> collections.Counter:
    """Run ``fn()`` with PyTorch's synchronisation warnings on; count each synchronising call
    by its innermost ssa_code frames (a synchronisation drains the GPU's queue of work)."""
    sites: collections.Counter = collections.Counter()

    def show(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if "ssa_code" in f.filename or "kernels" in f.filename]
        sites[" <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-3:]))] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode(1)
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sites


def decode_steps(model, cache, n: int) -> dict[str, list[float]]:
    """Wall time of ``n`` decode tokens through the Decoder (CUDA graphs), grouped by step kind
    (graph or eager, ``-select`` for selection steps); each step is synchronised, so a step's
    host work (staging's prepare) counts in full."""
    decoder = Decoder(model, cache)
    times: dict[str, list[float]] = collections.defaultdict(list)
    token = 11
    for _ in range(n):
        before = dict(decoder.steps)
        selects = cache.layers[0].selects_next()
        torch.cuda.synchronize()
        t = time.perf_counter()
        logits = decoder(token)
        token = int(logits.argmax()) % 1000
        kind = next(k for k in decoder.steps if decoder.steps[k] != before[k])
        times[kind + ("-select" if selects else "")].append(time.perf_counter() - t)
    return times


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
        t = time.perf_counter()
        for _ in range(args.profile_chunks):
            forward_chunk(model, cache, torch.randint(0, 1000, (1, args.chunk), device="cuda"), pos, logits=False)
            pos += args.chunk
        torch.cuda.synchronize()
        print(f"prefill (no instrumentation): {(time.perf_counter() - t) / args.profile_chunks * 1e3:.1f} ms "
              f"per chunk of {args.chunk}")
        chunk = torch.randint(0, 1000, (1, args.chunk), device="cuda")
        sites = sync_sites(lambda: forward_chunk(model, cache, chunk, pos, logits=False))
        pos += args.chunk
        print(f"synchronising calls in one prefill chunk: {sum(sites.values())} "
              f"({sum(sites.values()) / args.layers:.1f} a layer)")
        for site, n in sites.most_common(12):
            print(f"  {n:5d}  {site}")
        times = decode_steps(model, cache, args.decode)
        pos = cache.get_seq_length()
        every = [x for v in times.values() for x in v]
        print(f"decode (Decoder, CUDA graphs): mean {sum(every) / len(every) * 1e3:.2f} ms over {len(every)} tokens")
        for kind, v in times.items():
            v = sorted(v)
            print(f"  {kind:8s} {len(v):4d} steps  median {v[len(v) // 2] * 1e3:8.2f} ms  max {v[-1] * 1e3:8.2f} ms")
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
            print(f"  {k:28s} {v / args.profile_chunks * 1e3:8.2f} ms/chunk")
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
            for _ in range(2):
                forward_chunk(model, cache, torch.randint(0, 1000, (1, args.chunk), device="cuda"), pos, logits=False)
                pos += args.chunk
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
        # Where the device time of the small operations comes from (ssa_code frames only).
        by_line: dict = collections.defaultdict(float)
        for ev in prof.events():
            if ev.device_type == torch.autograd.DeviceType.CPU and ev.self_device_time_total > 0:
                frames = [f for f in (ev.stack or []) if "ssa_code" in f or "kernels/" in f]
                by_line[frames[0] if frames else ev.name] += ev.self_device_time_total
        print("device time by first ssa_code frame (us per chunk):")
        for line, us in sorted(by_line.items(), key=lambda kv: -kv[1])[:40]:
            print(f"  {us / 2:10.0f}  {line}")


if __name__ == "__main__":
    main()
