"""Needle in a haystack of real code: dense, StreamingLLM, H2O, InfLLM-like and SSA side by side.

The haystack is a repository packed by :func:`ssa_code.context.pack_repository` (repository
map, then one block per file, in the model's own tokenizer). A needle is one planted line
``SECRET_TOKEN = "<random>"`` inserted, as token ids, at the line boundary of a file body
nearest to depth ``d`` (re-tokenizing the combined text gives the same ids, see
:mod:`ssa_code.bench.synthetic`); the prompt ends with the completion cue
``SECRET_TOKEN = "`` and the score is the exact match of the greedy continuation with the
value. The multi-key variant (RULER, Hsieh et al. 2024) plants several needles with similar
keys (``SECRET_TOKEN_<n>``) at other random depths and asks for one.

Methods, all on the same model and the same per-layer slot budget (``--budget`` tokens of
keys/values per KV head), all but ``dense`` through :class:`ssa_code.SSACache`:

- ``dense``: plain transformers SDPA attention with a full KV cache, while the context is
  at most ``--dense-max`` tokens (its memory grows with the context);
- ``streaming``: sinks + recent window (StreamingLLM, Xiao et al. 2023);
- ``h2o``: sinks + heavy hitters + window (H2O, Zhang et al. 2023);
- ``infllm``: sinks + window + block retrieval from the store, no summaries, no heavy
  hitters (InfLLM, Xiao et al. 2024);
- ``ssa``: every tier (sinks, pinned anchors from the packer, heavy hitters, summaries,
  retrieval, window).

The GPU machine has no tree-sitter, so packing and running are split::

    python -m ssa_code.bench.needle --repo PATH --pack-only bench_data/haystack.npz   # here
    python -m ssa_code.bench.needle --tokens bench_data/haystack.npz --out $OUT       # GPU

A run can be split over processes or GPUs: each runs ``--shard I/N`` (the cells are shared out
by estimated cost, the prompts do not depend on the split) and ``--merge DIR...`` joins their
``--out`` folders into one report (``scripts/device_needle.sh`` does both on the GPU machine).

Output in ``--out``: ``needle.json`` (every cell), ``needle.md`` (tables) and one heatmap
``needle_<method>.png`` (depth x length, one panel per key count). Cells that the time
budget (``--max-minutes``) or ``--dense-max`` left out are reported as not run, never guessed.
``--resume DIR`` runs only the cells that DIR's report left unrun; ``--merge DIR OUT...`` then
puts the two together.
A haystack shorter than a requested length is repeated (cycled) and the report says so.

Experimental; the accuracy numbers are only as good as the tiny model they run on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np

from ssa_code.atomic import replacing, write_text
from ssa_code.attention.config import QUESTION_FIELDS, SSAConfig
from ssa_code.bench.synthetic import LineBoundaries, Needle, encode, random_value
from ssa_code.fields import parse_fields

METHODS = ("dense", "streaming", "h2o", "infllm", "ssa")
HAYSTACK_FORMAT = 1
DEFAULT_LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576)


# --------------------------------------------------------------------------- methods


def method_configs(budget: int = 4096, *, chunk_size: int = 1024, block_size: int = 64,
                   sinks: int = 64, max_position: int = 4096, store: str = "host",
                   index_size: int = 16384, exact_question: bool = True) -> dict[str, Any]:
    """One :class:`ssa_code.SSAConfig` per SSA-cache method, each using at most ``budget`` slots.

    ``budget`` counts key/value slots per layer and KV head (``SSAConfig.capacity``). The
    recent window is capped at ``max_position - chunk_size`` so no query sees a window key
    farther than the model's trained range. Split of the budget:

    - streaming: sinks + window;
    - h2o: sinks + heavy hitters (1/4) + window;
    - infllm: sinks + retrieval (1/2: ``top_k`` blocks) + window;
    - ssa: the same sinks and window as infllm; pinned (1/32), heavy (1/64) and summaries (1/64)
      are paid for by retrieval, which stages at most a quarter of the budget (16 blocks at
      4096 slots); the rest of the budget stays unused.

    infllm and ssa share the retrieval mechanism: the index's bounds for the haystack's chunks
    and, with ``exact_question``, exact attention over the store for the cue (``SSAConfig.
    exact_question``, read under two neighbour choices: ``exact_tries=(1, 2)``), so the two
    differ by SSA's other tiers only.
    """
    if budget < sinks + 4 * block_size:
        raise ValueError(f"budget {budget} is too small for sinks {sinks} and block {block_size}")
    w_max = max_position - chunk_size
    if w_max < block_size:
        raise ValueError(f"chunk_size {chunk_size} leaves no window within max_position {max_position}")
    # An answer is a few tokens: decode never evicts, so the ring keeps one spare block only
    # (decode_evict=1) and the budget goes to the tiers.
    common = dict(sinks=sinks, block_size=block_size, chunk_size=chunk_size, index_size=index_size,
                  rebase_every=min(256, chunk_size), decode_evict=1, exact_question=exact_question)
    ring_extra = block_size

    def window(rest: int) -> int:
        w = min(rest - ring_extra, w_max)
        w -= w % block_size
        if w < block_size:
            raise ValueError(f"budget {budget} leaves no window (rest {rest})")
        return w

    out: dict[str, Any] = {}
    out["streaming"] = SSAConfig.from_name(
        "streaming", window=window(budget - sinks), **common)
    heavy = budget // 4
    out["h2o"] = SSAConfig.from_name(
        "h2o", heavy=heavy, window=window(budget - sinks - heavy), **common)
    top_k = (budget // 2) // block_size
    # The cue is read under two neighbour choices (the shipped one, then one block in front and
    # two behind) and answered from the surer first token: on 120 fresh 1M cells (seeds 10-12) it
    # answered one more than the shipped choice alone and lost none (BENCHMARKS.md, needle).
    tries = dict(exact_tries=(1, 2)) if exact_question else {}
    out["infllm"] = SSAConfig.from_name(
        "infllm", top_k=top_k, store=store, window=window(budget - sinks - top_k * block_size),
        **tries, **common)
    # SSA keeps InfLLM's window: a needle that InfLLM still holds in its window must not fall
    # out of SSA's (the H200 run lost 16K depth 0.89, 1.7K tokens from the end, to a window of
    # 1408 against InfLLM's 1920). Its other tiers come out of retrieval, which loses
    # ceil(256 / 64) = 4 of InfLLM's 32 blocks at 4096 slots.
    pinned, heavy, summ = budget // 32, budget // 64, budget // 64
    win = out["infllm"].window
    top_k = (budget - sinks - pinned - heavy - summ - win - ring_extra) // block_size
    if top_k < 1:
        raise ValueError(f"budget {budget} leaves SSA no retrieval beside InfLLM's window {win}")
    # Fewer, surer blocks: at 1M tokens the 28 blocks that fit crowded the needle out of the
    # answer's attention (the question's exact choice stages the store's strongest lookalikes
    # beside it). On an H200, 16 won back two of the three one-key 1M misses of 28 and lost none
    # of the 139 cells both measured (BENCHMARKS.md, needle).
    top_k = min(top_k, max(1, budget // 4 // block_size))
    out["ssa"] = SSAConfig.from_name(
        "default", pinned=pinned, heavy=heavy, summaries=summ, top_k=top_k, store=store,
        window=win, **tries, **common)
    for name, cfg in out.items():
        assert cfg.capacity <= budget + ring_extra, (name, cfg.capacity, budget)
    return out


# --------------------------------------------------------------------------- haystack


def tokenizer_digest(tokenizer) -> str:
    """Digest of a tokenizer's vocabulary (stable across library versions)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


