"""SSAConfig: the sizes of every tier of the Streaming Sparse Attention state, validated.

All sizes are per layer and per KV head, in tokens unless named otherwise. The state
they describe is allocated once and never grows, so GPU memory stays constant however
long the context gets (see ``docs/INTERFACES.md`` and ``../shared/DESIGN.md``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

StoreKind = Literal["host", "disk", "none"]

# Fields that only a question's exact choice reads (SSALayer._exact_select): a cache can answer
# under configurations that differ in these alone (SSACache.rewind, SSAConfig.check_question_variant).
QUESTION_FIELDS = ("exact_before", "exact_after", "exact_top_k", "exact_margin", "exact_tries")
KernelChoice = Literal["auto", "triton", "torch"]


@dataclass(frozen=True)
class SSAConfig:
    """Sizes and knobs of the SSA cache.

    Tiers (DESIGN.md, "The SSA state"):
        sinks: first tokens of the sequence, never evicted.
        pinned: budget for spans the caller pins (file headers, repository map, question);
            overflow is counted and reported by ``SSACache.pinned_overflow``.
        heavy: tokens with the highest accumulated, decayed attention mass (H2O-style).
        window: the most recent tokens at full resolution; tokens leave it a block at a time.
        summaries: slots holding (mean key, mean value, count n) of evicted spans, attended
            with logit ``q.k + log n``; when full, the older half merges pairwise.
        summary_tokens: the most tokens the summaries together stand for in attention (0: no
            limit). When they cover ``N`` more, every summary's ``log n`` is lowered by
            ``log(N / summary_tokens)``: their relative weights stay, their total weight is that
            of ``summary_tokens`` tokens, e.g. no more background than the model was trained on.
            On the tiny model at 1M tokens, 4096 neither won nor lost needles (BENCHMARKS.md).
        index_size: entries (per-channel key bounds of one evicted block) scored for
            retrieval; when full, the older half merges pairwise into coarser entries. 8192
            entries cover 512K tokens block by block at block_size 64, and keep a 7B-class
            state (28 layers, 4 KV heads of 128) at 1.85 GiB.
        top_k: blocks fetched at full resolution from the store for each query chunk.
        block_size: tokens per evicted block (the unit of storage, indexing and retrieval).

    Scoring:
        threshold: a block takes part only if its softmax share among the index entries
            (per KV head) is at least this; 0 keeps the top_k best. A learned threshold can
            replace it later.
        exact_question: the engine's question chunk chooses its staged blocks by exact
            attention of its last ``observe`` queries over every stored block (one read of
            the store's keys per layer and question) instead of the index's bounds, and the
            answer keeps them (``SSACache.select_exact``). On the tiny model the bounds rank a
            needle's block about at chance; exact attention ranks it near the top.
        exact_before, exact_after: the exact choice stages the best ``top_k // (1 +
            exact_before + exact_after)`` blocks each with that many neighbours in front of
            and behind it (then the next best), so that a line straddling a block boundary
            stays whole (``scoring.pick_with_neighbours``).
        exact_top_k: blocks of the exact choice (0: ``top_k``). Fewer bring fewer lookalikes
            beside the block the question needs; more than ``top_k`` enlarge the staging tier
            to that many blocks, which prefill chunks and decode still fill with ``top_k``.
        exact_margin: per head, the exact choice leads only with blocks whose score (the log of
            their largest attention share) is within this many nats of the head's best block
            (0: no margin). A head that finds one block stages it and its neighbours, not
            ``top_k`` lookalikes; a head without a clear favourite still takes its best.
        exact_tries: further ``(exact_before, exact_after)`` pairs, flattened (``(1, 2)``: one
            more choice, with one block in front and two behind each best block). The question
            is then read once per choice from the same state (``SSACache.checkpoint``) and the
            answer comes from the choice whose first answer token the model gives the highest
            probability (``engine.question.prefill_question``); the first choice wins ties.
            Which neighbours a needle needs depends on where its line meets block boundaries,
            and a choice that misses part of it leaves the model unsure (BENCHMARKS.md,
            needle). Each choice costs one more pass over the question.

    Heavy hitters:
        heavy_half_life: tokens of progress after which accumulated mass counts half.
        observe: last queries of each prefill chunk whose attention mass is accumulated
            (an observation window, as in SnapKV); every decode query is observed.

    Positions (InfLLM-style, see ``positions.py``):
        far_distance: the largest query-key distance a far-tier key is shown at; farther
            keys are re-rotated to exactly this distance. ``None`` derives it from the
            model's trained range (``max_position_embeddings``) minus one chunk and one
            rebase step, so that nothing is re-rotated while the context fits that range.
        rebase_every: during decode, far keys are re-rotated once per this many tokens.

    Engine:
        chunk_size: prefill chunk length (queries per forward). Longer chunks pay SSA's
            per-chunk bookkeeping less often (on an H200 a 7B model's 1M-token prefill took
            94.6 s in 8K chunks); :meth:`fit` caps it at a quarter of the trained range.
        decode_refresh: during decode, blocks are re-scored and re-fetched, and attention
            mass observed, once per this many tokens (1 = every token); a change of the
            index forces a refresh at the next token.
        decode_evict: during decode, the window gives up blocks this many at a time: an
            eviction updates every tier (index, summaries, heavy hitters) at a cost that hardly
            depends on how many blocks leave, so decode pays it once per
            ``decode_evict * block_size`` tokens; the window ring holds that many more slots.
        score_queries: prefill scores the index with at most this many of a chunk's queries
            (its last ``observe`` queries and an even stride over the rest; 0 = all).
            Scoring costs as much as a tenth of the chunk's attention per query kept.
        store: where full-resolution evicted blocks live: host RAM, a disk memmap under
            ``store_dir``, or nowhere (store-free mode: no retrieval).
        kernels: ``auto`` uses Triton on CUDA and the PyTorch reference elsewhere.
    """

    sinks: int = 64
    pinned: int = 4096
    heavy: int = 1024
    window: int = 4096
    summaries: int = 1024
    summary_tokens: int = 0
    block_size: int = 64
    index_size: int = 8192
    top_k: int = 32
    threshold: float = 0.0
    exact_question: bool = True
    exact_before: int = 0
    exact_after: int = 1
    exact_top_k: int = 0
    exact_margin: float = 0.0
    exact_tries: tuple[int, ...] = ()
    heavy_half_life: int = 4096
    observe: int = 64
    far_distance: int | None = None
    rebase_every: int = 256
    chunk_size: int = 8192
    decode_refresh: int = 8
    decode_evict: int = 8
    score_queries: int = 4096
    store: StoreKind = "host"
    store_dir: str | None = None
    kernels: KernelChoice = "auto"

    def __post_init__(self) -> None:
        nonneg = ("sinks", "pinned", "heavy", "summaries", "summary_tokens", "top_k", "score_queries",
                  "exact_before", "exact_after", "exact_top_k")
        positive = ("window", "block_size", "index_size", "heavy_half_life", "observe",
                    "rebase_every", "chunk_size", "decode_refresh", "decode_evict")
        for name in nonneg:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"SSAConfig.{name} must be an integer >= 0, got {value!r}")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SSAConfig.{name} must be an integer > 0, got {value!r}")
        if self.window < self.block_size:
            raise ValueError(
                f"SSAConfig.window must be at least block_size ({self.block_size}), got {self.window!r}"
            )
        if not (isinstance(self.threshold, (int, float)) and 0.0 <= self.threshold < 1.0
                and math.isfinite(self.threshold)):
            raise ValueError(f"SSAConfig.threshold must be in [0, 1), got {self.threshold!r}")
        if not (isinstance(self.exact_margin, (int, float)) and self.exact_margin >= 0.0
                and math.isfinite(self.exact_margin)):
            raise ValueError(f"SSAConfig.exact_margin must be a finite number >= 0, got {self.exact_margin!r}")
        tries = self.exact_tries
        if not (isinstance(tries, tuple) and len(tries) % 2 == 0
                and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tries)):
            raise ValueError("SSAConfig.exact_tries must be a tuple of (exact_before, exact_after) pairs of "
                             f"integers >= 0, flattened, got {tries!r}")
        if not isinstance(self.exact_question, bool):
            raise ValueError(f"SSAConfig.exact_question must be True or False, got {self.exact_question!r}")
        if self.far_distance is not None and (
            not isinstance(self.far_distance, int) or self.far_distance <= 0
        ):
            raise ValueError(f"SSAConfig.far_distance must be a positive integer or None, got {self.far_distance!r}")
        if self.store not in ("host", "disk", "none"):
            raise ValueError(f"SSAConfig.store must be one of 'host', 'disk', 'none', got {self.store!r}")
        if self.store == "disk" and not self.store_dir:
            raise ValueError("SSAConfig.store_dir must name a folder when store='disk', got None")
        if self.kernels not in ("auto", "triton", "torch"):
            raise ValueError(f"SSAConfig.kernels must be one of 'auto', 'triton', 'torch', got {self.kernels!r}")

    # -- derived sizes -------------------------------------------------------------------

    @property
    def stage_blocks(self) -> int:
        """Blocks of the staging tier: ``top_k``, or the question's ``exact_top_k`` if more."""
        if self.store == "none" or self.top_k == 0:
            return 0
        return max(self.top_k, self.exact_top_k)

    @property
    def staging(self) -> int:
        """Slots for full-resolution blocks fetched for the current query (``stage_blocks``)."""
        return self.stage_blocks * self.block_size

    def check_question_variant(self, other: "SSAConfig") -> None:
        """Raise ValueError unless ``other`` differs from this configuration in
        :data:`QUESTION_FIELDS` only and its question fits this configuration's staging tier,
        i.e. unless a cache built with this one can answer a question under ``other``."""
        changed = [f.name for f in dataclasses.fields(self)
                   if f.name not in QUESTION_FIELDS and getattr(self, f.name) != getattr(other, f.name)]
        if changed:
            raise ValueError(f"a question variant may change only {', '.join(QUESTION_FIELDS)}; "
                             f"this one changes {', '.join(changed)}")
        if other.stage_blocks > self.stage_blocks:
            raise ValueError(f"exact_top_k={other.exact_top_k} needs a staging tier of {other.stage_blocks} "
                             f"blocks, this configuration has {self.stage_blocks} (a larger exact_top_k "
                             "enlarges it)")

    def question_choices(self) -> list["SSAConfig"]:
        """The configurations a question's exact choice is tried with: this one, then one per
        ``exact_tries`` pair (each without further tries)."""
        first = self.replace(exact_tries=())
        pairs = zip(self.exact_tries[::2], self.exact_tries[1::2])
        return [first] + [first.replace(exact_before=b, exact_after=a) for b, a in pairs]

    @property
    def ring(self) -> int:
        """Window ring capacity: eviction is block-aligned and decode lets ``decode_evict`` blocks
        gather before it evicts, so the ring holds up to ``window + decode_evict * block`` tokens."""
        return self.window + self.decode_evict * self.block_size

    @property
    def capacity(self) -> int:
        """Slots of the per-layer tier buffer (every tier at full resolution)."""
        return self.sinks + self.pinned + self.heavy + self.summaries + self.staging + self.ring

    def exact_tokens(self) -> int:
        """Context length up to which SSA attends to every token at full resolution.

        Past ``sinks + window`` blocks leave the window; with a store they are all
        retrieved while they number at most ``top_k`` (and ``threshold`` is 0).
        """
        extra = self.top_k * self.block_size if self.store != "none" else 0
        return self.sinks + self.window + extra

    # -- presets ---------------------------------------------------------------------

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "SSAConfig":
        """A named preset, optionally with fields overridden.

        - ``default``: the sizes of DESIGN.md (7B-class model, about 1 GiB of state per 28 layers).
        - ``small``: a few hundred tokens per tier, for CPU tests and the tiny model.
        - ``exact``: large window and retrieval budget: exact up to about 32K tokens.
        - ``streaming``: sinks + window only (StreamingLLM baseline).
        - ``h2o``: sinks + heavy hitters + window (H2O baseline).
        - ``infllm``: sinks + window + retrieval, no summaries or heavy hitters (InfLLM-like).
        """
        presets: dict[str, dict[str, Any]] = {
            "default": {},
            "small": dict(sinks=16, pinned=256, heavy=64, window=256, summaries=64, block_size=16,
                          index_size=1024, top_k=8, observe=16, chunk_size=256, rebase_every=64,
                          heavy_half_life=512),
            "exact": dict(window=16384, top_k=256, pinned=4096),
            "streaming": dict(pinned=0, heavy=0, summaries=0, top_k=0, store="none"),
            "h2o": dict(pinned=0, summaries=0, top_k=0, store="none"),
            "infllm": dict(pinned=0, heavy=0, summaries=0),
        }
        if name not in presets:
            raise ValueError(f"unknown SSAConfig preset {name!r}; choose one of {', '.join(sorted(presets))}")
        return dataclasses.replace(cls(), **{**presets[name], **overrides})

    def fit(self, model_config: Any) -> "SSAConfig":
        """This configuration with chunk and window shrunk to the model's trained range.

        Window keys are seen at their true distance (up to ``window + block_size`` plus the
        chunk in prefill, ``window + decode_evict * block_size`` in decode), so a model trained
        on ``L`` positions gets ``chunk_size <= L / 4`` and ``window + block_size +
        max(chunk_size, decode_evict * block_size) <= L``; far tiers then sit at
        ``far_distance`` (derived from ``L``). Sizes that already fit are returned unchanged.
        """
        trained = int(getattr(model_config, "max_position_embeddings", 0) or 0)
        if trained <= 0:
            return self
        b = self.block_size
        chunk = min(self.chunk_size, max(b, trained // 4))
        window = min(self.window, trained - max(chunk, self.decode_evict * b) - b)
        window -= window % b
        if window < b:
            raise ValueError(f"SSAConfig.block_size {b} leaves no window within the model's {trained} positions")
        if (chunk, window) == (self.chunk_size, self.window):
            return self
        return dataclasses.replace(self, chunk_size=chunk, window=window)

    def replace(self, **changes: Any) -> "SSAConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
