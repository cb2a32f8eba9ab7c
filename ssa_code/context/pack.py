"""Pack a repository into one long context with token spans and pinned anchors.

Pipeline: :func:`~ssa_code.context.walk.walk_repository` -> tree-sitter symbols per file
(cached by blob id) -> :class:`~ssa_code.context.graph.RepoGraph` ->
:func:`~ssa_code.context.order.order_files` -> text blocks (:mod:`ssa_code.context.format`)
-> token ids.

Token ids are exact: ``packed.token_ids == tokenizer(packed.text, add_special_tokens=False)``.
Blocks (the map, then one per file) are encoded separately, in one parallel batch, and cached
per (tokenizer, block text).  Concatenating them is only correct where every block boundary
is also a token boundary of the whole text; each boundary is checked by encoding a small
window around it, and if any check fails the whole text is encoded in one piece instead.
"""

from __future__ import annotations

import bisect
import hashlib
import os
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

from ssa_code.context.cache import BlobCache, cache_root_for
from ssa_code.context.format import FORMAT_VERSION, file_block
from ssa_code.context.graph import ParsedFile, RepoGraph
from ssa_code.context.languages import PARSED, query_digest
from ssa_code.context.order import order_files
from ssa_code.context.parse import PARSE_VERSION, FileSymbols, parse_source
from ssa_code.context.repomap import build_repo_map
from ssa_code.context.walk import WalkOptions, WalkResult, walk_repository
from ssa_code.errors import UsageError, UserError


@dataclass(frozen=True)
class PackOptions:
    """Options of :func:`pack_repository`.

    Attributes:
        question: moves the files most relevant to it to the end of the context.
        budget: maximum tokens; least relevant files are left out whole when exceeded.
        include, exclude: path globs (see :class:`~ssa_code.context.walk.WalkOptions`).
        include_untracked: also pack untracked files git does not ignore.
        max_file_bytes: skip larger files.
        max_map_symbols: main definitions listed per file in the repository map.
        cache_dir: cache root; ``None`` for the default user cache dir.
        use_cache: ``False`` disables reading and writing the cache.
    """

    question: Optional[str] = None
    budget: Optional[int] = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_untracked: bool = False
    max_file_bytes: int = 1_000_000
    max_map_symbols: int = 8
    cache_dir: Optional[str] = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.budget is not None and self.budget <= 0:
            raise UsageError(f"--budget must be a positive number of tokens, got {self.budget}")
        if self.max_map_symbols < 0:
            raise UsageError(f"max_map_symbols must be >= 0, got {self.max_map_symbols}")
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    def walk_options(self) -> WalkOptions:
        return WalkOptions(self.include, self.exclude, self.include_untracked, self.max_file_bytes)


@dataclass(frozen=True)
class FileSpan:
    """Where one file sits in the packed tokens; spans are half-open ``[start, end)``."""

    path: str
    language: str
    lines: int
    token_start: int
    token_end: int
    header_start: int
    header_end: int


@dataclass
class _Block:
    """One encoded block. ``line_tok[k]``: first token (block-relative) at or after body line k+1."""

    text: str
    ids: array
    header_ntok: int
    line_tok: array