@dataclass
class Haystack:
    """Packed token ids of one or more repositories, with file and anchor spans.

    Attributes:
        token_ids: int32 ``[T]``.
        bodies: int64 ``[F, 2]``: token spans ``[start, end)`` of file bodies (header excluded).
        anchors: int64 ``[A, 2]``: spans to pin (repository maps and file headers).
        meta: repositories, tree ids, file counts, tokenizer digest.
    """

    token_ids: np.ndarray
    bodies: np.ndarray
    anchors: np.ndarray
    meta: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(self.meta, format=HAYSTACK_FORMAT)
        with open(path, "wb") as f:
            np.savez_compressed(f, token_ids=self.token_ids.astype(np.int32),
                                bodies=self.bodies.astype(np.int64),
                                anchors=self.anchors.astype(np.int64),
                                meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path) -> "Haystack":
        """Raises ValueError, with the path, for a file that is missing or not a packed haystack."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = (z["token_ids"].astype(np.int64), z["bodies"], z["anchors"])
        except (OSError, KeyError, EOFError, ValueError) as e:  # ValueError: not an .npz at all
            raise ValueError(f"{path}: not a packed haystack ({str(e).splitlines()[0][:120]})") from None
        if meta.get("format") != HAYSTACK_FORMAT:
            raise ValueError(f"{path}: haystack format {meta.get('format')}, expected {HAYSTACK_FORMAT}")
        return cls(*arrays, meta)


def pack_haystack(repos: Sequence[str], tokenizer, exclude: Sequence[str] = (),
                  max_tokens: int | None = None) -> Haystack:
    """Pack each repository with the project's packer and concatenate them.

    ``exclude``: path globs left out of every pack; ``max_tokens``: keep only the first
    tokens (file and anchor spans clipped).
    """
    from ssa_code.context import PackOptions, pack_repository

    ids: list[np.ndarray] = []
    bodies: list[tuple[int, int]] = []
    anchors: list[tuple[int, int]] = []
    info = []
    offset = 0
    for repo in repos:
        packed = pack_repository(repo, tokenizer, PackOptions(exclude=tuple(exclude)))
        t = np.asarray(packed.token_ids, dtype=np.int64)
        ids.append(t)
        bodies += [(offset + f.header_end, offset + f.token_end) for f in packed.files]
        anchors += [(offset + s, offset + e) for s, e in packed.anchors]
        info.append({"repo": str(Path(repo).resolve()), "tree_id": packed.tree_id,
                     "files": len(packed.files), "tokens": int(t.size)})
        offset += t.size
    all_ids = np.concatenate(ids)
    b = np.array(bodies, dtype=np.int64).reshape(-1, 2)
    a = np.array(anchors, dtype=np.int64).reshape(-1, 2)
    if max_tokens is not None and all_ids.size > max_tokens:
        all_ids = all_ids[:max_tokens]
        b, a = b[b[:, 0] < max_tokens], a[a[:, 1] <= max_tokens]
        b[:, 1] = np.minimum(b[:, 1], max_tokens)
    return Haystack(all_ids, b, a, {"repos": info, "tokenizer": tokenizer_digest(tokenizer),
                                    "tokens": int(all_ids.size), "packed_tokens": int(offset),
                                    "exclude": list(exclude)})


def cycled(hay: Haystack, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The first ``n`` tokens of the haystack repeated as often as needed.

    Returns (ids ``[n]``, bodies ``[F', 2]``, anchors ``[A', 2]`` clipped to ``n``, copies).
    """
    token_ids, bodies, anchors = hay.token_ids, hay.bodies, hay.anchors
    # A repository map longer than a quarter of the prompt would leave no file body to plant
    # the needle in (the stdlib's map is over 16K tokens): start after it.
    if anchors.size and anchors[0, 0] == 0 and anchors[0, 1] > n // 4:
        skip = int(anchors[0, 1])
        token_ids = token_ids[skip:]
        bodies = bodies[bodies[:, 0] >= skip] - skip
        anchors = anchors[anchors[:, 0] >= skip] - skip
    t = token_ids.size
    copies = max(1, math.ceil(n / t))
    ids = np.resize(token_ids, n)

    def spans(s: np.ndarray) -> np.ndarray:
        rep = np.concatenate([s + k * t for k in range(copies)]) if s.size else s.reshape(0, 2)
        rep = rep[rep[:, 0] < n]
        rep[:, 1] = np.minimum(rep[:, 1], n)
        return rep

    return ids, spans(bodies), spans(anchors), copies


# --------------------------------------------------------------------------- prompts


@dataclass
class Prompt:
    """One benchmark input: ids ``[T]``, spans to pin, the asked needle and where it sits."""

    ids: np.ndarray
    anchors: list[tuple[int, int]]
    asked: Needle
    needle_pos: int
    copies: int
    cue_len: int
    needle_len: int = 0


def build_prompt(hay: Haystack, lines: LineBoundaries, tokenizer, length: int, depth: float,
                 needles: Sequence[Needle], asked: int, rng: random.Random, jitter: int = 0) -> Prompt:
    """Haystack of about ``length`` tokens with ``needles`` planted and the cue of ``needles[asked]`` last.

    The asked needle goes to the line boundary inside a file body nearest to
    ``depth * haystack length``; the others to random body line boundaries. With ``jitter``
    tokens, the asked needle goes instead to a boundary drawn by ``rng`` among those within
    ``jitter`` of that target (the nearest one if none is), so that seeds vary where a needle
    sits as well as its value; ``jitter=0`` draws nothing more from ``rng``.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    line_ids = [encode(tokenizer, n.line) for n in needles]
    cue = encode(tokenizer, needles[asked].cue)
    room = length - len(cue) - sum(map(len, line_ids))
    if room < 64:
        raise ValueError(f"length {length} is too short for the needles")
    base, bodies, anchors, copies = cycled(hay, room)
    pos = lines.positions(base)
    if pos.size == 0:
        raise ValueError("the haystack has no line boundaries")
    end = int(pos[-1])
    base = base[:end]
    # Boundaries strictly inside a body (between its lines), before the end.
    inside = np.zeros(pos.size, dtype=bool)
    if bodies.size:
        k = np.searchsorted(bodies[:, 0], pos, side="right") - 1
        ok = k >= 0
        inside[ok] = (pos[ok] >= bodies[k[ok], 0]) & (pos[ok] < bodies[k[ok], 1])
    cand = pos[inside & (pos < end)]
    if cand.size == 0:
        raise ValueError(f"no file-body line boundary in the first {end} haystack tokens")
    target = depth * end
    near = cand[np.abs(cand - target) <= jitter] if jitter else cand[:0]
    p_asked = int(near[rng.randrange(near.size)] if near.size else cand[np.abs(cand - target).argmin()])
    places = []
    for i in range(len(needles)):
        places.append(p_asked if i == asked else int(cand[rng.randrange(cand.size)]))
    inserts = sorted(zip(places, range(len(needles))))
    out: list[int] = []
    shift_at: list[tuple[int, int]] = []
    last = 0
    needle_pos = -1
    base_l = base.tolist()
    for p, i in inserts:
        out.extend(base_l[last:p])
        if i == asked:
            needle_pos = len(out)
        out.extend(line_ids[i])
        shift_at.append((p, len(line_ids[i])))
        last = p
    out.extend(base_l[last:])
    out.extend(cue)

    # A line inserted at p lands before token p: it moves span starts at or after p and span
    # ends after p.
    def moved(x: int, inclusive: bool) -> int:
        return x + sum(n for p, n in shift_at if (p <= x if inclusive else p < x))

    pins = [(moved(int(s), True), moved(int(e), False)) for s, e in anchors if e <= end]
    return Prompt(np.asarray(out, dtype=np.int64), pins, needles[asked], needle_pos, copies, len(cue),
                  len(line_ids[asked]))


def make_needles(rng: random.Random, keys: int) -> tuple[list[Needle], int]:
    """``SECRET_TOKEN`` alone, or ``keys`` similar ``SECRET_TOKEN_<n>`` keys; one is asked."""
    if keys == 1:
        return [Needle("SECRET_TOKEN", random_value(rng, "str", 8), "str")], 0
    suffixes = rng.sample(range(100, 1000), keys)
    values: set[str] = set()
    needles = []
    for s in suffixes:
        v = random_value(rng, "str", 8)
        while v in values:
            v = random_value(rng, "str", 8)
        values.add(v)
        needles.append(Needle(f"SECRET_TOKEN_{s}", v, "str"))
    return needles, rng.randrange(keys)


def depth_grid(n: int) -> list[float]:
    """The benchmark's ``n`` needle depths, evenly over [0, 1] (rounded as reports name them)."""
    return [round(float(d), 4) for d in np.linspace(0.0, 1.0, n)]


