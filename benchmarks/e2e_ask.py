"""End to end: `ssa-code ask` on a 100K-line repository with a 7B-class model of random bf16 weights.

Issue 7, item 4. Run on the GPU machine from the repository root::

    python3 benchmarks/e2e_ask.py --out $OUT

1. Writes a random-weight model folder with Qwen2.5-7B's architecture (28 layers, hidden 3584,
   28 query heads, 4 KV heads, head_dim 128, intermediate 18944, vocabulary 152064,
   max_position_embeddings 32768, rope_theta 1e6): bf16 safetensors shards generated on the
   GPU, and the bundled tiny model's tokenizer (its ids are below the tokenizer's 8192
   entries; answer ids above them decode to nothing, which is fine with random weights). The
   folder (``--model-dir``, default under /tmp keyed by the architecture) is reused when a
   previous run completed it.
2. Copies the Python files of a large installed package (``--source``, default the installed
   ``transformers`` package) into a temporary git repository, in a fixed order (each folder's
   files, then its subfolders, sorted) until ``--max-lines`` lines; fewer than ``--min-lines``
   (100,000) is an error. transformers alone has over a million lines (about 13M tokens), so
   the cap (101,000) keeps the context near 1.2M tokens (about 11.7 tokens a line with this
   tokenizer: 105,090 lines of transformers 5.17 pack to 1,226,954 tokens).
3. Runs ``ssa-code ask QUESTION --repo R --model M --max-tokens 64 --json --no-state`` in a
   child process with this Python and times the whole process (imports, model loading,
   packing, prefill, question, answer), then reads its JSON (timings, tokens, peak GPU memory,
   peak host RSS).
4. Prints a Markdown table row and writes ``e2e_ask.json`` to ``--out`` (rewritten after each
   phase, so a run cut short still leaves what it measured) and ``ask_stderr.log``.

No budget is passed by default, so ``ask`` packs the whole repository: the SSA state is
fixed-size and keys beyond the model's 32768 trained positions are re-rotated into it
(``SSAConfig.fit`` only shrinks chunk and window, which already fit 32768). The default SSA
store keeps every evicted block in host RAM: 57,344 bytes a token for this architecture
(28 layers x 4 KV heads x 128 x K and V x bf16), about 63 GiB at 1.2M tokens, which is most of
the peak RSS.

CPU smoke (tests/bench/test_e2e_ask_smoke.py): ``--device cpu --layers 1 --hidden 64`` with a
small ``--source`` and lowered ``--min-lines``/``--max-lines``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GiB = 2**30
MARKER = "e2e_model.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", "node_modules"}
ENTRY = "import sys; from ssa_code.cli.app import main; sys.argv[0] = 'ssa-code'; main()"
DEFAULT_QUESTION = "How is a pretrained model loaded from its files, and where are its weights placed on the device?"


# -- the model folder ---------------------------------------------------------------------------------


def model_config(layers: int = 28, hidden: int | None = None):
    """Qwen2.5-7B's architecture (as ``qwen25_7b_config`` of the long-context benchmark).

    ``hidden`` (tests only) shrinks the width: 4 query heads, 2 KV heads, MLP twice as wide.
    Token ids of the bundled tokenizer: pad 0, bos 1, eos 2.
    """
    from transformers import Qwen2Config

    arch = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4)
    if hidden is not None:
        arch = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4, num_key_value_heads=2)
    return Qwen2Config(**arch, architectures=["Qwen2ForCausalLM"], num_hidden_layers=layers, vocab_size=152064, max_position_embeddings=32768,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0, dtype="bfloat16")


def _config_digest(cfg) -> str:
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
            "vocab_size", "max_position_embeddings", "tie_word_embeddings")
    return hashlib.sha256(json.dumps({k: getattr(cfg, k) for k in keys}, sort_keys=True).encode()).hexdigest()[:16]


def default_model_dir(cfg) -> Path:
    return Path(tempfile.gettempdir()) / "ssa-e2e-models" / (
        f"qwen2-L{cfg.num_hidden_layers}-H{cfg.hidden_size}-random-{_config_digest(cfg)[:8]}")


def _init_value(name: str, shape, device: str, generator):
    """Random weights in the range a trained model's are: norms 1, biases 0, matrices N(0, 0.02)."""
    import torch

    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16, device=device)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=torch.bfloat16, device=device)
    t = torch.empty(shape, dtype=torch.bfloat16, device=device)
    return t.normal_(0.0, 0.02, generator=generator)


