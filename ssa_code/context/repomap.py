"""The repository map (start of every packed context) and the symbol outline (``ssa-code map``).

The map is a folder tree; each parsed file lists its main (top-level) definitions, at most
``max_symbols`` of them, so the map stays short even for thousands of files.  The outline
lists every definition with its line number, nested ones indented under their parents.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ssa_code.context.format import map_block, tree_lines
from ssa_code.context.graph import RepoGraph

_KIND_WORD = {"function": "def", "method": "def", "class": "class", "interface": "interface",
              "type": "type", "enum": "enum", "module": "mod", "constant": "const",
              "variable": "var", "macro": "macro", "property": "prop"}


def map_lines(graph: RepoGraph, max_symbols: int = 8, omitted: Sequence[str] = ()) -> list[str]:
    """Lines of the repository map (without the title).

    Args:
        graph: the packed files' graph.
        max_symbols: main definitions listed per file; the rest are counted.
        omitted: paths left out by the budget (marked, so the model knows they exist).
    """
    left_out = set(omitted)

    def label(path: str) -> str:
        if path in left_out:
            return f"{path.rsplit('/', 1)[-1]} (omitted)"
        top = graph.top_level(path)
        names = [f"{_KIND_WORD.get(k, k)} {n}" for n, k, _s, _e in top[:max_symbols]]
        more = len(top) - max_symbols
        if more > 0:
            names.append(f"+{more} more")
        base = path.rsplit("/", 1)[-1]
        return f"{base}: {', '.join(names)}" if names else base

    return tree_lines(list(graph.paths) + sorted(left_out - set(graph.paths)), label)


def build_repo_map(graph: RepoGraph, title: str, max_symbols: int = 8,
                   omitted: Sequence[str] = ()) -> str:
    """The repository map block: ``=== Repository map: <title> ===`` then the tree."""
    return map_block(title, map_lines(graph, max_symbols, omitted))


def build_outline(graph: RepoGraph, paths: Optional[Sequence[str]] = None) -> str:
    """Every definition of every file, with line numbers, nested definitions indented.

    Returns:
        text ending in a newline (empty string for no files).
    """
    out: list[str] = []
    for path in paths if paths is not None else graph.paths:
        f = graph.files[path]
        out.append(f"{path} ({f.language})")
        stack: list[int] = []
        for name, kind, start, end in sorted(f.symbols.defs, key=lambda d: (d[2], -d[3], d[0], d[1])):
            while stack and start > stack[-1]:
                stack.pop()
            out.append("  " * (len(stack) + 1) + f"{start}: {_KIND_WORD.get(kind, kind)} {name}")
            stack.append(end)
    return "\n".join(out) + "\n" if out else ""


def outline_json(graph: RepoGraph) -> list[dict]:
    """The outline as data: one entry per file with its definitions."""
    return [
        {
            "path": p,
            "language": graph.files[p].language,
            "definitions": [
                {"name": n, "kind": k, "line": s, "end_line": e}
                for n, k, s, e in sorted(graph.files[p].symbols.defs, key=lambda d: (d[2], -d[3], d[0], d[1]))
            ],
        }
        for p in graph.paths
    ]
