"""Definitions, references and imports of one file, from tree-sitter tags queries.

The queries (``queries/<language>.scm``) follow the tag conventions of GitHub code
navigation and aider's repo map: a match holding ``@definition.<kind>`` and ``@name`` is a
definition, ``@reference.<kind>`` and ``@name`` a reference, ``@import`` (optionally with
``@import.member``) an import.  Results are plain tuples so they marshal small and fast into
the blob-keyed cache (:mod:`ssa_code.context.cache`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ssa_code.context.languages import PARSED, parser_and_query

#: Bumped when the shape or meaning of :class:`FileSymbols` changes (part of the cache key).
PARSE_VERSION = 1

# Separators that join a from-import's module and member into one importable path.
_MEMBER_SEP = {"python": "."}


@dataclass
class FileSymbols:
    """What one file defines, references and imports.

    Attributes:
        defs: ``(name, kind, line, end_line)`` per definition, lines 1-based, inclusive.
        refs: ``(name, kind, line)`` per reference.
        imports: import strings as written (module paths, include paths, ``use`` paths).
        error: a parse problem worth reporting (the file is still packed).
    """

    defs: list[tuple[str, str, int, int]] = field(default_factory=list)
    refs: list[tuple[str, str, int]] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)
    error: str = ""


def _text(node) -> str:
    return node.text.decode("utf-8", "replace")


def parse_source(text: str, language: str) -> FileSymbols:
    """Run the language's tags query over ``text``.

    Args:
        text: normalised file body (LF line ends); line numbers refer to it.
        language: one of :data:`ssa_code.context.languages.PARSED`.
    Returns:
        the file's symbols; definitions and references sorted by (line, name, kind) and
        imports de-duplicated in first-seen order, so the result is deterministic.
    """
    if language not in PARSED:
        raise ValueError(f"language {language!r} has no tags query")
    from tree_sitter import QueryCursor

    parser, query = parser_and_query(language)
    tree = parser.parse(text.encode("utf-8", "surrogatepass"))
    out = FileSymbols()
    sep = _MEMBER_SEP.get(language)
    defs: set[tuple[str, str, int, int]] = set()
    refs: set[tuple[str, str, int]] = set()
    imports: dict[str, None] = {}
    for _pattern, caps in QueryCursor(query).matches(tree.root_node):
        name_nodes = caps.get("name")
        kind_key = None
        for key in caps:
            if key.startswith("definition.") or key.startswith("reference."):
                kind_key = key
                break
        if kind_key is not None and name_nodes:
            role, kind = kind_key.split(".", 1)
            outer = caps[kind_key][0]
            for node in name_nodes:
                name = _text(node)
                if not name or len(name) > 200:
                    continue
                line = node.start_point[0] + 1
                if role == "definition":
                    defs.add((name, kind, line, outer.end_point[0] + 1))
                else:
                    refs.add((name, kind, line))
        if "import" in caps:
            for node in caps["import"]:
                module = _text(node).strip().strip("\"'<>`")
                if not module:
                    continue
                imports.setdefault(module, None)
                if sep is not None:
                    for member in caps.get("import.member", ()):
                        joiner = "" if module.endswith(sep) else sep
                        imports.setdefault(module + joiner + _text(member), None)
    out.defs = sorted(defs, key=lambda d: (d[2], d[0], d[1], d[3]))
    out.refs = sorted(refs, key=lambda r: (r[2], r[0], r[1]))
    out.imports = list(imports)
    if tree.root_node.has_error:
        out.error = "syntax errors (symbols may be incomplete)"
    return out
