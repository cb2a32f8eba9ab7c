"""One question about a repository, end to end: pack, prefill (or reuse), ask, stream, cite.

The sequence the model sees is ``prompt prefix + packed repository + question suffix``: the
prompt template (``prompts/<kind>.txt``) is rendered through the model's chat template with a
marker where the repository goes, and split there. Everything before the question does not
depend on it, so the SSA state after ``prefix + repository`` is saved (``state.py``) and a
second question on the same content starts from it.

Sources: while the answer is generated the cache accumulates attention mass per position block
(``cache.source_mass()``); mapped through the packer's file spans it gives the share of the
answer's attention that each file drew.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, Iterator, Protocol, Sequence

from ssa_code.attention.anchors import merge_spans
from ssa_code.engine.generate import GenerationConfig, generate, repeated_line, stop_token_ids
from ssa_code.engine.models import LoadedModel
from ssa_code.engine.state import StateCorrupted, StateKey, StateStore
from ssa_code.errors import UserError

REPO_MARK = "\x00REPOSITORY\x00"
QUESTION_MARK = "\x00QUESTION\x00"
KINDS = ("ask", "explain", "review")


# -- prompts -------------------------------------------------------------------------------


def load_template(kind: str) -> str:
    """The text of ``prompts/<kind>.txt`` (package data of ``ssa_code.prompts``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; expected one of {', '.join(KINDS)}")
    return resources.files("ssa_code.prompts").joinpath(f"{kind}.txt").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Prompt:
    """Token ids before the repository, and after it (the question and the generation prompt)."""

    prefix_ids: list[int]
    suffix_ids: list[int]


def build_prompt(tokenizer: Any, kind: str, question: str) -> Prompt:
    """Render ``prompts/<kind>.txt`` through the tokenizer's chat template, split at the repository.

    A tokenizer without a chat template gets the plain text followed by ``Answer:``.
    """
    template = load_template(kind)
    if template.count("{repository}") != 1 or "{question}" not in template:
        raise ValueError(f"prompts/{kind}.txt must contain {{repository}} once and {{question}}")
    if template.index("{repository}") > template.index("{question}"):
        raise ValueError(f"prompts/{kind}.txt must put {{repository}} before {{question}}")
    user = template.strip().replace("{repository}", REPO_MARK).replace("{question}", QUESTION_MARK)
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
        )
    else:
        rendered = user + "\n\nAnswer:\n"
    prefix, _, rest = rendered.partition(REPO_MARK)
    rest = rest.replace(QUESTION_MARK, question)
    encode = lambda s: list(tokenizer.encode(s, add_special_tokens=False)) if s else []  # noqa: E731
    return Prompt(encode(prefix), encode(rest))


# -- progress and output -------------------------------------------------------------------


