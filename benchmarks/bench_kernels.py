"""Benchmark of the SSA kernels against dense baselines, Qwen2.5-7B head layout (28 query heads,
4 KV heads, head_dim 128), bf16.

    python benchmarks/bench_kernels.py            # full run on a CUDA GPU (H100/H200, ~3 min)
    python benchmarks/bench_kernels.py --quick    # fewer sizes, shorter timing
    python benchmarks/bench_kernels.py --only decode  # decode checks and timings only (~1-2 min)
    python benchmarks/bench_kernels.py --cpu-smoke  # tiny sizes on CPU, Triton interpreter
    python benchmarks/bench_kernels.py --only decode --decode-grid  # split-kernel shapes, decode
    python benchmarks/bench_kernels.py --ncu-decode  # untimed decode calls, for ncu
                                      # (both: scripts/device_decode_profile.sh)

First every kernel is checked against its PyTorch reference on the device at real sizes
(PASS/FAIL with errors). Then:
- prefill: tier_attention over buffer ranges + the causal chunk vs SDPA's flash backend on the
  same number of dense keys (GQA expanded with repeat_interleave, as the anchors do); TFLOP/s
  per attended key, 4 * Hq * D * M * Nk / t with the causal part counted as half. Full run:
  chunks of 4K, 8K and 16K queries against 8K-64K attended keys (keys >= queries).
- decode (M = 1) at 8K-128K slots, the buffer laid out like the real six-tier buffer (sinks,
  pinned, heavy hitters, summaries, staging, window ring: six ranges in buffer order with the
  unfilled part of each tier between them), for both loops of the split-K kernel over the
  attended keys (`key_loop` "flat", used, and "ranges", the per-range loop it replaced) and
  the merges of the split partials (`combine` "separate": a second launch, the combine
  kernel; "separate_pdl": the combine kernel launched early with programmatic dependent launch):
  achieved bandwidth (K and V of all attended slots read
  once, plus the bias), timed in a CUDA graph (do_bench_cudagraph) two ways: warm (the same
  inputs every call: below the L2 size they stay in L2, as in the first measurements) and cold
  (the graph cycles through enough copies of the inputs to exceed 3x the L2 size, as a model's
  layers do). Judged against two copies timed the same way: the card's large-copy bandwidth
  (2 GiB) and a device-to-device copy moving the same number of bytes as the decode reads (half
  read, half written), so small sizes are compared with what the card does at that size; beside
  them the launch floor (the split kernel's grid launched empty, in the same graph form) and the
  decode again with only K, V and bias cold (q, ranges and the new key hot, as in a model's
  step). Then a sweep of the forced split count (cold), whose best values feed `plan_splits`, a
  sweep of the flat loop's tile configs (BLOCK_N, warps, stages; cold, planned splits), whose
  best values feed `split_config`, and the eager time (with Python dispatch).
- score_blocks: M queries against N = 16K index entries, TFLOP/s (2 * Hq * M * N * D / t).
Prints a markdown table last and writes JSON to $OUT/bench_kernels.json (OUT defaults to /tmp).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import time

HQ, HKV, D = 28, 4, 128
SECTIONS = ("prefill", "decode", "score", "mass")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and shorter timing")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny sizes on CPU under TRITON_INTERPRET=1 (checks the script runs)")
    ap.add_argument("--only", action="append", choices=SECTIONS, metavar="SECTION",
                    help=f"run only this section (repeatable; one of {', '.join(SECTIONS)}); "
                         "correctness checks run first (only the decode ones for --only decode)")
    ap.add_argument("--decode-slots", type=int, nargs="+", metavar="N",
                    help="attended slots of the decode cases (default 8K, 12416 (the default "
                         "SSAConfig's buffer), 16K, 32K, 64K, 128K; --quick: 8K, 128K)")
    ap.add_argument("--no-sweep", action="store_true",
                    help="decode: skip the forced split-count and config sweeps")
    ap.add_argument("--key-loop", action="append", choices=("flat", "ranges"), dest="key_loops",
                    help="decode: split-K key loop(s) to time (repeatable; default both)")
    ap.add_argument("--decode-grid", action="store_true",
                    help="decode: instead of the variant rows, time a grid of split-kernel shapes "
                         "(tile config x split count, DECODE_GRID), cold, against the default at "
                         "each size")
    ap.add_argument("--ncu-decode", action="store_true",
                    help="decode: no checks or timing; one eager call of the default and of three "
                         "grid shapes (NCU_GRID) at each --decode-slots size (default 8K, 16K), "
                         "for a profiler (ncu -k regex:ssa_attn) to capture")
    ap.add_argument("--combine", action="append", choices=("separate", "separate_pdl"),
                    dest="combines",
                    help="decode: merge(s) of the split partials to time (repeatable; default all)")
    args = ap.parse_args(argv)
    args.only = tuple(x for x in SECTIONS if x in (args.only or SECTIONS))
    args.key_loops = tuple(args.key_loops or ("flat", "ranges"))
    args.combines = tuple(args.combines or ("separate", "separate_pdl"))
    return args


ARGS = parse_args()
if ARGS.cpu_smoke:
    # Must precede the first import of triton (triton.jit reads it when decorating).
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["SSA_CODE_KERNELS"] = "triton"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ssa_code.kernels as K  # noqa: E402
from ssa_code.kernels import tier_attention_triton as TA  # noqa: E402
from ssa_code.kernels.score_blocks_ref import score_blocks_ref  # noqa: E402
from ssa_code.kernels.tier_attention_ref import (  # noqa: E402
    tier_attention_mass_ref,
    tier_attention_ref,
)

SMOKE = ARGS.cpu_smoke
DEV = "cpu" if SMOKE else "cuda"
DT = torch.bfloat16


def timeit(fn, graph=False, rep=None):
    """Median milliseconds. CUDA: triton do_bench (events, L2 flushed between calls), or
    do_bench_cudagraph for small launches; CPU smoke: median of a few wall-clock runs."""
    if SMOKE:
        fn()
        ts = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)
    fn()
    torch.cuda.synchronize()
    if graph:
        return triton.testing.do_bench_cudagraph(fn, rep=rep or (50 if ARGS.quick else 100),
                                                 return_mode="median")
    return triton.testing.do_bench(fn, warmup=25, rep=rep or (60 if ARGS.quick else 150),
                                   return_mode="median")


def sync():
    if not SMOKE:
        torch.cuda.synchronize()


# Tier capacities of the default SSAConfig (sinks, pinned, heavy, summaries, staging = top_k *
# block_size, ring = window + block_size): 12416 slots a layer.
TIERS = (("sinks", 64), ("pinned", 4096), ("heavy", 1024), ("summaries", 1024), ("staging", 2048),
         ("ring", 4160))
# Decode variants timed: (key loop, merge of the split partials).
VARIANTS = [(k, c) for k in ARGS.key_loops for c in ARGS.combines]


def tier_layout(n_slots, seed):
    """A decode step over a buffer laid out like the real one, scaled to n_slots attended keys:
    six ranges in buffer order (the static graph step's six spans). Sinks are full; pinned,
    heavy, summaries and staging are 90% full (their unfilled slots lie between the ranges);
    the ring takes the rest, its last eighth still empty (bias -inf, attended anyway, as in the
    graph step). Summaries carry log-n biases."""
    g = torch.Generator().manual_seed(seed)
    f = n_slots / sum(c for _, c in TIERS)
    spans, pos, used = [], 0, 0
    for name, c in TIERS[:-1]:
        region = c if name == "sinks" else max(2, round(c * f))
        n = region if name == "sinks" else round(region * 0.9)
        spans.append((pos, pos + n))
        pos += region
        used += n
    ring = n_slots - used
    assert ring > 0, (n_slots, spans)
    spans.append((pos, pos + ring))
    cap = pos + ring
    bias = torch.full((HKV, cap), float("-inf"))
    for s, e in spans:
        bias[:, s:e] = 0.0
    s, e = spans[3]
    bias[:, s:e] = torch.log(torch.randint(2, 256, (HKV, e - s), generator=g).float())
    bias[:, cap - ring // 8:] = float("-inf")
    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(DEV, DT)
    q = rnd(HQ, 1, D)
    k_buf, v_buf = rnd(HKV, cap, D), rnd(HKV, cap, D)
    k_new, v_new = rnd(HKV, 1, D), rnd(HKV, 1, D)
    r = torch.tensor(spans, dtype=torch.int32).to(DEV)
    return q, k_buf, v_buf, bias.to(DEV), r, k_new, v_new


def layout(n_buf, m, seed, masked=True):
    """A tier buffer with n_buf attended slots in 5 awkward ranges (sinks, pinned, heavy hitters,
    summaries with log-n bias, window) separated by unused slots, and a chunk of m queries."""
    g = torch.Generator().manual_seed(seed)
    parts = [64, int(n_buf * 0.3) + 3, int(n_buf * 0.1) - 5, int(n_buf * 0.05) + 1]
    parts.append(n_buf - sum(parts))
    assert min(parts) > 0, parts
    ranges, pos = [], 0
    for i, ln in enumerate(parts):
        ranges.append((pos, pos + ln))
        pos += ln + 37 * (i + 1)  # gaps of unused slots
    cap = pos + 100
    bias = torch.full((HKV, cap), float("-inf"))
    for s, e in ranges:
        bias[:, s:e] = 0.0
    s, e = ranges[3]
    bias[:, s:e] = torch.log(torch.randint(2, 256, (HKV, e - s), generator=g).float())
    if masked:
        s, e = ranges[2]
        bias[:, s:s + (e - s) // 8] = float("-inf")  # evicted heavy-hitter slots
    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(DEV, DT)
    q = rnd(HQ, m, D)
    k_buf, v_buf = rnd(HKV, cap, D), rnd(HKV, cap, D)
    k_new, v_new = rnd(HKV, m, D), rnd(HKV, m, D)
    r = torch.tensor(ranges, dtype=torch.int32).to(DEV)
    return q, k_buf, v_buf, bias.to(DEV), r, k_new, v_new


def max_err(x, ref):
    fin = torch.isfinite(ref)
    if not torch.equal(torch.isneginf(x), torch.isneginf(ref)) or not torch.isfinite(x[fin]).all():
        return math.inf
    return (x[fin].double() - ref[fin].double()).abs().max().item() if fin.any() else 0.0


CHECKS = []


def check(name, out, gold, pt):
    """PASS when the kernel's error vs the float32 reference is at most 2x that of PyTorch doing
    the same computation in bf16 (plus a float32-rounding floor)."""
    err, err_pt = max_err(out, gold), max_err(pt, gold)
    fin = torch.isfinite(gold)
    floor = 1e-5 * max(1.0, gold[fin].abs().max().item() if fin.any() else 1.0)
    ok = err <= 2.0 * err_pt + floor
    CHECKS.append({"check": name, "pass": bool(ok), "err": err, "err_torch_bf16": err_pt})
    print(f"{'PASS' if ok else 'FAIL'} {name}: max err {err:.3e} (torch bf16 {err_pt:.3e})",
          flush=True)


def check_decode_loops():
    """Every decode variant (key loop x merge) on the six-tier decode layout, planned and forced
    split counts, and the no-key case of a buffer-only pass (out 0, lse -inf)."""
    for n_slots in ([700] if SMOKE else [12416, 32768]):
        inp = tier_layout(n_slots, seed=n_slots + 1)
        scale = D ** -0.5
        gold_o, gold_l = tier_attention_ref(*inp, scale, compute_dtype=torch.float32,
                                            out_dtype=torch.float32)
        pt_o, pt_l = tier_attention_ref(*inp, scale, compute_dtype=DT)
        for key_loop, combine in VARIANTS:
            for splits in (None, 7):
                try:
                    out, lse = TA.tier_attention(*inp, scale, num_splits=splits,
                                                 key_loop=key_loop, combine=combine)
                except Exception as e:  # recorded as a failed check; the other variants go on
                    msg = f"{type(e).__name__}: {e}"[:300]
                    CHECKS.append({"check": f"decode {key_loop} {combine} runs", "pass": False,
                                   "error": msg})
                    print(f"FAIL decode {key_loop} {combine} splits={splits}: {msg}", flush=True)
                    continue
                what = (f"decode six tiers slots={n_slots} {key_loop} {combine} "
                        f"splits={splits or 'planned'}")
                check(f"{what} out", out, gold_o, pt_o)
                check(f"{what} lse", lse, gold_l, pt_l)
            # A buffer-only pass over masked slots sees no key: out 0, lse -inf.
            q, k_buf, v_buf, bias, r, k_new, v_new = inp
            s, e = r[-1].tolist()
            masked = torch.tensor([[e - (e - s) // 8, e]], dtype=torch.int32, device=q.device)
            out, lse = TA.tier_attention(q, k_buf, v_buf, bias, masked, k_new, v_new, scale,
                                         key_loop=key_loop, with_new=False, combine=combine)
            ok = bool(torch.isneginf(lse).all()) and bool((out == 0).all())
            CHECKS.append({"check": f"decode no key {key_loop} {combine}", "pass": ok})
            print(f"{'PASS' if ok else 'FAIL'} decode no key seen {key_loop} {combine}", flush=True)


def run_checks():
    os.environ["SSA_CODE_KERNELS_POISON"] = "1"
    if "decode" in ARGS.only:
        check_decode_loops()
    if ARGS.only == ("decode",):
        os.environ["SSA_CODE_KERNELS_POISON"] = "0"
        sync()
        return
    sizes = [(1, 700, 1), (70, 300, 2)] if SMOKE else \
        [(4096, 12000, 1), (1, 32768, 2), (1, 8192, 4), (63, 10000, 3)]
    for m, n_buf, seed in sizes:
        inp = layout(n_buf, m, seed)
        scale = D ** -0.5
        out, lse = K.tier_attention(*inp, scale)
        gold_o, gold_l = tier_attention_ref(*inp, scale, compute_dtype=torch.float32,
                                            out_dtype=torch.float32)
        pt_o, pt_l = tier_attention_ref(*inp, scale, compute_dtype=DT)
        check(f"tier_attention M={m} buffer={n_buf} out", out, gold_o, pt_o)
        check(f"tier_attention M={m} buffer={n_buf} lse", lse, gold_l, pt_l)
        del gold_o, pt_o
        if m >= 63:
            obs = min(64, m)
            q, k_buf, v_buf, bias, r, k_new, v_new = inp
            args = (q[:, m - obs:], k_buf, bias, r, k_new, gold_l[:, m - obs:], scale, m - obs)
            mb, mn = K.tier_attention_mass(*args)
            gb, gn = tier_attention_mass_ref(*args, compute_dtype=torch.float32)
            pb, pn = tier_attention_mass_ref(*args, compute_dtype=DT)
            check(f"tier_attention_mass O={obs} M={m} buffer", mb, gb, pb)
            check(f"tier_attention_mass O={obs} M={m} chunk", mn, gn, pn)
    g = torch.Generator().manual_seed(9)
    for m, n, nv in ([(40, 200, 150)] if SMOKE else [(4096, 16384, 15001), (1, 16384, 16384)]):
        q = torch.randn(HQ, m, D, generator=g).to(DEV, DT)
        reps = torch.randn(HKV, n, D, generator=g).to(DEV, DT)
        s = K.score_blocks(q, reps, nv, D ** -0.5)
        check(f"score_blocks M={m} N={n} n_valid={nv}", s,
              score_blocks_ref(q, reps, nv, D ** -0.5, compute_dtype=torch.float32),
              score_blocks_ref(q, reps, nv, D ** -0.5, compute_dtype=DT))
    os.environ["SSA_CODE_KERNELS_POISON"] = "0"
    sync()


def copy_bandwidth():
    """Device-to-device copy bandwidth in GB/s, bytes read + written."""
    n = (1 << 20) if SMOKE else (1 << 30)  # 2 GiB of bf16 on the GPU
    x = torch.randn(n, device=DEV).to(DT)
    y = torch.empty_like(x)
    ms = timeit(lambda: y.copy_(x))
    return 2 * x.numel() * x.element_size() / ms / 1e6, ms


def l2_bytes():
    if SMOKE:
        return 256 << 10  # two input copies at the smoke size
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return getattr(props, "L2_cache_size", 50 << 20) or (50 << 20)


def n_copies(nbytes):
    """Input copies a cold timing cycles through: working set >= 3x the L2 size."""
    return max(1, math.ceil(3 * l2_bytes() / nbytes))


def decode_case(n_slots):
    """A decode step at ``n_slots`` (:func:`tier_layout`), the bytes it must read (K and V of
    every attended slot, plus the bias) and the input copies a cold timing cycles through (the
    step's own first)."""
    inp = tier_layout(n_slots, seed=n_slots)
    nbytes = 2 * HKV * n_slots * D * 2 + HKV * n_slots * 4
    return inp, nbytes, [inp] + [tuple(t.clone() for t in inp) for _ in range(n_copies(nbytes) - 1)]


def rotating(fn, items):
    """One call of fn per item, in order; a timing of it is divided by len(items)."""
    def run():
        for it in items:
            fn(it)
    return run


def sdpa_dense(q, kr, vr):
    if SMOKE:
        return F.scaled_dot_product_attention(q, kr, vr)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, kr, vr)


ROWS = []


def bench_prefill(m, n_keys):
    """Chunk of m queries attending n_keys keys in all: n_keys - m buffer slots + the chunk."""
    n_buf = n_keys - m
    inp = layout(n_buf, m, seed=m + n_keys, masked=False)
    scale = D ** -0.5
    ms = timeit(lambda: K.tier_attention(*inp, scale))
    flops = 4 * HQ * D * m * (n_buf + m / 2)
    # Dense SDPA on the same number of attended keys (n_buf + m / 2 non-causal: equal FLOPs).
    nk = n_buf + m // 2
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, HQ, m, D, generator=g).to(DEV, DT)
    k = torch.randn(1, HKV, nk, D, generator=g).to(DEV, DT)
    v = torch.randn_like(k)
    kr, vr = k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1)
    ms_ref = timeit(lambda: sdpa_dense(q, kr, vr))
    flops_ref = 4 * HQ * D * m * nk
    del q, k, v, kr, vr
    row = {"op": "prefill", "M": m, "buffer": n_buf, "attended": n_keys, "ms": ms,
           "TFLOPs": flops / ms / 1e9, "sdpa_ms": ms_ref, "sdpa_TFLOPs": flops_ref / ms_ref / 1e9}
    row["ratio"] = row["TFLOPs"] / row["sdpa_TFLOPs"]
    ROWS.append(row)
    print(row, flush=True)