def write_random_model(directory: Path, cfg, device: str, shard_bytes: int = 4 * GiB, seed: int = 0) -> dict:
    """Write (or reuse) a random-weight model folder; returns what was done and how long it took.

    Weights are generated on ``device`` one tensor at a time and written in shards of at most
    ``shard_bytes``, so host memory holds one shard. The folder is built under a temporary name
    and renamed when complete; a folder this script did not write is never touched.
    """
    digest = _config_digest(cfg)
    marker = directory / MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("config_digest") == digest:
            return {**info, "reused": True, "write_s": 0.0}
        shutil.rmtree(directory)  # ours (it has the marker), for another architecture
    elif directory.exists():
        raise SystemExit(f"e2e_ask: {directory} exists and was not written by this script; pass another --model-dir")

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from ssa_code.models import TINY_MODEL_DIR

    t0 = time.perf_counter()
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(cfg)
    shapes = [(name, tuple(t.shape)) for name, t in meta.state_dict().items()]
    del meta
    nbytes = lambda shape: 2 * int(torch.Size(shape).numel())  # noqa: E731 - bf16
    shards: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    for name, shape in shapes:
        if shards[-1] and size + nbytes(shape) > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes(shape)

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    generator = torch.Generator(device=device).manual_seed(seed)
    weight_map = {}
    total = 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in shard:
            tensors[name] = _init_value(name, shape, device, generator).cpu()
            weight_map[name] = fname
            total += nbytes(shape)
        save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
        del tensors
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    cfg.save_pretrained(tmp)
    for f in TOKENIZER_FILES:
        shutil.copy(Path(TINY_MODEL_DIR) / f, tmp / f)
    info = {"config_digest": digest, "params": total // 2, "bytes": total, "shards": len(shards),
            "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "generated_on": device}
    (tmp / MARKER).write_text(json.dumps(info, indent=2))
    os.replace(tmp, directory)
    return {**info, "reused": False, "write_s": time.perf_counter() - t0}


# -- the repository -----------------------------------------------------------------------------------


def default_source() -> Path:
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("e2e_ask: transformers is not installed; pass --source DIR")
    return Path(list(spec.submodule_search_locations)[0])


def count_lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def copy_source(src: Path, dst: Path, max_lines: int, suffixes: tuple[str, ...] = (".py",)) -> dict:
    """Copy files ending in ``suffixes`` from ``src`` to ``dst`` until ``max_lines`` lines.

    Order: each folder's files, then its subfolders, all sorted by name (so the same package
    version always gives the same repository); stops at the first file that reaches the cap.
    """
    files = lines = 0
    for root, dirs, names in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(names):
            if not name.endswith(suffixes):
                continue
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            files += 1
            lines += count_lines(data)
            if lines >= max_lines:
                return {"files": files, "lines": lines, "capped": True}
    return {"files": files, "lines": lines, "capped": False}


def git_commit(repo: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
                               "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args],
                              cwd=repo, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "source tree for the end-to-end ask benchmark")
    return git("rev-parse", "HEAD^{tree}")


# -- the run ------------------------------------------------------------------------------------------


def run_child(cmd: list[str], env: dict[str, str], stderr, timeout: float | None) -> tuple[int, str]:
    """Run the ask command; its exit code and stdout. (The CPU smoke test swaps in an in-process run.)"""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True, timeout=timeout)
    return proc.returncode, proc.stdout