def cell_needles(seed: int, length: int, keys: int,
                 depth_index: int) -> tuple[list[Needle], int, random.Random]:
    """One benchmark cell's needles, the asked one's index, and the cell's RNG after drawing them
    (:func:`cell_prompt` places the needles with it); probes take a cell's needles from here."""
    rng = random.Random(f"{seed}:{length}:{keys}:{depth_index}")
    needles, asked = make_needles(rng, keys)
    return needles, asked, rng


def cell_prompt(hay: Haystack, lines: LineBoundaries, tokenizer, seed: int, length: int, keys: int,
                depth_index: int, depths: Sequence[float], jitter: int = 0) -> Prompt:
    """The prompt of one benchmark cell, as :func:`run_benchmark` builds it (every method of the
    cell answers the same one); probes rebuild a cell with it."""
    needles, asked, rng = cell_needles(seed, length, keys, depth_index)
    return build_prompt(hay, lines, tokenizer, length, float(depths[depth_index]), needles, asked, rng,
                        jitter)


# --------------------------------------------------------------------------- running


@dataclass
class Cell:
    """One measured (method, keys, length, depth) cell; ``correct`` is None when not run."""

    method: str
    keys: int
    length: int
    depth: float
    correct: bool | None = None
    prompt_tokens: int = 0
    needle_depth: float | None = None
    expected: str = ""
    output: str = ""
    seconds: float | None = None
    gpu_bytes: int = 0
    store_bytes: int = 0
    pinned_overflow: int = 0
    copies: int = 1
    needle_held: float | None = None
    note: str = ""
    diag: dict | None = None


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ssa(model, cfg, prompt: Prompt, new_tokens: int, device, first_id: int = -1,
            variants: dict[str, Any] | None = None) -> tuple[list[int], dict]:
    """Chunked prefill into an SSACache with ``cfg``, then greedy decoding of ``new_tokens``.

    The haystack is prefilled in ``cfg.chunk_size`` chunks and the cue as one final chunk.
    With ``cfg.exact_question`` the cue chooses its blocks by exact attention over the store
    (``SSACache.select_exact``), as ``ssa-code ask`` does for a question; a method without a
    store has nothing to choose from. ``stats["exact_question"]`` says whether it did.
    ``stats["diag"]``: where the needle stood when the answer started, per layer and KV head
    (:func:`needle_held_per_head`, :func:`needle_block_ranks`, :func:`staged_blocks`) and in
    the first answer token's distribution (:func:`first_token_view` of ``first_id``, the
    value's first token).
    ``variants``: name -> a config differing from ``cfg`` in :data:`QUESTION_FIELDS` only; after
    the answer, the cache is rewound to the end of the haystack (``SSACache.checkpoint``) and
    the cue answered again with each, so they are compared on one prefill;
    ``stats["variants"][name]`` holds their token ids and diagnostics, ``stats
    ["variant_seconds"]`` their time.
    """
    import torch

    from ssa_code import SSACache, patch
    from ssa_code.engine.prefill import prefill

    patch(model, cfg)
    cache = SSACache(model.config, cfg, device=device, dtype=model.dtype)
    try:
        ids = torch.from_numpy(prompt.ids)[None].to(device)
        anchors = prompt.anchors if cfg.pinned > 0 else ()
        # The cue is its own (last) chunk, as a question after a packed repository would be:
        # block selection for the answer is then driven by the cue's queries alone.
        split = ids.shape[1] - prompt.cue_len
        prefill(model, cache, ids[:, :split], chunk_size=cfg.chunk_size, anchors=anchors)
        saved = cache.checkpoint() if variants else None
        out, stats = _answer_cue(model, cache, cfg, ids[:, split:], prompt, new_tokens, device, first_id)
        stats.update(gpu_bytes=cache.gpu_bytes(), store_bytes=cache.store_bytes(),
                     pinned_overflow=int(getattr(cache, "pinned_overflow", 0)))
        if variants:
            t = time.time()
            stats["variants"] = {}
            for name, vcfg in variants.items():
                cache.rewind(saved, question_config=vcfg)
                v_out, v_stats = _answer_cue(model, cache, vcfg, ids[:, split:], prompt, new_tokens, device,
                                             first_id)
                stats["variants"][name] = {"ids": v_out, "needle_held": v_stats["needle_held"],
                                           "diag": v_stats["diag"]}
            stats["variant_seconds"] = time.time() - t
    finally:
        cache.close()
    return out, stats


def question_variants(cfg, specs: Sequence[str]) -> dict[str, Any]:
    """``["before1:exact_before=1", "wide:exact_before=1;exact_after=2"]`` -> name -> ``cfg``
    with those :data:`QUESTION_FIELDS` changed. Raises ValueError for anything else."""
    out: dict[str, Any] = {}
    for spec in specs:
        name, sep, body = spec.partition(":")
        name = name.strip()
        if not sep or not name or name in out or not body.strip():
            raise ValueError(f"--question-variant wants a new NAME:FIELD=VALUE[;...], got {spec!r}")
        exclude = [f for f in cfg.__dataclass_fields__ if f not in QUESTION_FIELDS]
        variant = cfg.replace(**parse_fields(cfg, body.split(";"), "--question-variant", exclude=exclude))
        try:
            cfg.check_question_variant(variant)
        except ValueError as e:
            raise ValueError(f"--question-variant {name}: {e} (--ssa-set exact_top_k=N enlarges the run's)") from None
        out[name] = variant
    return out


