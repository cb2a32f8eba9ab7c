"""Train the bundled tiny model's byte-level BPE tokenizer on real source code.

The tokenizer is trained once, on the source files found on the developer machine
(site-packages of the project's virtual environment and the system Python library), and
committed to ``ssa_code/models/tiny/``. It is final once committed: the packer's golden
tests and the tiny model's embeddings depend on its ids.

Design choices, and why:

- Byte-level BPE (GPT-2 style byte alphabet), so any file decodes and round-trips exactly.
- Pre-tokenization splits every digit into its own piece (cl100k-style regex with ``\\p{N}``
  taken one at a time), so random values such as ``k3f9a2`` or ``0x3fa9`` tokenize almost
  character by character; exact-match retrieval of such values (the needle benchmark and the
  synthetic retrieval data) then needs no rare merged tokens.
- Runs of spaces are kept together (indentation is cheap) but never glued to the next word
  beyond one leading space.
- Special tokens for a chat template, padding and a few reserved ids for later use.

Deterministic: files are listed in sorted order, sampled with a seeded RNG, and the trainer
runs on one fixed text stream. Run from the repository root:

    .venv/bin/python scripts/train_tokenizer.py --out ssa_code/models/tiny
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import sysconfig
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB_SIZE = 8192
SPECIAL_TOKENS = [
    "<|pad|>",
    "<|bos|>",
    "<|eos|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
] + [f"<|reserved_{i}|>" for i in range(10)]

# cl100k-like split, but digits one at a time (\p{N} without a repeat).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|eos|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Share of the training bytes per group of extensions (the corpus here is mostly Python and
# C/C++ headers; the shares keep headers from crowding out Python).
GROUPS: dict[str, tuple[tuple[str, ...], float]] = {
    "python": ((".py", ".pyi"), 0.62),
    "c_cpp": ((".c", ".h", ".cc", ".cpp", ".hpp", ".cu", ".cuh"), 0.28),
    "other": ((".md", ".rst", ".txt", ".toml", ".yaml", ".yml", ".json", ".js", ".ts",
               ".rs", ".go", ".java", ".sh", ".cfg", ".ini"), 0.10),
}
MAX_FILE_BYTES = 256_000


def default_roots() -> list[Path]:
    roots = [Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["stdlib"])]
    for extra in (Path("/usr/lib/python3"), Path("/usr/include")):
        if extra.is_dir():
            roots.append(extra)
    seen: list[Path] = []
    for r in roots:
        r = r.resolve()
        if r.is_dir() and r not in seen:
            seen.append(r)
    return seen


def read_text(path: Path) -> str | None:
    """File text, or None for binaries, undecodable or oversize files."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\x00" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def collect(roots: list[Path], total_bytes: int, seed: int) -> tuple[list[str], dict]:
    """Deterministic sample of source texts, about ``total_bytes`` in all."""
    ext_to_group = {e: g for g, (exts, _) in GROUPS.items() for e in exts}
    by_group: dict[str, list[Path]] = {g: [] for g in GROUPS}
    for root in roots:
        for p in sorted(root.rglob("*")):
            g = ext_to_group.get(p.suffix.lower())
            if g is not None and p.is_file() and not p.is_symlink():
                by_group[g].append(p)
    rng = random.Random(seed)
    texts: list[str] = []
    seen_digests: set[str] = set()
    stats: dict = {}
    for g, (_, share) in GROUPS.items():
        files = by_group[g]
        rng.shuffle(files)
        budget = int(total_bytes * share)
        used = n = 0
        for p in files:
            if used >= budget:
                break
            t = read_text(p)
            if not t or not t.strip():
                continue
            d = hashlib.blake2b(t.encode(), digest_size=16).hexdigest()
            if d in seen_digests:
                continue
            seen_digests.add(d)
            texts.append(t)
            used += len(t.encode())
            n += 1
        stats[g] = {"files_found": len(files), "files_used": n, "bytes_used": used}
    rng.shuffle(texts)
    return texts, stats


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def write_hf_files(tok: Tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    added = {
        str(ids[t]): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": "<|bos|>",
        "eos_token": "<|eos|>",
        "pad_token": "<|pad|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_048_576,
        "padding_side": "left",
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special_map = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("ssa_code/models/tiny"))
    ap.add_argument("--root", type=Path, action="append", default=None,
                    help="directory to read source files from (repeatable; default: "
                         "this Python's site-packages and stdlib, /usr/lib/python3, /usr/include)")
    ap.add_argument("--mbytes", type=float, default=48.0, help="training text size in MB")
    ap.add_argument("--vocab", type=int, default=VOCAB_SIZE)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    roots = [r.resolve() for r in args.root] if args.root else default_roots()
    texts, stats = collect(roots, int(args.mbytes * 1e6), args.seed)
    print(f"roots: {[str(r) for r in roots]}", file=sys.stderr)
    print(f"corpus: {json.dumps(stats)}", file=sys.stderr)

    tok = build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    write_hf_files(tok, args.out)
    digest = hashlib.sha256((args.out / "tokenizer.json").read_bytes()).hexdigest()
    print(f"vocab {tok.get_vocab_size()} -> {args.out} (tokenizer.json sha256 {digest[:16]})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