def run_ask(args, repo: Path, model_dir: Path, cache_dir: Path, stderr_path: Path, timeout: float | None) -> dict:
    """``ssa-code ask ... --json`` in a child process: its JSON plus whole-process wall time and peak RSS."""
    # -v: the "packed N files, T tokens; model ... loaded in S s" line on stderr, before the prefill.
    cmd = [sys.executable, "-c", ENTRY, "ask", args.question, "--repo", str(repo), "--model", str(model_dir),
           "--max-tokens", str(args.max_tokens), "--json", "--no-state", "--ssa", args.ssa, "-v"]
    if args.budget is not None:
        cmd += ["--budget", str(args.budget)]
    env = dict(os.environ, SSA_CODE_CACHE_DIR=str(cache_dir), PYTHONUNBUFFERED="1")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # pick_device() then chooses the CPU
    t0 = time.perf_counter()
    with open(stderr_path, "w") as err:
        try:
            code, stdout = run_child(cmd, env, err, timeout)
        except subprocess.TimeoutExpired:
            return {"timed_out": True, "wall_s": time.perf_counter() - t0, "timeout_s": timeout}
    wall = time.perf_counter() - t0
    # Peak RSS over the waited-for children: the ask process (git's are far smaller).
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    out = {"returncode": code, "wall_s": wall, "child_peak_rss_bytes": child_rss}
    if code != 0:
        out["stdout_tail"] = stdout[-2000:]
        return out
    out["ask"] = json.loads(stdout)
    return out


def summarise(result: dict) -> dict:
    """The numbers of the table row, from the ask JSON and the measurements around it."""
    ask = result.get("run", {}).get("ask")
    if not ask:
        return {}
    t, tok, mem = ask["timings"], ask["tokens"], ask.get("memory", {})
    answer = tok.get("answer", 0)
    gpu = mem.get("peak_gpu_bytes")
    return {
        "lines": result["source"]["lines"],
        "files": result["source"]["files"],
        "repo_tokens": tok["repository"],
        "context_tokens": tok["context"],
        "process_s": result["run"]["wall_s"],
        "model_load_s": t.get("model_load_s"),
        "pack_s": t.get("pack_s"),
        "prefill_s": ask["prefill_s"],
        "prefill_tok_per_s": tok["context"] / ask["prefill_s"] if ask["prefill_s"] else None,
        "question_s": t.get("question_s"),
        "ttft_s": ask["ttft_s"],
        "decode_s": t.get("decode_s"),
        "decode_ms_per_token": 1e3 * t["decode_s"] / answer if answer and "decode_s" in t else None,
        "answer_tokens": answer,
        "peak_gpu_GiB": None if gpu is None else gpu / GiB,
        "peak_rss_GiB": (mem.get("peak_rss_bytes") or result["run"]["child_peak_rss_bytes"]) / GiB,
        "model_load": ask.get("model_load"),
        "model_write_s": result["model"]["write_s"],
    }


COLUMNS = [("lines", "{:,}"), ("files", "{:,}"), ("context_tokens", "{:,}"), ("process_s", "{:.1f}"),
           ("model_load_s", "{:.1f}"), ("pack_s", "{:.1f}"), ("prefill_s", "{:.1f}"),
           ("prefill_tok_per_s", "{:,.0f}"), ("ttft_s", "{:.1f}"), ("decode_ms_per_token", "{:.1f}"),
           ("answer_tokens", "{}"), ("peak_gpu_GiB", "{:.2f}"), ("peak_rss_GiB", "{:.2f}"), ("model_load", "{}")]


def table(summary: dict) -> str:
    def cell(key: str, fmt: str) -> str:
        v = summary.get(key)
        return "n/a" if v is None else fmt.format(v)

    head = "| " + " | ".join(k for k, _ in COLUMNS) + " |"
    rule = "|" + "|".join(" --- " for _ in COLUMNS) + "|"
    row = "| " + " | ".join(cell(k, f) for k, f in COLUMNS) + " |"
    return "\n".join([head, rule, row])