def _answer_cue(model, cache, cfg, cue, prompt: Prompt, new_tokens: int, device,
                first_id: int) -> tuple[list[int], dict]:
    """The cue as one chunk after the haystack (the question's exact choice where ``cfg`` has
    it), then greedy decoding of ``new_tokens``: ``(token ids, stats)``."""
    import torch

    from ssa_code.engine.generate import forward_tokens
    from ssa_code.engine.question import prefill_question

    # Where the cache offers it, the question (cue) chooses its blocks by exact attention over
    # the whole store instead of the index's bounds (see BENCHMARKS.md, needle, issue 6), once
    # per choice of SSAConfig.exact_tries.
    logits, choice = prefill_question(model, cache, cue, cfg)
    logits, exact = logits[0], choice.exact
    per_head = needle_held_per_head(cache, prompt.needle_pos, prompt.needle_len)
    diag = {"held": [round(x, 3) for x in per_head],
            "ranks": needle_block_ranks(cache, prompt.needle_pos, prompt.needle_len),
            "staged": staged_blocks(cache),
            "first": first_token_view(logits, first_id)}
    if len(choice.confidence) > 1:
        diag["tries"] = {"confidence": [round(c, 4) for c in choice.confidence], "chosen": choice.chosen}
    out: list[int] = []
    for i in range(new_tokens):
        tok = int(torch.argmax(logits))
        out.append(tok)
        if i + 1 < new_tokens:
            logits = forward_tokens(model, cache, torch.tensor([[tok]], device=device))
    _sync(device)
    held = sum(per_head) / len(per_head) if per_head else 0.0
    return out, {"needle_held": held, "exact_question": exact, "diag": diag}


def needle_held_per_head(cache, start: int, n: int) -> list[float]:
    """Share of the needle line's ``n`` tokens from ``start`` held at full resolution, per layer
    and KV head (layer-major), when the answer starts; the report's ``needle_held`` is their mean.

    Full resolution: a token slot of the tier buffer (sinks, pinned, heavy hitters, staged
    blocks, window) whose bias lets it be attended; summaries do not count. 1.0 everywhere means
    every layer can read the whole needle line; a wrong answer then points at the model, a low
    value at the selection (or eviction) of its block.
    """
    import torch

    span = torch.arange(start, start + n)
    shares = []
    for layer in cache.layers:
        pos, bias = layer.pos.cpu(), layer.bias.cpu()
        token_slot = torch.ones(pos.shape[1], dtype=torch.bool)
        token_slot[layer.SUMM:layer.STAGE] = False
        for head in range(pos.shape[0]):
            held = pos[head][token_slot & torch.isfinite(bias[head])]
            shares.append(float(torch.isin(span, held).float().mean()))
    return shares