@dataclass
class PackedContext:
    """The packed repository (see ``docs/INTERFACES.md``, section ssa_code.context).

    Attributes:
        text: the whole context.
        token_ids: ``[T]`` ids of ``text`` in the tokenizer (no special tokens).
        files: spans of packed files, in packed order.
        anchors: token spans to pin: the repository map first, then every file header.
        skipped: ``(path, reason)`` for files the walk left out.
        omitted: ``(path, reason)`` for files the budget left out.
        tree_id: key of the packed content (HEAD's tree id, plus a digest when the working
            tree or untracked files differ from it).
        graph: definitions and references of every packed or omitted file.
        map_span: token span of the repository map.
    """

    text: str
    token_ids: list[int]
    files: list[FileSpan]
    anchors: list[tuple[int, int]]
    skipped: list[tuple[str, str]]
    omitted: list[tuple[str, str]]
    tree_id: str
    graph: RepoGraph
    map_span: tuple[int, int]
    root: str = ""
    head_commit: str = ""
    question: Optional[str] = None
    budget: Optional[int] = None
    focus: list[str] = field(default_factory=list)
    _line_tok: list[array] = field(default_factory=list, repr=False)
    _starts: list[int] = field(default_factory=list, repr=False)

    def locate(self, token_index: int) -> Optional[tuple[str, int]]:
        """``(path, line)`` of a token (1-based line), ``None`` inside the repository map.

        Tokens of a file header give line 1 of that file.
        """
        if not 0 <= token_index < len(self.token_ids):
            raise IndexError(f"token index {token_index} out of range [0, {len(self.token_ids)})")
        i = bisect.bisect_right(self._starts, token_index) - 1
        if i < 0:
            return None
        span = self.files[i]
        if token_index < span.header_end:
            return span.path, 1
        rel = token_index - span.token_start
        line = bisect.bisect_right(self._line_tok[i], rel)
        return span.path, max(1, min(line, span.lines))

    def summary(self) -> dict[str, Any]:
        """Files, lines and tokens by language, skipped and omitted files (deterministic)."""
        by_lang: dict[str, dict[str, int]] = {}
        for f in self.files:
            s = by_lang.setdefault(f.language, {"files": 0, "lines": 0, "tokens": 0})
            s["files"] += 1
            s["lines"] += f.lines
            s["tokens"] += f.token_end - f.token_start
        return {
            "repository": self.root,
            "head_commit": self.head_commit,
            "tree_id": self.tree_id,
            "files": len(self.files),
            "lines": sum(f.lines for f in self.files),
            "tokens": len(self.token_ids),
            "map_tokens": self.map_span[1] - self.map_span[0],
            "budget": self.budget,
            "question": self.question,
            "focus": list(self.focus),
            "by_language": dict(sorted(by_lang.items())),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "omitted": [{"path": p, "reason": r} for p, r in self.omitted],
        }

    def to_json(self) -> dict[str, Any]:
        """Everything a script needs: text, ids, spans, anchors, skipped and omitted files."""
        return {
            "format_version": FORMAT_VERSION,
            "tree_id": self.tree_id,
            "text": self.text,
            "token_ids": self.token_ids,
            "map_span": list(self.map_span),
            "anchors": [list(a) for a in self.anchors],
            "files": [f.__dict__ for f in self.files],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "omitted": [{"path": p, "reason": r} for p, r in self.omitted],
        }


# -- tokenizer plumbing -----------------------------------------------------------------------


class _Encoder:
    """Batch encoding through the fast (Rust) tokenizer behind an HF tokenizer.

    For byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, our tiny model) every token's
    number of newlines is known from the vocabulary, so line tables come from the ids alone
    and the faster offset-free ``encode_batch_fast`` is used; other tokenizers use offsets.
    """

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers import Tokenizer

        if isinstance(tokenizer, Tokenizer):
            backend = tokenizer
        else:
            backend = getattr(tokenizer, "backend_tokenizer", None)
            if backend is None:
                raise UsageError(
                    f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; "
                    "ssa-code needs a Hugging Face fast tokenizer (tokenizer.json)")
        spec = backend.to_str()
        self.fingerprint = hashlib.sha1(spec.encode()).hexdigest()
        if backend.truncation is not None or backend.padding is not None:
            # Never change the caller's tokenizer; a copy without truncation/padding is exact.
            backend = Tokenizer.from_str(spec)
            backend.no_truncation()
            backend.no_padding()
        self.backend = backend
        self.newlines = _newline_table(backend, spec)

    def encode(self, texts: Sequence[str]) -> list[Any]:
        if not texts:
            return []
        return self.backend.encode_batch(list(texts), add_special_tokens=False)

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        fast = getattr(self.backend, "encode_batch_fast", None)
        encs = (fast or self.backend.encode_batch)(list(texts), add_special_tokens=False)
        return [e.ids for e in encs]

    def blocks(self, items: Sequence[tuple[str, int]]) -> list[_Block]:
        """Encode ``(block text, header length)`` items into blocks with line tables."""
        if self.newlines is None:
            encs = self.encode([t for t, _ in items])
            return [_block_from_encoding(t, h, e) for (t, h), e in zip(items, encs)]
        return [_block_from_ids(t, h, ids, self.newlines) for (t, h), ids in zip(items, self.ids([t for t, _ in items]))]