def split_candidates(n_slots):
    """Forced split counts swept per decode size: from a quarter of one program per SM to four
    programs per SM (4 KV heads), at least 64 slots a split."""
    if SMOKE:
        return [1, 2]
    per_wave = triton.cdiv(TA.num_sms(torch.device(DEV)), HKV)
    fracs = (0.5, 1, 2) if ARGS.quick else (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4)
    cands = sorted({max(1, round(per_wave * f)) for f in fracs})
    return [c for c in cands if c <= n_slots // 64]


def decode_call(key_loop, combine, splits=None):
    """fn(inputs) running one decode step with this key loop, merge and split count (None:
    planned)."""
    return lambda x: TA.tier_attention(*x, D ** -0.5, num_splits=splits, key_loop=key_loop,
                                       combine=combine)


class forced_config:
    """Runs the flat split path with one config (a benchmark sweep), then restores the rule."""

    def __init__(self, config):
        self.config = config

    def __enter__(self):
        self.saved = TA.SPLIT_CONFIG_OVERRIDE
        TA.SPLIT_CONFIG_OVERRIDE = self.config

    def __exit__(self, *exc):
        TA.SPLIT_CONFIG_OVERRIDE = self.saved


def config_name(c):
    return f"N{c.kwargs['BLOCK_N']}w{c.num_warps}s{c.num_stages}"


# Split-kernel configs the decode config sweep times: every config the flat loop can run and a
# few beside it (a shallower/deeper pipeline, BLOCK_N 32, 8 warps).
def sweep_configs():
    if SMOKE:
        return []
    extra = [triton.Config({"BLOCK_N": 32}, num_warps=4, num_stages=4),
             triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=5),
             triton.Config({"BLOCK_N": 64}, num_warps=8, num_stages=3)]
    return list(TA._SPLIT_CONFIGS) + ([] if ARGS.quick else extra)