def needle_block_ranks(cache, start: int, n: int) -> list[list[int]] | None:
    """Per layer and KV head (layer-major), the rank (0 = best) of each stored block holding a
    needle token in the question's exact choice (``SSALayer.exact_scores``), or None where no
    question chose exactly. A block that the pinned or heavy tier holds whole was not a candidate
    and ranks last."""
    ranks: list[list[int]] = []
    for layer in cache.layers:
        scores = getattr(layer, "exact_scores", None)
        if scores is None:
            return None
        scores = scores.float().cpu()
        b, sinks = layer.cfg.block_size, layer.cfg.sinks
        blocks = sorted({(p - sinks) // b for p in range(max(start, sinks), start + n)})
        for head in range(scores.shape[0]):
            ranks.append([int((scores[head] > scores[head, blk]).sum()) if blk < scores.shape[1] else -1
                          for blk in blocks])
    return ranks


def staged_blocks(cache) -> list[list[int]]:
    """Per layer and KV head (layer-major), the stored blocks staged when the answer starts
    (block ``i`` holds positions ``sinks + i * block_size`` on), for reading back which text
    sat beside the needle."""
    return [[int(b) for b in row if b >= 0] for layer in cache.layers for row in layer.staged_ids.tolist()]


def first_token_view(logits, first_id: int, top: int = 5) -> dict:
    """The first answer token's distribution: the expected token's probability and rank, and the
    ``top`` most likely tokens with theirs."""
    import torch

    p = torch.softmax(logits.float().flatten(), -1)
    best = torch.topk(p, top)
    out = {"top": [[int(i), round(float(v), 4)] for v, i in zip(best.values, best.indices)]}
    if 0 <= first_id < p.numel():
        out["want"] = [first_id, round(float(p[first_id]), 4), int((p > p[first_id]).sum())]
    return out


def run_dense(model, prompt: Prompt, new_tokens: int, device) -> tuple[list[int], dict]:
    """Plain transformers SDPA with a full KV cache (``model.generate``, greedy)."""
    import torch

    ids = torch.from_numpy(prompt.ids)[None].to(device)
    with torch.inference_mode():
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=model.config.pad_token_id)
    _sync(device)
    cfg = model.config
    kv_heads = getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n = ids.shape[1] + new_tokens
    kv = 2 * cfg.num_hidden_layers * kv_heads * head_dim * n * model.dtype.itemsize
    return gen[0, ids.shape[1]:].tolist(), {"gpu_bytes": int(kv), "store_bytes": 0, "pinned_overflow": 0}


DTYPES = ("auto", "float32", "bfloat16", "float16")


def model_dtype(name: str, device) -> torch.dtype:
    """The torch dtype ``name`` (one of :data:`DTYPES`) stands for on ``device``."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, name)


def load_models(model_dir: str | Path, device, dtype, methods: Sequence[str]):
    """(model for the SSA methods, model for dense) from one checkpoint (two instances)."""
    from transformers import AutoModelForCausalLM

    kw = dict(dtype=dtype, local_files_only=True)
    ssa_model = dense_model = None
    if any(m != "dense" for m in methods):
        ssa_model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kw).to(device).eval()
    if "dense" in methods:
        dense_model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), attn_implementation="sdpa", **kw).to(device).eval()
    return ssa_model, dense_model


def plan_cells(lengths: Sequence[int], depths: Sequence[float], keys: Sequence[int],
               methods: Sequence[str], rounds: int) -> list[tuple[int, int, int, int, str]]:
    """Every cell ``(round, length, keys, depth index, method)`` in the order they run.

    Depths are visited in ``rounds`` interleaved passes (round r takes depth indices
    ``r, r + rounds, ...``), each pass over all lengths from the shortest.
    """
    return [(r, length, k, di, m)
            for r in range(rounds)
            for length in sorted(lengths)
            for k in keys
            for di in range(r, len(depths), rounds)
            for m in methods]


# Seconds per token of each method relative to SSA's, for balancing shards: the tiny model on
# an H200 at 64K tokens (benchmarks/results/needle_h200/needle.log: 3.2 s SSA, 2.1 s infllm,
# 1.0 s h2o, 0.8 s streaming, 0.4 s dense).
METHOD_COST = {"dense": 0.15, "streaming": 0.25, "h2o": 0.3, "infllm": 0.65, "ssa": 1.0}


def shard_of(cells: Sequence[tuple[int, int, int, int, str]], shards: int) -> list[int]:
    """The shard (process) of each planned cell, balancing the estimated work.

    A cell's cost is its length times :data:`METHOD_COST` (prefill dominates and is linear in
    the length for every method but dense). Dearest first, each cell goes to the least loaded
    shard; ties go to the lower shard, so every process computes the same assignment.
    """
    cost = [c[1] * METHOD_COST.get(c[4], 1.0) for c in cells]
    load = [0.0] * shards
    out = [0] * len(cells)
    for i in sorted(range(len(cells)), key=lambda i: (-cost[i], i)):
        j = min(range(shards), key=lambda s: (load[s], s))
        out[i] = j
        load[j] += cost[i]
    return out


def run_benchmark(hay: Haystack, tokenizer, model_dir: str | Path, *, lengths: Sequence[int],
                  depths: Sequence[float], keys: Sequence[int], methods: Sequence[str],
                  configs: dict[str, Any], dense_max: int, max_seconds: float, seed: int,
                  device: str | None = None, dtype: str = "auto", rounds: int = 1,
                  shard: tuple[int, int] = (0, 1),
                  warmup: bool = True, skip: Collection[tuple] = (),
                  only: Collection[tuple] | None = None, jitter: int = 0, log=print,
                  on_progress=None, save_every: float = 30.0,
                  variants: dict[str, Any] | None = None) -> list[Cell]:
    """Run every (keys, length, depth, method) cell within ``max_seconds``.

    Cells run in the order of :func:`plan_cells`, so a time budget that runs out still leaves
    some depths measured at every length. A cell whose estimated time (from the last cell of
    the same method, scaled by length) would pass the deadline is recorded as not run.
    ``shard (i, n)``: run only the cells :func:`shard_of` gives process ``i`` of ``n`` (the
    prompts do not depend on the split; :func:`merge_runs` joins the outputs).
    ``skip``: cells already measured (:func:`cell_key` tuples, e.g. from ``--resume``) are
    left out of the plan before it is split; with ``only`` (e.g. from ``--retry``), every cell
    not in it is.
    ``jitter``: see :func:`build_prompt` (0: a depth is the same haystack line in every seed).
    ``dtype``: the model's dtype for every method (:func:`model_dtype`; ``auto``: bfloat16 on
    CUDA, float32 on the CPU).
    ``variants``: SSA configs answering each SSA cell's cue again on the same prefill
    (:func:`run_ssa`; :func:`question_variants` builds them), reported in ``Cell.diag``.
    ``on_progress(cells)`` is called after each (round, length), and after any cell that ends
    ``save_every`` seconds or more after the last call (a long cell is then not lost to a run
    stopped from outside in its round's next cell). With ``warmup``, each method
    first answers one unrecorded prompt of the shortest length, so that compiling the kernels
    (about 40 s on an H200) counts in no cell's seconds nor in the time estimates that decide
    which cells still fit the budget; the warm-up's own time does count against the budget.
    """
    import torch

    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    index, shards = shard
    if not 0 <= index < shards:
        raise ValueError(f"shard {index} of {shards} does not exist")

    def wanted(c: tuple) -> bool:
        key = (c[4], c[2], c[1], float(depths[c[3]]))  # cell_key's order
        return key not in skip and (only is None or key in only)

    plan = [c for c in plan_cells(lengths, depths, keys, methods, rounds) if wanted(c)]
    owner = shard_of(plan, shards)
    mine = [cell for cell, o in zip(plan, owner) if o == index]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ssa_model, dense_model = load_models(model_dir, dev, model_dtype(dtype, dev),
                                         sorted({c[4] for c in mine}))
    lines = LineBoundaries(tokenizer)
    t0 = time.time()
    last_rate: dict[str, float] = {}
    if warmup and mine:
        _warm_up(sorted({c[4] for c in mine}, key=METHODS.index), min(c[1] for c in mine), hay, lines,
                 tokenizer, configs, ssa_model, dense_model, dev, dense_max, seed, log)
    cells: list[Cell] = []
    prompt, prompt_key = None, None
    saved = time.time()
    for i, (r, length, k, di, m) in enumerate(mine):
        depth = float(depths[di])
        if prompt_key != (length, k, di):
            prompt = cell_prompt(hay, lines, tokenizer, seed, length, k, di, depths, jitter)
            prompt_key = (length, k, di)
        cells.append(_run_cell(m, k, length, depth, prompt, tokenizer, configs, ssa_model, dense_model,
                               dev, dense_max, t0 + max_seconds, last_rate, log, variants))
        group_done = i + 1 == len(mine) or mine[i + 1][:2] != (r, length)
        if on_progress is not None and (group_done or time.time() - saved >= save_every):
            on_progress(cells)
            saved = time.time()
    return cells


def _answer(m: str, prompt: Prompt, tokenizer, configs, ssa_model, dense_model, dev,
            variants: dict[str, Any] | None = None) -> tuple[list[int], dict]:
    """Method ``m``'s greedy continuation of ``prompt`` (the value's tokens and one more) and
    its stats; SSA's also ``variants``' (:func:`run_ssa`)."""
    value_ids = encode(tokenizer, prompt.asked.value)
    new_tokens = len(value_ids) + 1
    if m == "dense":
        return run_dense(dense_model, prompt, new_tokens, dev)
    return run_ssa(ssa_model, configs[m], prompt, new_tokens, dev, first_id=int(value_ids[0]),
                   variants=variants if m == "ssa" else None)


def _warm_up(methods: Sequence[str], length: int, hay: Haystack, lines: LineBoundaries, tokenizer,
             configs, ssa_model, dense_model, dev, dense_max: int, seed: int, log) -> None:
    """Each method answers one prompt of ``length`` tokens that no cell uses; nothing recorded."""
    rng = random.Random(f"{seed}:warm-up")
    needles, asked = make_needles(rng, 1)
    prompt = build_prompt(hay, lines, tokenizer, length, 0.5, needles, asked, rng)
    for m in methods:
        if m == "dense" and prompt.ids.size > dense_max:
            continue
        t = time.time()
        _answer(m, prompt, tokenizer, configs, ssa_model, dense_model, dev)
        log(f"{m:9s} warm-up at {length} tokens: {time.time() - t:.2f}s (not recorded)")


def _run_cell(m: str, k: int, length: int, depth: float, prompt: Prompt, tokenizer, configs,
              ssa_model, dense_model, dev, dense_max: int, deadline: float,
              last_rate: dict[str, float], log, variants: dict[str, Any] | None = None) -> Cell:
    import torch

    value = prompt.asked.value
    cell = Cell(m, k, length, depth, prompt_tokens=int(prompt.ids.size),
                needle_depth=prompt.needle_pos / prompt.ids.size, expected=value,
                copies=prompt.copies)
    if m == "dense" and prompt.ids.size > dense_max:
        cell.note = f"not run: {prompt.ids.size} tokens > --dense-max {dense_max}"
        return cell
    est = last_rate.get(m, 0.0) * prompt.ids.size
    if time.time() + est > deadline:
        cell.note = "not run: time budget"
        return cell
    t = time.time()
    try:
        out, stats = _answer(m, prompt, tokenizer, configs, ssa_model, dense_model, dev, variants)
    except torch.cuda.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        cell.note = f"out of memory: {str(e)[:120]}"
        return cell
    # The variants' answers (one prefill, see run_ssa) are not the method's time.
    dt = time.time() - t - stats.get("variant_seconds", 0.0)
    last_rate[m] = dt / prompt.ids.size
    text = tokenizer.decode(out)
    cell.correct = text.startswith(value)
    cell.output = text
    cell.seconds = dt
    cell.gpu_bytes = stats["gpu_bytes"]
    cell.store_bytes = stats["store_bytes"]
    cell.pinned_overflow = stats["pinned_overflow"]
    cell.needle_held = stats.get("needle_held")
    cell.diag = stats.get("diag")
    for name, v in (stats.get("variants") or {}).items():
        v_text = tokenizer.decode(v["ids"])
        cell.diag.setdefault("variants", {})[name] = {
            "output": v_text, "correct": v_text.startswith(value), "needle_held": v["needle_held"], **v["diag"]}
    log(f"{m:9s} keys={k} len={length:8d} depth={depth:.2f} "
        f"{'OK ' if cell.correct else 'no '} {dt:7.2f}s  want {value!r} got {text!r}")
    for name, v in (cell.diag or {}).get("variants", {}).items():
        log(f"{'':9s} variant {name}: {'OK ' if v['correct'] else 'no '} got {v['output']!r}")
    return cell


# --------------------------------------------------------------------------- reporting


def _fmt_len(n: int) -> str:
    if n >= 2**20 and n % 2**20 == 0:
        return f"{n // 2**20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


def summarize(cells: Sequence[Cell]) -> dict:
    """Accuracy, mean seconds and state bytes per (method, keys, length); None where nothing ran."""
    out: dict = {}
    for c in cells:
        key = (c.method, c.keys, c.length)
        s = out.setdefault(key, {"run": 0, "correct": 0, "seconds": [], "gpu": [], "store": [], "held": []})
        if c.correct is None:
            continue
        s["run"] += 1
        s["correct"] += int(c.correct)
        s["seconds"].append(c.seconds)
        s["gpu"].append(c.gpu_bytes)
        s["store"].append(c.store_bytes)
        if c.needle_held is not None:
            s["held"].append(c.needle_held)
    summary = {}
    for (m, k, n), s in out.items():
        summary[f"{m}|{k}|{n}"] = {
            "method": m, "keys": k, "length": n, "run": s["run"],
            "accuracy": s["correct"] / s["run"] if s["run"] else None,
            "mean_seconds": float(np.mean(s["seconds"])) if s["seconds"] else None,
            "gpu_mib": float(np.max(s["gpu"])) / 2**20 if s["gpu"] else None,
            "store_mib": float(np.max(s["store"])) / 2**20 if s["store"] else None,
            "needle_held": float(np.mean(s["held"])) if s["held"] else None,
        }
    return summary


def markdown(cells: Sequence[Cell], summary: dict, meta: dict) -> str:
    lengths = sorted({c.length for c in cells})
    methods = [m for m in METHODS if any(c.method == m for c in cells)]
    keys = sorted({c.keys for c in cells})
    head = "| method | keys | " + " | ".join(_fmt_len(n) for n in lengths) + " |"
    sep = "| --- | --- | " + " | ".join("---" for _ in lengths) + " |"

    def table(field: str, fmt) -> list[str]:
        rows = [head, sep]
        for m in methods:
            for k in keys:
                vals = []
                for n in lengths:
                    s = summary.get(f"{m}|{k}|{n}")
                    v = None if s is None else s[field]
                    vals.append("n/a" if v is None else fmt(v, s))
                rows.append(f"| {m} | {k} | " + " | ".join(vals) + " |")
        return rows

    lines = [
        "# Needle in a haystack of packed code",
        "",
        f"Model: `{meta['model']}` in {_run_dtype(meta)}; "
        f"device: {meta['device']}; seed {meta['seed']}; "
        + (f"asked needle within {meta['jitter']} tokens of its depth (jitter); " if meta.get("jitter") else "")
        + f"{len({c.depth for c in cells})} depths; budget {meta['budget']} slots per layer and KV head; "
        f"chunk {meta['chunk_size']}.",
        f"Haystack: {', '.join(r['repo'] + ' (' + str(r['tokens']) + ' tokens)' for r in meta['haystack']['repos'])}; "
        f"lengths above {meta['haystack']['tokens']} tokens repeat it.",
        "",
        "## Exact-match accuracy over depths (`n/a`: not run, see needle.json notes)",
        "",
        *table("accuracy", lambda v, s: f"{v:.2f} ({s['run']})"),
        "",
        "## Mean seconds per cell (prefill + greedy answer)",
        "",
        *table("mean_seconds", lambda v, s: f"{v:.2f}"),
        "",
        "## Needle line held at full resolution when the answer starts (mean over layers, KV heads, depths)",
        "",
        "Low where the method lost or never selected the needle's block; high with a wrong answer "
        "points at the model. Dense holds everything (`n/a`).",
        "",
        *table("needle_held", lambda v, s: f"{v:.2f}"),
        "",
        "## Attention state on the accelerator, MiB (dense: its KV cache)",
        "",
        *table("gpu_mib", lambda v, s: f"{v:.1f}"),
        "",
        "## Method configurations",
        "",
    ]
    defaults = _with_defaults({})
    for m, cfg in meta["configs"].items():
        # summary_tokens and the question's fields only where they differ from the defaults (older
        # reports lack some of them); values as JSON has them, sequences comma-separated.
        cfg = _with_defaults(cfg)
        lines.append(f"- `{m}`: " + ", ".join(
            f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in cfg.items()
            if k in ("sinks", "pinned", "heavy", "window", "summaries", "top_k", "block_size", "store", "chunk_size")
            or (k == "summary_tokens" and v) or (k in QUESTION_FIELDS and v != defaults[k])))
    if "dense" in methods:
        lines.append(f"- `dense`: transformers SDPA, full KV cache, run up to {meta['dense_max']} tokens")
    return "\n".join(lines) + "\n"


def heatmaps(cells: Sequence[Cell], out_dir: Path) -> list[Path]:
    """One PNG per method: depth x length, a panel per key count (green right, red wrong, grey not run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    lengths = sorted({c.length for c in cells})
    depths = sorted({c.depth for c in cells})
    keys = sorted({c.keys for c in cells})
    paths = []
    cmap = ListedColormap(["#d9534f", "#5cb85c"]).with_extremes(bad="#cccccc")
    for m in [m for m in METHODS if any(c.method == m for c in cells)]:
        width = len(keys) * max(4.0, 1.5 + 0.6 * len(lengths))
        fig, axes = plt.subplots(1, len(keys), figsize=(width, 4.5), squeeze=False)
        for ax, k in zip(axes[0], keys):
            grid = np.full((len(depths), len(lengths)), np.nan)
            for c in cells:
                if c.method == m and c.keys == k and c.correct is not None:
                    grid[depths.index(c.depth), lengths.index(c.length)] = float(c.correct)
            ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto",
                      origin="upper", interpolation="nearest")
            ax.set_xticks(range(len(lengths)), [_fmt_len(n) for n in lengths], rotation=45)
            ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths])
            ax.set_xlabel("context length (tokens)")
            ax.set_ylabel("needle depth")
            ax.set_title(f"{m}: {'1 key' if k == 1 else f'{k} keys, 1 asked'}")
        fig.suptitle("exact match: green right, red wrong, grey not run", fontsize=9)
        fig.tight_layout()
        p = out_dir / f"needle_{m}.png"
        with replacing(p) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        paths.append(p)
    return paths