def _newline_table(backend: Any, spec: str) -> Any:
    """``int32 [V]`` newlines per token id for byte-level BPE tokenizers, else ``None``."""
    import json

    import numpy as np

    try:
        conf = json.loads(spec)
    except ValueError:
        return None
    model = conf.get("model") or {}
    pre = conf.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers", [pre]) if pre else []
    if model.get("type") != "BPE" or not any(p and p.get("type") == "ByteLevel" for p in pres):
        return None
    if conf.get("normalizer") is not None:
        return None
    vocab = backend.get_vocab(with_added_tokens=True)
    added = {a["id"]: a["content"] for a in conf.get("added_tokens", [])}
    table = np.zeros(max(vocab.values(), default=0) + 1, dtype=np.int32)
    for token, i in vocab.items():
        # Byte-level BPE writes byte 0x0A as "\u010a"; added tokens are stored as plain text.
        table[i] = added[i].count("\n") if i in added else token.count("\u010a")
    return table


def _block_from_ids(text: str, header_len: int, ids: list[int], newlines: Any) -> _Block:
    """Block from ids alone: the line of a token is the number of newlines before it."""
    import numpy as np

    arr = np.asarray(ids, dtype=np.int64)
    cum = np.cumsum(newlines[arr]) if len(arr) else np.zeros(0, dtype=np.int64)
    if header_len >= len(text):
        header_ntok = len(ids)
    else:
        # The header is one line: it ends with the token holding its newline.
        header_ntok = int(np.searchsorted(cum, 1, side="left")) + 1
    before = np.concatenate([[0], cum[:-1]]) if len(cum) else cum
    n_lines = text.count("\n", header_len)
    line_tok = np.searchsorted(before, np.arange(1, n_lines + 1), side="left")
    if len(line_tok):
        line_tok[0] = header_ntok
    return _Block(text, array("I", np.asarray(ids, dtype=np.uint32).tobytes()), header_ntok,
                  array("I", line_tok.astype(np.uint32).tobytes()))


def _block_from_encoding(text: str, header_len: int, enc: Any) -> _Block:
    """Token ids, header token count and line table of one block from its encoding."""
    import numpy as np

    starts = np.fromiter((o[0] for o in enc.offsets), dtype=np.int64, count=len(enc.ids))
    # Offsets of some tokenizers are not monotone at special tokens; lines need sorted starts.
    starts = np.maximum.accumulate(starts) if len(starts) else starts
    header_ntok = int(np.searchsorted(starts, header_len, side="left"))
    body = text[header_len:]
    line_chars = [header_len]
    pos = body.find("\n")
    while pos != -1 and pos + 1 < len(body):
        line_chars.append(header_len + pos + 1)
        pos = body.find("\n", pos + 1)
    line_tok = np.searchsorted(starts, np.asarray(line_chars, dtype=np.int64), side="left")
    if not body:
        line_tok = line_tok[:0]
    elif len(line_tok):
        line_tok[0] = header_ntok
    return _Block(text, array("I", np.asarray(enc.ids, dtype=np.uint32).tobytes()), header_ntok,
                  array("I", line_tok.astype(np.uint32).tobytes()))


def _encode_blocks(encoder: _Encoder, items: Sequence[tuple[str, int]], cache: BlobCache) -> list[_Block]:
    """Encode ``(block text, header length)`` items, through the token cache."""
    keys = [BlobCache.key(encoder.fingerprint, str(h), hashlib.sha1(t.encode("utf-8", "surrogatepass")).hexdigest())
            for t, h in items]
    out: list[Optional[_Block]] = [None] * len(items)
    todo: list[int] = []
    found = cache.get_many(keys)
    for i, k in enumerate(keys):
        hit = found.get(k)
        if isinstance(hit, tuple) and len(hit) == 3:
            ids = array("I")
            ids.frombytes(hit[0])
            lt = array("I")
            lt.frombytes(hit[2])
            out[i] = _Block(items[i][0], ids, hit[1], lt)
        else:
            todo.append(i)
    fresh = encoder.blocks([items[i] for i in todo])
    for i, blk in zip(todo, fresh):
        out[i] = blk
    cache.put_many((keys[i], (blk.ids.tobytes(), blk.header_ntok, blk.line_tok.tobytes())) for i, blk in zip(todo, fresh))
    return out  # type: ignore[return-value]


