"""What ``explain`` pins: a target's definition and its callers and callees in other files.

A target is a defined name (``load_config``, ``Config.load``), a packed file path, or
``path:line``. The tree-sitter graph of the packer (``packed.graph``) resolves it; the pieces
become pinned anchors of the prefill, so the SSA state keeps them at full resolution however
long the repository is, and they are listed in the question so the answer can cite them as
``file:line``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass
from typing import Any

from ssa_code.engine.session import anchors_for_lines
from ssa_code.errors import UsageError

MAX_CALLERS = 8
MAX_CALLEES = 8
# Lines pinned per piece: a whole definition is pinned up to this many lines.
MAX_TARGET_LINES = 80
MAX_CALLEE_LINES = 20
CALL_CONTEXT = 2


@dataclass(frozen=True)
class Piece:
    """A pinned piece of code. ``role`` is ``target``, ``caller`` or ``callee``; lines are 1-based."""

    role: str
    path: str
    line: int
    end_line: int
    name: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def cite(self) -> str:
        return f"{self.path}:{self.line}"


def _norm_path(packed: Any, text: str) -> str | None:
    paths = {f.path for f in packed.files}
    for candidate in (text, text.removeprefix("./"), text.replace("\\", "/").removeprefix("./")):
        if candidate in paths:
            return candidate
    return None


def _lines_of(packed: Any, path: str) -> int:
    return next((f.lines for f in packed.files if f.path == path), 0)


def _defs_in(graph: Any, path: str) -> list[tuple[str, str, int, int]]:
    f = graph.files.get(path)
    return list(f.symbols.defs) if f is not None else []


def _targets(packed: Any, target: str) -> list[Piece]:
    graph = packed.graph
    m = re.fullmatch(r"(.+?):(\d+)", target)
    if m and _norm_path(packed, m.group(1)):
        path, line = _norm_path(packed, m.group(1)), int(m.group(2))
        n = _lines_of(packed, path)
        if not 1 <= line <= max(n, 1):
            raise UsageError(f"{path} has {n} lines; line {line} is outside it")
        around = [d for d in _defs_in(graph, path) if d[2] <= line <= d[3]]
        if around:
            name, _kind, start, end = min(around, key=lambda d: d[3] - d[2])
            return [Piece("target", path, start, end, name)]
        return [Piece("target", path, max(1, line - 10), min(n, line + 10), f"{path}:{line}")]
    path = _norm_path(packed, target)
    if path is not None:
        tops = graph.top_level(path) if path in graph.files else []
        if not tops:
            return [Piece("target", path, 1, max(1, _lines_of(packed, path)), path)]
        return [Piece("target", path, start, end, name) for name, _kind, start, end in tops]
    name = target.rsplit(".", 1)[-1].rsplit("::", 1)[-1]
    defs = graph.definitions(name)
    if not defs:
        close = difflib.get_close_matches(name, graph.defined_names(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(
            f"'{target}' is neither a packed file, nor path:line, nor a name defined in the repository{hint}"
        )
    return [Piece("target", d.path, d.line, d.end_line or d.line, d.name) for d in defs[:4]]


def explain_pieces(packed: Any, target: str) -> list[Piece]:
    """The target's definitions, then callers and callees in other files (bounded)."""
    graph = packed.graph
    targets = _targets(packed, target)
    target_paths = {t.path for t in targets}
    pieces = list(targets)
    seen = {(t.path, t.line) for t in targets}
    names = {t.name for t in targets}
    for name in sorted(names):
        for ref in graph.callers(name):
            if len([p for p in pieces if p.role == "caller"]) >= MAX_CALLERS:
                break
            if ref.path in target_paths or (ref.path, ref.line) in seen:
                continue
            seen.add((ref.path, ref.line))
            pieces.append(Piece("caller", ref.path, ref.line, ref.line, ref.enclosing or ""))
    callee_names: list[str] = []
    for t in targets:
        refs = graph.callees(t.path, t.name) if t.name in {d[0] for d in _defs_in(graph, t.path)} else []
        for ref in refs:
            if ref.name not in callee_names and ref.name not in names:
                callee_names.append(ref.name)
    for name in callee_names:
        if len([p for p in pieces if p.role == "callee"]) >= MAX_CALLEES:
            break
        for d in graph.definitions(name):
            if d.path in target_paths or (d.path, d.line) in seen:
                continue
            seen.add((d.path, d.line))
            pieces.append(Piece("callee", d.path, d.line, d.end_line or d.line, d.name))
            break
    return pieces


def explain_question(target: str, pieces: list[Piece]) -> str:
    """The text that goes where ``{question}`` is in ``prompts/explain.txt``."""
    lines = [f"`{target}`."]
    groups = (
        ("target", "It is defined at"),
        ("caller", "It is used from other files at"),
        ("callee", "It uses code from other files defined at"),
    )
    for role, title in groups:
        items = [f"- {p.cite} ({_where(p)})" for p in pieces if p.role == role]
        if items:
            lines += ["", f"{title}:", *items]
    return "\n".join(lines)


def _where(p: Piece) -> str:
    if p.role != "caller":
        return p.name
    return f"in {p.name}" if p.name else "at top level"


def explain_anchors(packed: Any, target: str) -> tuple[tuple[tuple[int, int], ...], str, list[Piece]]:
    """Anchors (token spans into ``packed.token_ids``), the question text and the pieces."""
    pieces = explain_pieces(packed, target)
    ranges = []
    for p in pieces:
        if p.role == "caller":
            ranges.append((p.path, max(1, p.line - CALL_CONTEXT), p.line + CALL_CONTEXT))
        else:
            cap = MAX_TARGET_LINES if p.role == "target" else MAX_CALLEE_LINES
            ranges.append((p.path, p.line, min(p.end_line, p.line + cap - 1)))
    anchors = tuple(anchors_for_lines(packed, ranges))
    return anchors, explain_question(target, pieces), pieces