def write_outputs(cells: Sequence[Cell], meta: dict, out: Path) -> list[Path]:
    """``needle.json``, ``needle.md`` and the heatmaps in ``out`` (each replaced whole)."""
    summary = summarize(cells)
    text = json.dumps({"meta": meta, "summary": list(summary.values()), "cells": [asdict(c) for c in cells]},
                      indent=1) + "\n"
    write_text(out / "needle.json", text)
    write_text(out / "needle.md", markdown(cells, summary, meta))
    return heatmaps(cells, out)


def cell_key(c: Cell) -> tuple[str, int, int, float]:
    """What names a cell across runs: (method, keys, length, depth)."""
    return (c.method, c.keys, c.length, c.depth)


def read_run(folder: Path) -> tuple[list[Cell], dict]:
    """The cells and meta of a run's (or a merged report's) ``needle.json``."""
    path = Path(folder) / "needle.json"
    try:
        data = json.loads(path.read_text())
        return [Cell(**c) for c in data["cells"]], data["meta"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a needle.json ({e})") from None


def _run_dtype(meta: dict) -> str:
    """The model dtype of a run; reports written before ``--dtype`` used ``auto``'s."""
    return meta.get("dtype") or ("float32" if meta.get("device") == "cpu" else "bfloat16")


def benchmark_differs(a: dict, b: dict) -> list[str]:
    """The meta fields in which two runs are not the same benchmark (empty: they are).

    Runs may cover different lengths and methods; a method both ran must have the same config.
    """
    diff = [k for k in ("model", "seed", "budget", "chunk_size", "haystack") if a.get(k) != b.get(k)]
    if a.get("jitter", 0) != b.get("jitter", 0):  # reports from before --jitter had none
        diff.append("jitter")
    if _run_dtype(a) != _run_dtype(b):
        diff.append("dtype")
    ca, cb = a.get("configs") or {}, b.get("configs") or {}
    if any(_with_defaults(ca[m]) != _with_defaults(cb[m]) for m in ca.keys() & cb.keys()):
        diff.append("configs")
    return diff


def _with_defaults(config: dict) -> dict:
    """A report's SSAConfig fields, those it predates filled in with today's defaults (a field
    added later was, until then, the behaviour its default keeps), as JSON reads them back
    (tuples as lists)."""
    return json.loads(json.dumps({**SSAConfig().to_dict(), **config}))


def _earlier_cells(folder: Path, meta: dict, option: str, allow: Sequence[str] = (),
                   same=None) -> tuple[list[Cell], dict]:
    """The cells and meta of an earlier run that ``option`` (``--resume``, ``--retry``) builds on;
    it must be the same benchmark as ``meta`` but for the fields in ``allow``
    (:func:`benchmark_differs`), both metas seen through ``same`` if given (e.g.
    ``needle_pool._without_tree``)."""
    cells, prev = read_run(folder)
    view = same or (lambda m: m)
    diff = [d for d in benchmark_differs(view(prev), view(meta)) if d not in allow]
    if diff:
        raise ValueError(f"{option} {folder}: another benchmark (differs in {', '.join(diff)})")
    return cells, prev


def merge_runs(folders: Sequence[Path], out: Path) -> tuple[list[Cell], dict]:
    """Join the ``needle.json`` of shards (``--shard i/n``) or of resumed runs into one report.

    The folders must come from the same benchmark (:func:`benchmark_differs`). A cell that one
    folder left unrun and another measured takes the measurement (how a ``--resume`` run fills
    an earlier report); a cell measured in two folders is refused.
    """
    measured: dict[tuple, Cell] = {}
    unrun: dict[tuple, Cell] = {}
    meta: dict | None = None
    for folder in folders:
        part, m = read_run(folder)
        if meta is None:
            meta = dict(m, shards=[], configs=dict(m.get("configs") or {}))
        diff = benchmark_differs(m, meta)
        if diff:
            raise ValueError(f"{Path(folder) / 'needle.json'}: another benchmark than {folders[0]} "
                             f"(differs in {', '.join(diff)})")
        meta["configs"].update(m.get("configs") or {})
        meta["shards"].append({"folder": str(folder), "shard": m.get("shard"), "seconds": m.get("seconds"),
                               "device": m.get("device")})
        for c in part:
            key = cell_key(c)
            if c.correct is None:
                unrun.setdefault(key, c)
            elif key in measured:
                raise ValueError(f"{Path(folder) / 'needle.json'}: cell {key} is also in another shard")
            else:
                measured[key] = c
    if meta is None:
        raise ValueError("no shard folders given")
    meta["seconds"] = max((s["seconds"] or 0.0) for s in meta["shards"])
    cells = [*measured.values(), *(c for k, c in unrun.items() if k not in measured)]
    cells.sort(key=lambda c: (METHODS.index(c.method), c.keys, c.length, c.depth))
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(cells, meta, out)
    return cells, meta


# --------------------------------------------------------------------------- CLI


def parse_lengths(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        mult = 1
        if part[-1] in "km":
            mult = 1024 if part[-1] == "k" else 2**20
            part = part[:-1]
        try:
            n = int(float(part) * mult)
        except ValueError:
            raise ValueError(f"bad length {part!r}") from None
        if n < 128:
            raise ValueError(f"length {n} is too short (at least 128 tokens)")
        out.append(n)
    if not out:
        raise ValueError("no lengths given")
    return out


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    from ssa_code.models import TINY_MODEL_DIR

    ap = argparse.ArgumentParser(prog=prog or "python -m ssa_code.bench.needle", description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--repo", action="append", help="git repository to pack as the haystack (repeatable)")
    src.add_argument("--tokens", type=Path, help="haystack written by --pack-only")
    src.add_argument("--merge", type=Path, nargs="+", metavar="DIR",
                     help="join the --out folders of --shard runs into one report in --out")
    ap.add_argument("--pack-only", type=Path, help="pack --repo into this .npz file and stop")
    ap.add_argument("--exclude", action="append", default=[], help="path glob left out of the pack (repeatable)")
    ap.add_argument("--max-tokens", type=int, default=None, help="keep only the first tokens of the pack")
    ap.add_argument("--model", default=str(TINY_MODEL_DIR), help="checkpoint folder (default: bundled tiny)")
    ap.add_argument("--out", type=Path, help="folder for needle.json, needle.md, needle_<method>.png")
    ap.add_argument("--lengths", default=",".join(_fmt_len(n) for n in DEFAULT_LENGTHS),
                    help="comma-separated context lengths, e.g. 4k,16k,1m")
    ap.add_argument("--depths", type=int, default=10, help="number of depths in [0, 1]")
    ap.add_argument("--keys", default="1,4", help="needle counts, e.g. 1,4 (multi-key: one asked)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--budget", type=int, default=4096, help="slots per layer and KV head, all methods")
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--sinks", type=int, default=64)
    ap.add_argument("--store", default="host", choices=("host", "disk", "none"))
    ap.add_argument("--dense-max", type=int, default=131072, help="longest context run with dense attention")
    ap.add_argument("--max-minutes", type=float, default=8.0, help="time budget for all cells")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="auto", choices=DTYPES,
                    help="the model's dtype for every method (auto: bfloat16 on CUDA, float32 on CPU)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved passes over the depths (each covers all lengths)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jitter", type=int, default=0, metavar="TOKENS",
                    help="place the asked needle at a line drawn by the seed within TOKENS of its "
                         "depth (default 0: a depth is the same haystack line in every seed)")
    ap.add_argument("--shard", default="0/1", metavar="I/N",
                    help="run only this process's share of the cells (processes 0..N-1, e.g. one "
                         "per GPU or several per GPU), then join their --out folders with --merge")
    ap.add_argument("--resume", type=Path, metavar="DIR",
                    help="skip the cells that DIR's needle.json (an earlier run of the same "
                         "benchmark, or its merged report) measured; join them with --merge")
    ap.add_argument("--retry", type=Path, metavar="DIR",
                    help="run only the cells that DIR's needle.json answered wrong (of the lengths, "
                         "keys and methods asked), e.g. with --ssa-set to see whether a change wins "
                         "them back; DIR must be the same benchmark but for the configs")
    ap.add_argument("--ssa-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="change one SSAConfig field of the ssa method only, for ablations "
                         "(e.g. summaries=0; repeatable; recorded in needle.json's configs)")
    ap.add_argument("--question-variant", action="append", default=[], metavar="NAME:FIELD=VALUE[;...]",
                    help="also answer each SSA cell's cue with these question-time fields changed "
                         f"({', '.join(QUESTION_FIELDS)}), on the same prefill; in needle.json's "
                         "cells (diag.variants) and meta (question_variants). Repeatable")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the unrecorded warm-up prompt per method (kernel compilation then "
                         "lands in the first cell's seconds)")
    ap.add_argument("--bound-question", action="store_true",
                    help="let the cue choose blocks by the index's bounds even where the cache can "
                         "score the whole store exactly (SSACache.select_exact)")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    if args.merge:
        if args.out is None:
            return fail("--merge needs --out")
        try:
            cells, _ = merge_runs(args.merge, args.out)
        except ValueError as e:
            return fail(str(e))
        print((args.out / "needle.md").read_text())
        print(f"merged {len(cells)} cells from {len(args.merge)} folders into {args.out}", file=sys.stderr)
        return 0
    try:
        shard = tuple(int(x) for x in args.shard.split("/"))
        if len(shard) != 2 or not 0 <= shard[0] < shard[1]:
            raise ValueError
    except ValueError:
        return fail(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}")
    model_dir = Path(args.model)
    tok_dir = model_dir if (model_dir / "tokenizer.json").is_file() else TINY_MODEL_DIR
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)

    if args.repo:
        hay = pack_haystack(args.repo, tokenizer, args.exclude, args.max_tokens)
        print(f"packed {hay.meta['tokens']} tokens from {len(args.repo)} repositories", file=sys.stderr)
        if args.pack_only:
            hay.save(args.pack_only)
            print(f"wrote {args.pack_only}", file=sys.stderr)
            return 0
    else:
        if args.pack_only:
            return fail("--pack-only needs --repo")
        try:
            hay = Haystack.load(args.tokens)
        except ValueError as e:
            return fail(str(e))
    if hay.meta.get("tokenizer") != tokenizer_digest(tokenizer):
        return fail("the haystack was packed with another tokenizer than the model's")
    if args.out is None:
        return fail("--out is required unless --pack-only")
    try:
        lengths = parse_lengths(args.lengths)
        keys = [int(k) for k in args.keys.split(",") if k.strip()]
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if args.depths < 1 or any(k < 1 for k in keys):
            raise ValueError("--depths and --keys must be >= 1")
        if args.jitter < 0:
            raise ValueError(f"--jitter must be >= 0, got {args.jitter}")
        from transformers import AutoConfig

        mcfg = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        configs = method_configs(args.budget, chunk_size=args.chunk_size, block_size=args.block_size,
                                 sinks=args.sinks, max_position=mcfg.max_position_embeddings,
                                 store=args.store, exact_question=not args.bound_question)
        if args.ssa_set:
            configs["ssa"] = configs["ssa"].replace(**parse_fields(configs["ssa"], args.ssa_set, "--ssa-set"))
            if configs["ssa"].capacity > args.budget + args.block_size:
                raise ValueError(f"--ssa-set gives ssa {configs['ssa'].capacity} slots, above "
                                 f"--budget {args.budget} (and one spare block)")
        variants = question_variants(configs["ssa"], args.question_variant)
        if variants and "ssa" not in methods:
            raise ValueError("--question-variant needs the ssa method")
    except ValueError as e:
        return fail(str(e))
    depths = depth_grid(args.depths)
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    meta = {
        "model": str(model_dir), "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
        "dtype": str(model_dtype(args.dtype, dev)).removeprefix("torch."),
        "seed": args.seed, "jitter": args.jitter, "budget": args.budget, "chunk_size": args.chunk_size,
        "dense_max": args.dense_max, "haystack": hay.meta, "rounds": args.rounds,
        "warmup": not args.no_warmup,
        "configs": {m: c.to_dict() for m, c in configs.items() if m in methods},
        "torch": torch.__version__, "argv": list(argv) if argv is not None else sys.argv[1:],
        "shard": list(shard),
    }
    if variants:
        meta["question_variants"] = {name: {f: getattr(c, f) for f in QUESTION_FIELDS}
                                     for name, c in variants.items()}
    skip: set[tuple] = set()
    only: set[tuple] | None = None
    try:
        if args.resume:
            done, _ = _earlier_cells(args.resume, meta, "--resume")
            skip = {cell_key(c) for c in done if c.correct is not None}
            print(f"--resume: {len(skip)} cells already measured in {args.resume}", file=sys.stderr)
        if args.retry:
            # A retry usually changes a config (--ssa-set): that is what it is for. A haystack
            # re-packed on another machine differs in its git tree id (ignored files such as
            # __pycache__ count there, the packer skips them): compared without it, as
            # needle_pool --haystack does, and the retried prompts are checked.
            from ssa_code.bench.needle_pool import _without_tree, check_prompts

            prev, prev_meta = _earlier_cells(args.retry, meta, "--retry", allow=("configs",),
                                             same=_without_tree if args.tokens is not None else None)
            only = {cell_key(c) for c in prev if c.correct is False}
            if prev_meta.get("haystack") != meta["haystack"]:
                # The cells this run will redo: wrong before, and in this run's plan.
                check_prompts([(args.retry, prev, prev_meta)], args.tokens,
                              select=lambda c: (cell_key(c) in only and c.method in methods
                                                and c.length in lengths and c.keys in keys))
            meta["retry"] = str(args.retry)
            print(f"--retry: {len(only)} cells answered wrong in {args.retry}", file=sys.stderr)
    except ValueError as e:
        return fail(str(e))
    t0 = time.time()

    def write(cells: Sequence[Cell]) -> list[Path]:
        # Written after every length and every long cell, so a run cut short still leaves its
        # measurements.
        meta["seconds"] = round(time.time() - t0, 1)
        return write_outputs(cells, meta, args.out)

    try:
        cells = run_benchmark(hay, tokenizer, model_dir, lengths=lengths, depths=depths, keys=keys,
                              methods=methods, configs=configs, dense_max=args.dense_max,
                              max_seconds=args.max_minutes * 60, seed=args.seed, device=dev,
                              dtype=args.dtype,
                              rounds=args.rounds, shard=shard, warmup=not args.no_warmup, skip=skip,
                              only=only, jitter=args.jitter, variants=variants,
                              log=lambda s: print(s, file=sys.stderr, flush=True),
                              on_progress=write)
    except ValueError as e:
        return fail(str(e))
    pngs = write(cells)
    print((args.out / "needle.md").read_text())
    print(f"wrote {args.out / 'needle.json'}, {args.out / 'needle.md'}, "
          f"{', '.join(p.name for p in pngs)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