def _boundaries_clean(encoder: _Encoder, blocks: Sequence[_Block]) -> bool:
    """Whether every block boundary is a token boundary of the concatenated text.

    Encodes ``last line of A + first line of B`` and compares it with the two parts encoded
    alone.  Pre-tokenizers split on local patterns, so a window of whole lines decides.
    """
    if len(blocks) < 2:
        return True
    windows: list[str] = []
    for a, b in zip(blocks, blocks[1:]):
        tail = a.text[a.text.rfind("\n", 0, len(a.text) - 1) + 1:][-400:]
        head = b.text[: b.text.find("\n") + 1][:400]
        windows += [tail + head, tail, head]
    # Identical windows give identical answers; encode each distinct one once.
    uniq = list(dict.fromkeys(windows))
    ids = dict(zip(uniq, encoder.ids(uniq)))
    for j in range(0, len(windows), 3):
        if ids[windows[j]] != ids[windows[j + 1]] + ids[windows[j + 2]]:
            return False
    return True


def _reencode_whole(encoder: _Encoder, blocks: Sequence[_Block], header_lens: Sequence[int]) -> list[_Block]:
    """Encode the concatenation once and cut it into blocks at character offsets."""
    import numpy as np

    text = "".join(b.text for b in blocks)
    enc = encoder.encode([text])[0]
    starts = np.maximum.accumulate(np.fromiter((o[0] for o in enc.offsets), dtype=np.int64, count=len(enc.ids)))
    out = []
    char0 = 0
    tok_bounds = []
    for b in blocks:
        tok_bounds.append(int(np.searchsorted(starts, char0, side="left")))
        char0 += len(b.text)
    tok_bounds.append(len(enc.ids))
    char0 = 0
    for b, h, t0, t1 in zip(blocks, header_lens, tok_bounds, tok_bounds[1:]):
        part = SimpleNamespace(ids=enc.ids[t0:t1], offsets=[(s - char0, e - char0) for s, e in enc.offsets[t0:t1]])
        out.append(_block_from_encoding(b.text, h, part))
        char0 += len(b.text)
    return out


def resolve_tokenizer(tokenizer: Any) -> Any:
    """``tokenizer`` itself, or the bundled default when ``None``."""
    if tokenizer is not None:
        return tokenizer
    try:
        from ssa_code.models import default_tokenizer
    except ImportError as exc:
        raise UserError(f"no default tokenizer available ({exc}); pass a tokenizer") from None
    try:
        return default_tokenizer()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the default tokenizer: {exc}") from None


# -- parsing ----------------------------------------------------------------------------------


def parse_files(walk: WalkResult, cache: BlobCache) -> list[ParsedFile]:
    """Symbols of every walked file (cached by blob id, language and query digest)."""
    keys = {f.path: BlobCache.key(f.blob, f.language, query_digest(f.language), str(PARSE_VERSION))
            for f in walk.files if f.language in PARSED}
    found = cache.get_many(list(keys.values()))
    out = []
    fresh = []
    for f in walk.files:
        if f.language not in PARSED:
            out.append(ParsedFile(f.path, f.language, FileSymbols()))
            continue
        hit = found.get(keys[f.path])
        if isinstance(hit, tuple) and len(hit) == 4:
            out.append(ParsedFile(f.path, f.language, FileSymbols(*hit)))
            continue
        try:
            symbols = parse_source(file_block(f.path, f.language, f.text)[1], f.language)
        except (ValueError, RuntimeError, MemoryError) as exc:
            # One bad file must not stop the pack: it is packed as text, without symbols.
            symbols = FileSymbols(error=f"parse failed: {exc}")
        fresh.append((keys[f.path], (symbols.defs, symbols.refs, symbols.imports, symbols.error)))
        out.append(ParsedFile(f.path, f.language, symbols))
    cache.put_many(fresh)
    return out


def _caches(root: Path, options: PackOptions) -> tuple[BlobCache, BlobCache]:
    base = cache_root_for(root, Path(options.cache_dir) if options.cache_dir else None) if options.use_cache else None
    return BlobCache(base, "parse"), BlobCache(base, "tokens")


def map_repository(repo: str | os.PathLike[str], options: PackOptions = PackOptions()) -> tuple[WalkResult, RepoGraph]:
    """Walk and parse a repository without tokenizing (for ``ssa-code map``)."""
    walk = walk_repository(repo, options.walk_options())
    parse_cache, _ = _caches(walk.root, options)
    graph = RepoGraph(parse_files(walk, parse_cache))
    parse_cache.close()
    return walk, graph