def environment(device: str) -> dict:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "device": device}
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_memory_GiB"] = torch.cuda.get_device_properties(0).total_memory / GiB
    try:
        import accelerate

        env["accelerate"] = accelerate.__version__
    except ImportError:
        env["accelerate"] = None
    return env


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "e2e-out")))
    p.add_argument("--source", type=Path, default=None, help="source tree to commit (default: installed transformers)")
    p.add_argument("--min-lines", type=int, default=100_000, help="fewer lines is an error")
    p.add_argument("--max-lines", type=int, default=101_000,
                   help="copy files until this many lines (the packer drops generated files and trailing blank "
                        "lines, so keep it a little above --min-lines)")
    p.add_argument("--model-dir", type=Path, default=None, help="random model folder (written unless complete)")
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--hidden", type=int, default=None, help="tests only: a narrow model of the same family")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("--question", default=DEFAULT_QUESTION)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--budget", type=int, default=None,
                   help="passed to ask --budget, which refuses a larger context rather than cutting it (default: "
                        "none); --max-lines sets the context size")
    p.add_argument("--ssa", default="default", help="SSA preset passed to ask --ssa")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds for the whole script: the ask process is killed 15 s before, so the JSON is written")
    p.add_argument("--keep-repo", action="store_true", help="leave the generated git repository in place")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / "e2e_ask.json"
    result: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "environment": environment(args.device)}

    def save() -> None:
        result_path.write_text(json.dumps(result, indent=2))

    cfg = model_config(args.layers, args.hidden)
    model_dir = args.model_dir or default_model_dir(cfg)
    print(f"e2e_ask: model folder {model_dir}", flush=True)
    result["model"] = {"dir": str(model_dir), **write_random_model(model_dir, cfg, args.device)}
    if args.device == "cuda":
        torch.cuda.empty_cache()  # the child process needs the GPU, not this one
    print(f"e2e_ask: model {'reused' if result['model']['reused'] else 'written'} "
          f"({result['model']['bytes'] / GiB:.2f} GiB, {result['model']['write_s']:.1f} s)", flush=True)
    save()

    work = Path(tempfile.mkdtemp(prefix="ssa-e2e-"))
    try:
        source = args.source or default_source()
        repo = work / "repo"
        t0 = time.perf_counter()
        copied = copy_source(source, repo, args.max_lines)
        copy_s = time.perf_counter() - t0
        result["source"] = {"from": str(source), **copied, "copy_s": copy_s}
        if copied["lines"] < args.min_lines:
            save()
            print(f"e2e_ask: {source} has {copied['lines']:,} lines of Python, fewer than --min-lines "
                  f"{args.min_lines:,}; pass a larger --source", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        result["source"]["tree_id"] = git_commit(repo)
        result["source"]["git_s"] = time.perf_counter() - t0
        print(f"e2e_ask: repository of {copied['files']:,} files, {copied['lines']:,} lines from {source}", flush=True)
        save()

        timeout = None if args.time_limit is None else max(1.0, args.time_limit - (time.perf_counter() - started) - 15)
        result["run"] = run_ask(args, repo, model_dir, work / "cache", args.out / "ask_stderr.log", timeout)
        result["summary"] = summarise(result)
        save()
    finally:
        if args.keep_repo:
            print(f"e2e_ask: repository kept in {work / 'repo'}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)

    run = result["run"]
    if run.get("timed_out"):
        print(f"e2e_ask: ask did not finish within {run['timeout_s']:.0f} s (see ask_stderr.log)", file=sys.stderr)
        return 1
    if run["returncode"] != 0:
        tail = (args.out / "ask_stderr.log").read_text(errors="replace")[-3000:]
        print(f"e2e_ask: ask failed with exit code {run['returncode']}:\n{tail}", file=sys.stderr)
        return 1
    print(table(result["summary"]), flush=True)
    print(f"e2e_ask: wrote {result_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