class UI(Protocol):
    """What the session reports while it works (the CLI draws it with Rich on stderr)."""

    def status(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def prefill_progress(self, total: int) -> contextlib.AbstractContextManager[Callable[[int, Any], None]]: ...

    def answer_stream(self) -> contextlib.AbstractContextManager[Callable[[str], None]]:
        """A callback that receives the whole answer so far, each time it grows."""
        ...


class QuietUI:
    """Reports nothing; collects warnings (used by ``--json`` and by library callers)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def status(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    @contextlib.contextmanager
    def prefill_progress(self, total: int) -> Iterator[Callable[[int, Any], None]]:
        yield lambda done, cache: None

    @contextlib.contextmanager
    def answer_stream(self) -> Iterator[Callable[[str], None]]:
        yield lambda text: None


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    path: str
    share: float


@dataclass
class Result:
    """What one question produced, with the timings the README reports.

    ``ttft_s``: from the start of :func:`run_query` (after the model is loaded) to the first
    answer token, so it includes packing, prefill or state loading, and the question.
    ``prefill_s``: the repository prefill (0 when the saved state was reused).
    ``memory``: peaks of the whole process so far, filled in by the CLI after the answer:
    ``peak_gpu_bytes`` (``torch.cuda.max_memory_allocated()``, ``None`` off CUDA) and
    ``peak_rss_bytes`` (host resident set, ``None`` where the OS does not report it).
    """

    answer: str
    sources: list[Source]
    state_reused: bool
    ttft_s: float | None
    prefill_s: float
    timings: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    packed: Any = None
    memory: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Query:
    """A question of one kind about a packed repository.

    ``extra_anchors`` are spans into ``packed.token_ids`` to pin besides the packer's anchors
    (``explain`` pins the target's definition, callers and callees).
    """

    kind: str
    question: str
    extra_anchors: tuple[tuple[int, int], ...] = ()


# -- the pipeline ------------------------------------------------------------------------------


def _prefill_fn() -> Callable[..., Any]:
    from ssa_code.engine.prefill import prefill

    return prefill


def _question_fn() -> Callable[..., Any]:
    from ssa_code.engine.question import prefill_question

    return prefill_question


def _ssa() -> tuple[Any, Any]:
    from ssa_code import attention

    return attention.SSACache, attention.patch


def file_sources(mass: Any, block_size: int, packed: Any, offset: int, top: int = 5) -> list[Source]:
    """Share of ``mass`` (attention per position block) drawn by each file of ``packed``.

    ``mass`` is ``[n_blocks]`` over absolute positions; file spans are shifted by ``offset``
    (the prompt prefix). Blocks that straddle a file boundary are split in proportion to the
    tokens on each side. Shares are of the mass on files (prompt and question excluded).
    """
    import numpy as np

    m = np.asarray(mass, dtype=np.float64).clip(min=0)
    if m.size == 0 or not packed.files:
        return []
    # Cumulative mass at every block boundary; within a block mass is spread evenly.
    cum = np.concatenate([[0.0], np.cumsum(m)])

    def at(pos: np.ndarray) -> np.ndarray:
        pos = np.clip(pos, 0, m.size * block_size)
        b = np.minimum(pos // block_size, m.size - 1)
        frac = (pos - b * block_size) / block_size
        return cum[b] + frac * m[b]

    starts = np.array([f.token_start + offset for f in packed.files])
    ends = np.array([f.token_end + offset for f in packed.files])
    per_file = at(ends) - at(starts)
    total = per_file.sum()
    if total <= 0:
        return []
    order = np.argsort(-per_file, kind="stable")
    out = []
    for i in order[:top]:
        share = float(per_file[i] / total)
        if share <= 0:
            break
        out.append(Source(packed.files[i].path, share))
    return out


def run_query(
    packed: Any,
    query: Query,
    loaded: LoadedModel,
    ssa_config: Any,
    gen: GenerationConfig,
    pack_options: Any,
    *,
    ui: UI | None = None,
    store: StateStore | None = None,
    reuse_state: bool = True,
    budget: int | None = None,
    started: float | None = None,
) -> Result:
    """Answer ``query`` about ``packed`` with ``loaded`` under SSA, reusing saved state when possible.

    ``budget`` caps the total tokens (prompt, repository, question and answer); a context
    that does not fit is a :class:`UserError`.
    """
    ui = ui or QuietUI()
    started = time.perf_counter() if started is None else started
    timings: dict[str, float] = {}
    model, tokenizer = loaded.model, loaded.tokenizer
    SSACache, patch = _ssa()
    prefill, prefill_question = _prefill_fn(), _question_fn()

    prompt = build_prompt(tokenizer, query.kind, query.question)
    offset = len(prompt.prefix_ids)
    context_ids = prompt.prefix_ids + list(packed.token_ids)
    n_context = len(context_ids)
    n_total = n_context + len(prompt.suffix_ids) + gen.max_new_tokens
    if budget is not None and n_total > budget:
        raise UserError(
            f"the context needs {n_total:,} tokens (repository {len(packed.token_ids):,}, prompt and "
            f"question {offset + len(prompt.suffix_ids):,}, answer {gen.max_new_tokens:,}) but the "
            f"budget is {budget:,}; raise --budget or narrow the repository with --include/--exclude"
        )
    # Chunk and window must stay inside the positions the model was trained on.
    ssa_config = ssa_config.fit(model.config)
    reserve = min(QUESTION_RESERVE, ssa_config.pinned // 4)
    anchors, map_kept = choose_anchors(packed, query.extra_anchors, ssa_config.pinned - reserve)
    anchors = [(s + offset, e + offset) for s, e in anchors]
    map_len = packed.map_span[1] - packed.map_span[0] if packed.map_span else 0
    if map_kept < map_len:
        ui.status(f"pinned: every file header and {map_kept:,} of the repository map's {map_len:,} tokens "
                  f"(pinned budget {ssa_config.pinned:,})")
    patch(model, ssa_config)
    store = store or StateStore()
    key = StateKey.build(
        tree_id=packed.tree_id,
        pack_options=pack_options,
        model_identity=loaded.identity,
        ssa_config=ssa_config,
        prompt_prefix_ids=prompt.prefix_ids,
        anchors=anchors,
        token_ids=context_ids,
    )

    import torch

    cache = None
    reused = False
    if reuse_state:
        t = time.perf_counter()
        try:
            cache = store.load(
                key, lambda path: SSACache.load(path, model.config, ssa_config, device=loaded.device),
                expected_tokens=n_context,
            )
        except StateCorrupted as exc:
            ui.warn(f"saved state for this repository was corrupted ({exc}); rebuilding it")
        if cache is not None:
            reused = True
            timings["state_load_s"] = time.perf_counter() - t

    prefill_s = 0.0
    if cache is None:
        cache = SSACache(model.config, ssa_config)
        ids = torch.tensor([context_ids], device=loaded.device)
        t = time.perf_counter()
        with ui.prefill_progress(n_context) as report:
            prefill(
                model, cache, ids, chunk_size=ssa_config.chunk_size, anchors=anchors,
                progress=lambda done, total=None: report(done, cache),
            )
        prefill_s = time.perf_counter() - t
        overflow = int(getattr(cache, "pinned_overflow", 0) or 0)
        if overflow:
            ui.warn(f"{overflow:,} anchor tokens (file headers, map, pinned code) did not fit the pinned budget "
                    f"of {ssa_config.pinned:,}; they are kept only as coarse summaries")
        if reuse_state:
            t = time.perf_counter()
            try:
                store.save(key, cache, tokens=n_context, extra={"repo_tokens": len(packed.token_ids)},
                           size_hint=cache.gpu_bytes() + cache.store_bytes())
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - saving is an optimisation; the answer goes on
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                ui.warn(f"could not save the repository state for reuse ({reason}); the next question will prefill again")
            timings["state_save_s"] = time.perf_counter() - t

    # The question, pinned so it stays at full resolution however long the answer gets. Its
    # last queries produce the first answer token, so their attention counts for the sources.
    cache.track_sources = True
    t = time.perf_counter()
    q_ids = torch.tensor([prompt.suffix_ids], device=loaded.device)
    q_span = [(n_context, n_context + len(prompt.suffix_ids))]
    # The question picks the blocks the answer reads by exact attention over the whole store
    # (SSAConfig.exact_question, tried once per SSAConfig.exact_tries choice); the choice lasts
    # the answer.
    logits, _ = prefill_question(model, cache, q_ids, ssa_config, anchors=q_span)
    logits = logits[0, -1] if logits.dim() == 3 else logits[-1] if logits.dim() == 2 else logits
    timings["question_s"] = time.perf_counter() - t

    text = ""
    answer_ids: list[int] = []
    ttft = None
    t = time.perf_counter()
    with ui.answer_stream() as emit:
        for step in generate(model, cache, logits, tokenizer, gen, stop_token_ids(model, tokenizer)):
            if ttft is None:
                ttft = time.perf_counter() - started
            answer_ids.append(step.token_id)
            if step.text:
                text += step.text
                emit(text)
        answer = tokenizer.decode(answer_ids, skip_special_tokens=True)
        if answer != text:
            emit(answer)
    timings["decode_s"] = time.perf_counter() - t
    if repeated_line(answer, gen.stop_repeats) is not None:
        ui.warn(f"the answer repeated one line {gen.stop_repeats} times in a row; stopped there")
    cache.track_sources = False
    n_answer = len(answer_ids)

    sources = file_sources(cache.source_mass(), ssa_config.block_size, packed, offset)
    warnings = list(getattr(ui, "warnings", []))
    return Result(
        answer=answer,
        sources=sources,
        state_reused=reused,
        ttft_s=ttft,
        prefill_s=prefill_s,
        timings=timings,
        tokens={
            "repository": len(packed.token_ids),
            "context": n_context,
            "question": len(prompt.suffix_ids),
            "answer": n_answer,
        },
        warnings=warnings,
        packed=packed,
    )


# Pinned slots kept free for the question, which is pinned after the (reusable) repository state
# (at most a quarter of the pinned tier).
QUESTION_RESERVE = 512


def choose_anchors(packed: Any, extra: Sequence[tuple[int, int]], budget: int) -> tuple[list[tuple[int, int]], int]:
    """The spans to pin within ``budget`` tokens, most useful first; and how much of the map they keep.

    The caller's extra spans (``explain``'s definition, callers and callees) come first, then every
    file header (the anchor points of the context), then the repository map from its top: on a
    large repository the map alone is larger than the pinned tier, and pinning it first (it
    comes first in the sequence) would leave no room for any header. A span that does not fit
    whole is cut at the budget. Returns spans sorted by position, without overlaps.
    """
    map_span = tuple(packed.map_span) if packed.map_span else None
    headers = [tuple(a) for a in packed.anchors if tuple(a) != map_span]
    ordered = [*extra, *headers] + ([map_span] if map_span else [])
    taken: list[tuple[int, int]] = []
    left = max(0, budget)
    for start, end in ordered:
        if end <= start or left == 0:
            continue
        # Spans may overlap (an explain piece inside a header): count only what is new.
        for a, b in _uncovered(taken, start, min(end, start + left)):
            taken.append((a, b))
            left -= b - a
    map_kept = sum(max(0, min(b, map_span[1]) - max(a, map_span[0])) for a, b in taken) if map_span else 0
    return merge_spans(taken), map_kept


def _uncovered(taken: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """Parts of ``[start, end)`` not inside any span of ``taken``."""
    parts = [(start, end)]
    for a, b in taken:
        nxt = []
        for s, e in parts:
            if b <= s or a >= e:
                nxt.append((s, e))
                continue
            if s < a:
                nxt.append((s, a))
            if b < e:
                nxt.append((b, e))
        parts = nxt
    return [(s, e) for s, e in parts if e > s]


def anchors_for_lines(packed: Any, spans: Sequence[tuple[str, int, int]]) -> list[tuple[int, int]]:
    """Token spans of ``(path, first_line, last_line)`` ranges (1-based, inclusive) of ``packed``.

    Uses ``packed.locate`` to map tokens back to lines; a path that is not packed is skipped.
    """
    by_path = {f.path: f for f in packed.files}
    out = []
    for path, first, last in spans:
        f = by_path.get(path)
        if f is None:
            continue
        start = end = None
        for tok in range(f.header_end, f.token_end):
            loc = packed.locate(tok)
            if loc is None:
                continue
            line = loc[1]
            if start is None and line >= first:
                start = tok
            if line > last:
                end = tok
                break
        if start is not None:
            out.append((start, end if end is not None else f.token_end))
    return out