def pack_repository(
    repo: str | os.PathLike[str],
    tokenizer: Any = None,
    options: PackOptions = PackOptions(),
    progress: Optional[Callable[[str], None]] = None,
) -> PackedContext:
    """Pack a git repository into one context.

    Args:
        repo: path of the repository (or any directory inside its working tree).
        tokenizer: a Hugging Face fast tokenizer, a ``tokenizers.Tokenizer``, or ``None``
            for the bundled default.
        options: see :class:`PackOptions`.
        progress: called with a short message at each stage.
    Returns:
        the :class:`PackedContext`.
    Raises:
        UsageError: not a repository, bare, no commits, a budget too small for the map.
    """
    say = progress or (lambda _msg: None)
    say("walking")
    walk = walk_repository(repo, options.walk_options())
    parse_cache, token_cache = _caches(walk.root, options)
    encoder = _Encoder(resolve_tokenizer(tokenizer))
    by_path = {f.path: f for f in walk.files}
    pieces: dict[str, tuple[str, int]] = {}
    for f in walk.files:
        header, body = file_block(f.path, f.language, f.text)
        pieces[f.path] = (header + body, len(header))

    say("parsing and tokenizing")
    # Block tokens do not depend on the order, so the tokenizer (Rust, GIL released) runs
    # in a thread while this thread parses.
    with ThreadPoolExecutor(max_workers=1) as pool:
        paths = [f.path for f in walk.files]
        future = pool.submit(_encode_blocks, encoder, [pieces[p] for p in paths], token_cache)
        graph = RepoGraph(parse_files(walk, parse_cache))
        say("ordering")
        ordering = order_files(graph, options.question)
        blocks = dict(zip(paths, future.result()))

    title = walk.root.name
    omitted: list[str] = []
    kept = list(ordering.order)
    while True:
        map_text = build_repo_map(graph, title, options.max_map_symbols, omitted)
        map_block_ = _encode_blocks(encoder, [(map_text, len(map_text))], token_cache)[0]
        if options.budget is None:
            break
        if len(map_block_.ids) > options.budget:
            raise UsageError(f"--budget {options.budget} is smaller than the repository map "
                             f"({len(map_block_.ids)} tokens)")
        total = len(map_block_.ids) + sum(len(blocks[p].ids) for p in kept)
        if total <= options.budget:
            break
        # Leave out the least relevant files (question focus last), whole, until it fits.
        focus = set(ordering.focus)
        victims = sorted(kept, key=lambda p: (p in focus, ordering.relevance[p], p))
        excess = total - options.budget
        dropped = set()
        for p in victims:
            if excess <= 0:
                break
            dropped.add(p)
            excess -= len(blocks[p].ids)
        kept = [p for p in kept if p not in dropped]
        omitted = sorted(set(omitted) | dropped)

    seq = [map_block_] + [blocks[p] for p in kept]
    if not _boundaries_clean(encoder, seq):
        seq = _reencode_whole(encoder, seq, [len(map_text)] + [pieces[p][1] for p in kept])

    text_parts: list[str] = []
    ids: list[int] = []
    files: list[FileSpan] = []
    line_tables: list[array] = []
    for i, blk in enumerate(seq):
        start = len(ids)
        text_parts.append(blk.text)
        ids.extend(blk.ids)
        if i == 0:
            continue
        f = by_path[kept[i - 1]]
        body_lines = blk.text.count("\n") - 1
        files.append(FileSpan(f.path, f.language, body_lines, start, len(ids), start, start + blk.header_ntok))
        line_tables.append(blk.line_tok)
    map_span = (0, len(seq[0].ids))
    anchors = [map_span] + [(s.header_start, s.header_end) for s in files]
    omitted_reasons = [(p, f"left out by --budget ({len(blocks[p].ids)} tokens)") for p in omitted]
    skipped = list(walk.skipped)
    parse_cache.close()
    token_cache.close()
    return PackedContext(
        text="".join(text_parts),
        token_ids=ids,
        files=files,
        anchors=anchors,
        skipped=skipped,
        omitted=omitted_reasons,
        tree_id=walk.tree_id,
        graph=graph,
        map_span=map_span,
        root=str(walk.root),
        head_commit=walk.head_commit,
        question=options.question,
        budget=options.budget,
        focus=[p for p in ordering.focus if p in set(kept)],
        _line_tok=line_tables,
        _starts=[s.token_start for s in files],
    )
