"""One GPU, one million tokens: SSA against dense attention with a 7B-class architecture.

Qwen2.5-7B's architecture (28 layers, hidden 3584, 28 query heads, 4 KV heads, head_dim 128,
vocabulary 152064) with random bf16 weights: speed and memory do not depend on weight values.

SSA: after a warm-up that compiles the Triton kernels, one chunked prefill to the longest length; at each mark (32K, 128K, 512K, 1M by
default) the cumulative prefill time (= time to first token, with the first decoded token),
peak GPU memory, SSA state bytes and store bytes are recorded, then 32 tokens are decoded
greedily. Dense (transformers + SDPA, DynamicCache) runs in the same process at every
length up to ``--dense-prefill-max``; its decode is also measured at longer lengths on a
KV cache filled with random tensors, as in ``shared/anchors/anchor_decode.py``.

Run on an H100/H200:  python -m ssa_code.bench.long_context --out $OUT
Writes ``long_context.json`` and ``long_context.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import torch

from ssa_code import SSACache, SSAConfig, patch
from ssa_code.engine.decode import MODES, Decoder
from ssa_code.engine.prefill import _cache_kwarg, forward_chunk

GiB = 2**30


def qwen25_7b_config(layers: int = 28):
    from transformers import Qwen2Config

    return Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=layers, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=False)


def small_config():
    """A few-MB model of the same family, for a CPU smoke run of this script (``--smoke``)."""
    from transformers import Qwen2Config

    return Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=300, max_position_embeddings=4096,
                       tie_word_embeddings=False)


def build_model(cfg, device: str):
    from transformers import AutoModelForCausalLM

    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    return model


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_bytes(device: str) -> int:
    return torch.cuda.max_memory_allocated() if device == "cuda" else 0


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def timed_marks(step, marks: list[int], chunk: int, decode_tokens: int, vocab: int, device: str,
                name: str, extra=lambda: {}, limit_s: float = float("inf")) -> list[dict]:
    """Prefill in chunks up to each mark, then decode greedily; one row per mark.

    ``step(ids [1, n], pos, logits: bool)`` runs the model at positions ``pos ..`` and returns
    the last position's logits ``[1, V]`` when asked. TTFT is the cumulative prefill time plus
    the median decode step (the first token comes out of the last prefill chunk's logits).
    """
    gen = torch.Generator(device=device).manual_seed(1)
    rows = []
    reset_peak(device)
    pos, t_prefill = 0, 0.0
    with torch.no_grad():
        for mark in marks:
            sync(device)
            t0 = time.perf_counter()
            logits = None
            while pos < mark:
                n = min(chunk, mark - pos)
                ids = torch.randint(0, vocab, (1, n), device=device, generator=gen)
                logits = step(ids, pos, pos + n >= mark)
                pos += n
            sync(device)
            t_prefill += time.perf_counter() - t0
            peak_prefill = peak_bytes(device)
            tok = logits.argmax(-1, keepdim=True)
            times = []
            for _ in range(decode_tokens):
                sync(device)
                t = time.perf_counter()
                tok = step(tok, pos, True).argmax(-1, keepdim=True)
                sync(device)
                times.append(time.perf_counter() - t)
                pos += 1
            times.sort()
            row = {"tokens": mark, "prefill_s": t_prefill, "ttft_s": t_prefill + times[len(times) // 2],
                   "decode_ms_median": 1e3 * times[len(times) // 2], "decode_ms_mean": 1e3 * sum(times) / len(times),
                   "peak_GiB": peak_bytes(device) / GiB, "peak_prefill_GiB": peak_prefill / GiB, **extra()}
            rows.append(row)
            print(name, json.dumps(row), flush=True)
            if t_prefill > limit_s:
                break
    return rows


def warm_up(model, ssa_cfg: SSAConfig, chunk: int, vocab: int, device: str, decode_mode: str | None) -> None:
    """Compile and autotune the Triton kernels (prefill and decode shapes) on a throwaway cache.

    Compiled kernels are cached on disk across processes; autotuning reruns once per process.
    """
    patch(model, ssa_cfg)
    cache = SSACache(model.config, ssa_cfg)
    with torch.no_grad():
        pos = 0
        for _ in range(3):
            forward_chunk(model, cache, torch.randint(0, vocab, (1, chunk), device=device), pos, logits=False)
            pos += chunk
        decoder = Decoder(model, cache, mode=decode_mode)
        for _ in range(2 * ssa_cfg.decode_refresh):
            decoder(torch.randint(0, vocab, (1, 1), device=device))
    sync(device)
    cache.close()


def ssa_run(model, ssa_cfg: SSAConfig, marks: list[int], chunk: int, decode_tokens: int, vocab: int,
            device: str = "cuda", decode_mode: str | None = None) -> list[dict]:
    warm_up(model, ssa_cfg, chunk, vocab, device, decode_mode)
    patch(model, ssa_cfg)
    cache = SSACache(model.config, ssa_cfg)
    decoder = Decoder(model, cache, mode=decode_mode)

    def step(ids, pos, want_logits):
        if ids.shape[1] == 1:
            return decoder(ids)[None]
        return forward_chunk(model, cache, ids, pos, logits=want_logits)

    def extra():
        return {"ssa_state_GiB": cache.gpu_bytes() / GiB, "store_GiB": cache.store_bytes() / GiB,
                "pinned_overflow": cache.pinned_overflow, "decode_steps": dict(decoder.steps),
                "graph_error": decoder.graph_error}

    rows = timed_marks(step, marks, chunk, decode_tokens, vocab, device, "ssa", extra)
    cache.close()
    return rows


def dense_run(model, marks: list[int], chunk: int, decode_tokens: int, vocab: int, limit_s: float,
              device: str = "cuda") -> list[dict]:
    from transformers import DynamicCache

    model.set_attn_implementation("sdpa")
    kwarg = _cache_kwarg(model)
    with torch.no_grad():  # warm-up: cuBLAS and SDPA kernels, as SSA gets its compile
        model(input_ids=torch.randint(0, vocab, (1, chunk), device=device),
              **{kwarg: DynamicCache(config=model.config)}, use_cache=True, logits_to_keep=1)
    cache = DynamicCache(config=model.config)

    def step(ids, pos, want_logits):
        out = model(input_ids=ids, **{kwarg: cache}, use_cache=True, logits_to_keep=1,
                    position_ids=torch.arange(pos, pos + ids.shape[1], device=device)[None])
        return out.logits[:, -1]

    rows = timed_marks(step, marks, chunk, decode_tokens, vocab, device, "dense", limit_s=limit_s)
    # Free the dense KV cache before the filled-cache decode runs allocate theirs.
    cache = None
    gc.collect()
    reset_peak(device)
    return rows


def dense_decode_filled(model, lengths: list[int], decode_tokens: int, vocab: int,
                        device: str = "cuda") -> list[dict]:
    """Dense decode on a KV cache filled with random tensors (prefill there would take minutes)."""
    from transformers import DynamicCache

    model.set_attn_implementation("sdpa")
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dtype = next(model.parameters()).dtype
    kwarg = _cache_kwarg(model)
    rows = []
    for n in lengths:
        gc.collect()
        reset_peak(device)
        try:
            cache = DynamicCache(config=cfg)
            for layer in range(cfg.num_hidden_layers):
                k = torch.randn(1, cfg.num_key_value_heads, n, head_dim, device=device, dtype=dtype)
                cache.update(k, torch.randn_like(k), layer)
                del k
            tok = torch.randint(0, vocab, (1, 1), device=device)
            times = []
            with torch.no_grad():
                for i in range(decode_tokens + 2):
                    sync(device)
                    t = time.perf_counter()
                    out = model(input_ids=tok, **{kwarg: cache}, use_cache=True,
                                position_ids=torch.tensor([[n + i]], device=device))
                    tok = out.logits[:, -1].argmax(-1, keepdim=True)
                    sync(device)
                    if i >= 2:
                        times.append(time.perf_counter() - t)
            times.sort()
            row = {"tokens": n, "decode_ms_median": 1e3 * times[len(times) // 2],
                   "peak_GiB": peak_bytes(device) / GiB, "kv_filled_randomly": True}
        except torch.OutOfMemoryError:
            row = {"tokens": n, "oom": True}
        cache = None
        rows.append(row)
        print("dense-decode", json.dumps(row), flush=True)
    gc.collect()
    reset_peak(device)
    return rows


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ssa, dense = result["ssa"], result["dense"]
    dd = [r for r in result.get("dense_decode_filled", []) if not r.get("oom")]
    x = [r["tokens"] for r in ssa]
    axes[0].plot(x, [r["peak_GiB"] for r in ssa], "o-", label="SSA peak")
    axes[0].plot(x, [r["ssa_state_GiB"] for r in ssa], "s--", label="SSA state")
    axes[0].plot([r["tokens"] for r in dense], [r["peak_GiB"] for r in dense], "o-", label="dense peak (prefill)")
    axes[0].plot([r["tokens"] for r in dd], [r["peak_GiB"] for r in dd], "x:", label="dense peak (decode, filled KV)")
    axes[0].set_ylabel("GPU memory (GiB)")
    axes[1].plot(x, [r["ttft_s"] for r in ssa], "o-", label="SSA")
    axes[1].plot([r["tokens"] for r in dense], [r["ttft_s"] for r in dense], "o-", label="dense")
    axes[1].set_ylabel("time to first token (s)")
    axes[2].plot(x, [r["decode_ms_median"] for r in ssa], "o-", label="SSA")
    axes[2].plot([r["tokens"] for r in dense] + [r["tokens"] for r in dd],
                 [r["decode_ms_median"] for r in dense] + [r["decode_ms_median"] for r in dd], "o-", label="dense")
    axes[2].set_ylabel("decode (ms / token)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context tokens")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result.get('model', 'Qwen2.5-7B architecture, random bf16 weights')}, {result['gpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--marks", default="32768,131072,524288,1048576")
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--ssa-decode-tokens", type=int, default=None,
                    help="SSA decode tokens per mark (default --decode-tokens); SSA evicts once per "
                         "decode_evict * block_size tokens, so a mean over that many counts its eviction")
    ap.add_argument("--dense-prefill-marks", default="32768,131072")
    ap.add_argument("--dense-decode-filled", default="524288,1048576")
    ap.add_argument("--dense-limit-s", type=float, default=60.0)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--decode-mode", choices=MODES, default=None,
                    help="SSA decode: graph (CUDA default), static or eager (CPU default)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--device", default="cuda", help="cuda for measurements; cpu only with --smoke")
    ap.add_argument("--smoke", action="store_true",
                    help="a few-MB model of the same family: checks every code path of this script")
    args = ap.parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("long_context needs a CUDA GPU (or --smoke --device cpu)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = small_config() if args.smoke else qwen25_7b_config(args.layers)
    model = build_model(cfg, device)
    ssa_cfg = SSAConfig.from_name("small" if args.smoke else args.preset, chunk_size=args.chunk)
    result = {"gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "ssa_config": ssa_cfg.to_dict(),
              "weights_GiB": (torch.cuda.memory_allocated() if device == "cuda" else 0) / GiB,
              "chunk": args.chunk,
              "model": "smoke-test model" if args.smoke else "Qwen2.5-7B architecture, random bf16 weights"}
    marks = [int(m) for m in args.marks.split(",")]
    result["ssa_decode_tokens"] = args.ssa_decode_tokens or args.decode_tokens
    result["ssa"] = ssa_run(model, ssa_cfg, marks, args.chunk, result["ssa_decode_tokens"], cfg.vocab_size, device,
                            args.decode_mode)
    json.dump(result, open(out / "long_context.json", "w"), indent=1)
    result["dense"] = [] if args.skip_dense else dense_run(
        model, [int(m) for m in args.dense_prefill_marks.split(",") if m], min(8192, args.chunk * 2),
        args.decode_tokens, cfg.vocab_size, args.dense_limit_s, device)
    json.dump(result, open(out / "long_context.json", "w"), indent=1)
    filled = [int(m) for m in args.dense_decode_filled.split(",") if m]
    result["dense_decode_filled"] = [] if args.skip_dense else dense_decode_filled(
        model, filled, min(16, args.decode_tokens), cfg.vocab_size, device)
    json.dump(result, open(out / "long_context.json", "w"), indent=1)
    plot(result, out / "long_context.png")
    print("\n| tokens | SSA prefill s | SSA TTFT s | dense TTFT s | SSA decode ms (median / mean) | dense decode ms "
          "| SSA peak GiB | dense peak GiB | SSA state GiB | store GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    dense_by = {r["tokens"]: r for r in result["dense"]}
    for r in result["dense_decode_filled"]:
        dense_by.setdefault(r["tokens"], r)
    for r in result["ssa"]:
        d = dense_by.get(r["tokens"], {})
        print(f"| {r['tokens']} | {r['prefill_s']:.1f} | {r['ttft_s']:.1f} | {d.get('ttft_s', float('nan')):.1f} "
              f"| {r['decode_ms_median']:.1f} / {r['decode_ms_mean']:.1f} | {d.get('decode_ms_median', float('nan')):.1f} "
              f"| {r['peak_GiB']:.1f} "
              f"| {d.get('peak_GiB', float('nan')):.1f} | {r['ssa_state_GiB']:.2f} | {r['store_GiB']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