@triton.jit
def _launch_floor_kernel(OUT):
    """Program (split s, KV head h) stores its own index and reads nothing: what a launch of the
    split kernel's grid costs in a CUDA graph before a byte of K/V moves."""
    s = tl.program_id(0)
    h = tl.program_id(1)
    tl.store(OUT + h * tl.num_programs(0) + s, (h * tl.num_programs(0) + s).to(tl.int32))


def launch_floor(out, splits):
    """Launches the ``(splits, HKV)`` grid into ``out`` (int32, ``HKV * splits``)."""
    _launch_floor_kernel[(splits, out.numel() // splits)](out, num_warps=4)
    return out


def bench_decode(n_slots, copy_gbps):
    """Every decode variant (key loop x merge) at one size on the six-tier layout: a row each."""
    inp, nbytes, copies = decode_case(n_slots)
    reps = len(copies)
    _, planned = TA.plan_splits(HQ // HKV, HKV, inp[1].shape[1], inp[0].device)
    # A copy moving the same bytes (nbytes / 2 read, nbytes / 2 written), warm and cold.
    src = [torch.empty(nbytes // 4, dtype=torch.int16, device=DEV) for _ in range(reps)]
    dst = [torch.empty_like(x) for x in src]
    cp_warm = timeit(lambda: dst[0].copy_(src[0]), graph=True)
    cp_cold = timeit(rotating(lambda i: dst[i].copy_(src[i]), range(reps)), graph=True) / reps
    del src, dst
    # The launch floor: the same grid reading nothing (cycled over as many outputs as the cold
    # timings cycle inputs, so it is timed the same way).
    ids = [torch.empty(HKV * planned, dtype=torch.int32, device=DEV) for _ in range(reps)]
    ln_cold = timeit(rotating(lambda o: launch_floor(o, planned), ids), graph=True) / reps
    assert torch.equal(ids[0].cpu(), torch.arange(HKV * planned, dtype=torch.int32)), "launch floor"
    del ids
    # Dense SDPA decode over the same number of keys (GQA native), warm, for context.
    k = torch.randn(1, HKV, n_slots, D, device=DEV, dtype=DT)
    v = torch.randn_like(k)
    q = torch.randn(1, HQ, 1, D, device=DEV, dtype=DT)
    ms_sdpa = timeit(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), graph=True)
    del k, v
    rows = {}
    for key_loop, combine in VARIANTS:
        # What the model calls for key_loop "flat" (plan_splits picks the split count).
        call = decode_call(key_loop, combine)
        try:
            ms_warm = timeit(functools.partial(call, inp), graph=True)
        except Exception as e:  # e.g. programmatic dependent launch unsupported here
            msg = f"{type(e).__name__}: {e}"[:300]
            print(f"decode {n_slots} slots {key_loop} {combine}: FAILED {msg}", flush=True)
            ROWS.append({"op": "decode_error", "key_loop": key_loop, "combine": combine,
                         "slots": n_slots, "error": msg})
            continue
        ms_cold = timeit(rotating(call, copies), graph=True) / reps
        # K, V and bias cold, the small inputs (q, ranges, the new key) hot: in a model's decode
        # step q and the new key were just written by the layer's projections.
        hot_small = [(inp[0], c[1], c[2], c[3], inp[4], inp[5], inp[6]) for c in copies]
        ms_cold_hot_small = timeit(rotating(call, hot_small), graph=True) / reps
        ms_eager = timeit(functools.partial(call, inp))
        sweep = {}
        for splits in ([] if ARGS.no_sweep else split_candidates(n_slots)):
            sweep[splits] = timeit(rotating(decode_call(key_loop, combine, splits), copies),
                                   graph=True, rep=20) / reps
        best = min(sweep, key=sweep.get) if sweep else planned
        cfg_sweep = {}
        if key_loop == "flat" and not ARGS.no_sweep:
            for c in sweep_configs():
                with forced_config(c):
                    try:
                        cfg_sweep[config_name(c)] = timeit(rotating(call, copies), graph=True,
                                                           rep=20) / reps
                    except Exception as e:  # out of shared memory or registers on this card
                        print(f"config {config_name(c)}: {type(e).__name__}: {e}"[:200], flush=True)
        row = {"op": "decode", "key_loop": key_loop, "combine": combine, "slots": n_slots,
               "ranges": inp[4].tolist(), "cap": inp[1].shape[1], "bytes": nbytes,
               "splits": planned,
               "split_config": config_name(TA.split_config(inp[1].shape[1], planned)),
               "ms_graph": ms_warm, "ms_graph_cold": ms_cold,
               "ms_graph_cold_hot_small": ms_cold_hot_small,
               "ms_eager": ms_eager, "GBps": nbytes / ms_warm / 1e6,
               "GBps_cold": nbytes / ms_cold / 1e6, "copy_GBps": copy_gbps,
               "copy_same_ms": cp_warm, "copy_same_ms_cold": cp_cold,
               "copy_same_GBps": nbytes / cp_warm / 1e6,
               "copy_same_GBps_cold": nbytes / cp_cold / 1e6,
               "launch_floor_ms": ln_cold,
               "cold_copies": reps, "sweep_ms_cold": sweep, "best_splits": best,
               "config_sweep_ms_cold": cfg_sweep,
               "best_ms_cold": sweep.get(best, ms_cold),
               "sdpa_ms_graph": ms_sdpa, "sdpa_GBps": 2 * HKV * n_slots * D * 2 / ms_sdpa / 1e6}
        row["frac_of_copy"] = row["GBps"] / copy_gbps
        row["frac_of_copy_cold"] = row["GBps_cold"] / copy_gbps
        row["frac_of_same_copy"] = row["GBps"] / row["copy_same_GBps"]
        row["frac_of_same_copy_cold"] = row["GBps_cold"] / row["copy_same_GBps_cold"]
        ROWS.append(row)
        rows[key_loop, combine] = row
        print(row, flush=True)
        swept = ", ".join(f"{k}: {v * 1e3:.1f}" for k, v in sweep.items())
        print(f"decode {n_slots} slots {key_loop} {combine}: planned {planned} splits "
              f"{ms_cold * 1e3:.1f} us cold ({ms_cold_hot_small * 1e3:.1f} with q and ranges hot); "
              + (f"sweep {swept} us; best {best}" if sweep else "no sweep"), flush=True)
        if cfg_sweep:
            print(f"decode {n_slots} slots {key_loop} {combine}: config sweep (cold, {planned} "
                  "splits) " + ", ".join(f"{k}: {v * 1e3:.1f}" for k, v in cfg_sweep.items())
                  + " us", flush=True)
    del copies
    # One summary line: every variant, cold and warm, against the copies.
    parts = [f"{k} {c} {r['ms_graph_cold'] * 1e3:.1f} us ({r['frac_of_copy_cold']:.2f} of copy, "
             f"{r['frac_of_same_copy_cold']:.2f} of same-size copy; warm {r['ms_graph'] * 1e3:.1f})"
             for (k, c), r in rows.items()]
    line = f"decode {n_slots} slots, cold, planned {planned} splits: " + "; ".join(parts)
    sep = rows.get(("flat", "separate"))
    pdl = rows.get(("flat", "separate_pdl"))
    if sep and pdl:
        line += (f"; flat separate_pdl/separate cold {pdl['ms_graph_cold'] / sep['ms_graph_cold']:.2f}"
                 f", warm {pdl['ms_graph'] / sep['ms_graph']:.2f}")
    line += (f"; same-size copy cold {cp_cold * 1e3:.1f} us; "
             f"launch floor (empty grid) {ln_cold * 1e3:.1f} us; "
             f"SDPA warm {ms_sdpa * 1e3:.1f} us")
    print(line, flush=True)


# The decode grid (--decode-grid, --ncu-decode): (tile config, or None for the rule; split count
# as a multiple of one wave, one program per SM). The first entry is the default path. The grid
# ran on an H100 at commit 190006e (with two more knobs since removed: split shares in keys and
# combine programs over part of a row): no entry beat the default by more than 0.4 us at 8K-64K
# slots (BENCHMARKS.md, benchmarks/KERNELS_NOTES.md).
def _cfg(n, w, s):
    return triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s)


DECODE_GRID = [
    (None, 1), (_cfg(64, 4, 4), 2), (_cfg(32, 4, 4), 1), (_cfg(32, 4, 4), 2), (_cfg(32, 2, 4), 2),
    (_cfg(32, 2, 4), 4), (_cfg(64, 2, 4), 2), (_cfg(32, 1, 4), 4), (_cfg(16, 1, 4), 4),
    (_cfg(16, 1, 4), 8), (_cfg(16, 1, 3), 8),
]
# The entries --ncu-decode runs (one call each): the default and one of each warp count.
NCU_GRID = [DECODE_GRID[i] for i in (0, 5, 7, 9)]


def grid_name(entry, splits):
    return f"{config_name(entry[0]) if entry[0] else 'rule'} {splits} splits"


def grid_splits(entry):
    return max(1, round(triton.cdiv(TA.num_sms(torch.device(DEV)), HKV) * entry[1]))


def grid_call(entry):
    """fn(inputs) running one decode step with this grid entry (the default: planned splits)."""
    call = decode_call("flat", None, None if entry[0] is None else grid_splits(entry))

    def run(x):
        with forced_config(entry[0]):
            return call(x)
    return run


def bench_decode_grid(n_slots, copy_gbps):
    """Every DECODE_GRID entry at one size (flat loop, default merge), cold in a CUDA graph,
    after checking its output against the default path's."""
    inp, nbytes, copies = decode_case(n_slots)
    reps = len(copies)
    base_o, base_l = TA.tier_attention(*inp, D ** -0.5)
    times = {}
    for entry in DECODE_GRID:
        name = grid_name(entry, grid_splits(entry))
        call = grid_call(entry)
        try:
            o, lse = call(inp)
            err_o = (o.float() - base_o.float()).abs().max().item()
            err_l = (lse - base_l).abs().max().item()
            ok = err_o < 3e-2 and err_l < 1e-3
            ms = timeit(rotating(call, copies), graph=True, rep=20) / reps
        except Exception as e:  # out of shared memory or registers on this card
            print(f"decode grid {n_slots} slots {name}: FAILED {type(e).__name__}: {e}"[:300],
                  flush=True)
            continue
        times[name] = ms
        row = {"op": "decode_grid", "slots": n_slots, "shape": name, "bytes": nbytes,
               "ms_graph_cold": ms, "frac_of_copy_cold": nbytes / ms / 1e6 / copy_gbps,
               "max_diff_out": err_o, "max_diff_lse": err_l, "same_as_default": ok}
        ROWS.append(row)
        print(f"decode grid {n_slots} slots {name}: {ms * 1e3:.1f} us cold "
              f"({row['frac_of_copy_cold']:.2f} of copy){'' if ok else ' DIFFERS FROM DEFAULT'}",
              flush=True)
    del copies
    base = next(iter(times.values()), None)
    if base:
        best = min(times, key=times.get)
        print(f"decode grid {n_slots} slots: default {base * 1e3:.1f} us, best {best} "
              f"{times[best] * 1e3:.1f} us ({base / times[best]:.2f}x)", flush=True)


def ncu_decode(n_slots):
    """One eager call of each NCU_GRID entry at one size, untimed (for ncu to capture)."""
    inp = tier_layout(n_slots, seed=n_slots)
    for entry in NCU_GRID:
        grid_call(entry)(inp)
        sync()
        print(f"ncu decode {n_slots} slots {grid_name(entry, grid_splits(entry))}", flush=True)


def bench_score(m, n):
    g = torch.Generator().manual_seed(m)
    q = torch.randn(HQ, m, D, generator=g).to(DEV, DT)
    reps = torch.randn(HKV, n, D, generator=g).to(DEV, DT)
    ms = timeit(lambda: K.score_blocks(q, reps, n, D ** -0.5))
    ms_ref = timeit(lambda: score_blocks_ref(q, reps, n, D ** -0.5, compute_dtype=DT))
    flops = 2 * HQ * m * n * D
    row = {"op": "score_blocks", "M": m, "N": n, "ms": ms, "TFLOPs": flops / ms / 1e9,
           "torch_ref_ms": ms_ref}
    ROWS.append(row)
    print(row, flush=True)


def bench_mass(m, n_buf, obs):
    inp = layout(n_buf, m, seed=5)
    q, k_buf, v_buf, bias, r, k_new, v_new = inp
    lse = torch.randn(HQ, obs, device=DEV) + 10.0
    ms = timeit(lambda: K.tier_attention_mass(q[:, m - obs:], k_buf, bias, r, k_new, lse,
                                              D ** -0.5, m - obs))
    row = {"op": "tier_attention_mass", "M": m, "buffer": n_buf, "obs": obs, "ms": ms}
    ROWS.append(row)
    print(row, flush=True)


def table():
    lines = ["| op | size | ours ms | ours | baseline | ratio |", "|---|---|---|---|---|---|"]
    for r in ROWS:
        if r["op"] == "prefill":
            lines.append(f"| prefill | M={r['M']} keys={r['attended']} (buffer {r['buffer']}) | "
                         f"{r['ms']:.3f} | {r['TFLOPs']:.0f} TFLOP/s | SDPA flash "
                         f"{r['sdpa_TFLOPs']:.0f} TFLOP/s ({r['sdpa_ms']:.3f} ms) | "
                         f"{r['ratio']:.2f} (target >= 0.8) |")
        elif r["op"] == "decode":
            lines.append(
                f"| decode {r['key_loop']} {r['combine']} | M=1 slots={r['slots']} ({r['bytes'] / 1e6:.0f} MB, "
                f"{len(r['ranges'])} ranges), {r['splits']} splits | warm {r['ms_graph'] * 1e3:.1f} us, cold {r['ms_graph_cold'] * 1e3:.1f}"
                f" us (eager {r['ms_eager'] * 1e3:.0f} us) | warm {r['GBps']:.0f}, cold "
                f"{r['GBps_cold']:.0f} GB/s | copy {r['copy_GBps']:.0f} GB/s; same-size copy "
                f"warm {r['copy_same_GBps']:.0f}, cold {r['copy_same_GBps_cold']:.0f} GB/s; "
                f"SDPA warm {r['sdpa_GBps']:.0f} GB/s | of copy: warm {r['frac_of_copy']:.2f}, "
                f"cold {r['frac_of_copy_cold']:.2f}; of same-size copy: warm "
                f"{r['frac_of_same_copy']:.2f}, cold {r['frac_of_same_copy_cold']:.2f}; launch floor "
                f"{r['launch_floor_ms'] * 1e3:.1f} us (target >= 0.7) |")
        elif r["op"] == "decode_grid":
            lines.append(f"| decode grid {r['shape']} | M=1 slots={r['slots']} | cold "
                         f"{r['ms_graph_cold'] * 1e3:.1f} us | of copy {r['frac_of_copy_cold']:.2f}"
                         f" (target >= 0.7) | max diff from default: out {r['max_diff_out']:.1e}, "
                         f"lse {r['max_diff_lse']:.1e} | |")
        elif r["op"] == "decode_error":
            lines.append(f"| decode {r['key_loop']} {r['combine']} | slots={r['slots']} | failed |"
                         f" {r['error'][:80]} | | |")
        elif r["op"] == "score_blocks":
            lines.append(f"| score_blocks | M={r['M']} N={r['N']} | {r['ms']:.3f} | "
                         f"{r['TFLOPs']:.0f} TFLOP/s | torch ref {r['torch_ref_ms']:.3f} ms | "
                         f"{r['torch_ref_ms'] / r['ms']:.1f}x |")
        else:
            lines.append(f"| mass | M={r['M']} buffer={r['buffer']} O={r['obs']} | {r['ms']:.3f}"
                         f" | | | |")
    return "\n".join(lines)


def save(name, t0):
    """Writes what has been measured so far to $OUT/bench_kernels.json (after every decode size
    too, so a run cut short by a time limit keeps its finished rows)."""
    out_dir = os.environ.get("OUT", "/tmp")
    os.makedirs(out_dir, exist_ok=True)
    result = {"device": name, "torch": torch.__version__, "triton": triton.__version__,
              "quick": ARGS.quick, "smoke": SMOKE, "only": list(ARGS.only),
              "decode_variants": VARIANTS, "copy_GBps": COPY.get("GBps"),
              "l2_bytes": l2_bytes(), "checks": CHECKS,
              "rows": ROWS, "seconds": time.time() - t0}
    with open(os.path.join(out_dir, "bench_kernels.json"), "w") as f:
        json.dump(result, f, indent=1)


COPY = {}


def main():
    t0 = time.time()
    name = "cpu (Triton interpreter)" if SMOKE else torch.cuda.get_device_name()
    print(f"device: {name}; torch {torch.__version__}; triton {triton.__version__}", flush=True)
    torch.manual_seed(0)
    if ARGS.ncu_decode:  # untimed calls for a profiler: no checks, no copy to compare with
        for n in ARGS.decode_slots or [8192, 16384]:
            ncu_decode(n)
        return 0
    run_checks()
    print(f"checks done at {time.time() - t0:.0f} s", flush=True)
    copy_gbps, copy_ms = copy_bandwidth()
    COPY["GBps"] = copy_gbps
    print(f"device-to-device copy: {copy_gbps:.0f} GB/s", flush=True)
    if SMOKE:
        prefill, decode, score, mass = [(64, 256)], [700], [(32, 256)], [(64, 300, 16)]
    elif ARGS.quick:
        prefill = [(4096, 16384), (8192, 65536)]
        decode = [8192, 131072]
        score = [(4096, 16384)]
        mass = [(4096, 12000, 64)]
    else:
        prefill = [(4096, 8192), (4096, 16384), (4096, 32768), (4096, 65536), (8192, 16384),
                   (8192, 32768), (8192, 65536), (16384, 32768), (16384, 65536)]
        decode = [8192, 12416, 16384, 32768, 65536, 131072]
        score = [(4096, 16384), (16384, 16384)]
        mass = [(4096, 12000, 64)]
    decode = ARGS.decode_slots or decode
    for m, nk in (prefill if "prefill" in ARGS.only else []):
        bench_prefill(m, nk)
    for n in (decode if "decode" in ARGS.only else []):
        if ARGS.decode_grid:
            bench_decode_grid(n, copy_gbps)
        else:
            bench_decode(n, copy_gbps)
        save(name, t0)
    dec = [r for r in ROWS if r["op"] == "decode"]
    if dec:
        print("best forced split count per decode size (cold): "
              + ", ".join(f"{r['slots']} {r['key_loop']} {r['combine']}: {r['best_splits']} "
                          f"({r['best_ms_cold'] * 1e3:.1f} us; planned {r['splits']})" for r in dec),
              flush=True)
        print("flat split config per decode size (the rule): " + ", ".join(
            f"{r['slots']}: {r['split_config']}" for r in dec if r["key_loop"] == "flat"), flush=True)
        tuned = getattr(TA._split_ranges_fwd, "cache", {})
        print("split-K autotune choices, ranges: "
              f"{[(k, str(v)) for k, v in tuned.items()]}", flush=True)
    for m, n in (score if "score" in ARGS.only else []):
        bench_score(m, n)
    for m, nb, o in (mass if "mass" in ARGS.only else []):
        bench_mass(m, nb, o)
    save(name, t0)
    n_fail = sum(not c["pass"] for c in CHECKS)
    print()
    print(f"checks: {len(CHECKS) - n_fail} PASS, {n_fail} FAIL; total {time.time() - t0:.0f} s")
    print(table())
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
