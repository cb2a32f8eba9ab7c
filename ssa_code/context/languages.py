"""Which language a file is in, and the tree-sitter parser and queries for it.

Language names are tree-sitter-language-pack names.  Languages in :data:`PARSED` have a
query file ``queries/<name>.scm`` (tags in the style of GitHub code navigation and aider:
``@definition.<kind>`` / ``@name``, ``@reference.<kind>`` / ``@name``, ``@import``); the rest
are packed as plain text.  tree-sitter itself is imported lazily so that
:mod:`ssa_code.context.format` and language detection work without it.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import PurePosixPath
from typing import Any, Optional

EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".c++": "cpp", ".hpp": "cpp", ".hh": "cpp",
    ".hxx": "cpp", ".h++": "cpp", ".ipp": "cpp", ".inl": "cpp",
    ".cs": "csharp",
    ".rb": "ruby", ".rake": "ruby", ".gemspec": "ruby",
    ".php": "php",
    ".kt": "kotlin", ".kts": "kotlin",
    ".swift": "swift",
    # Packed unparsed.
    ".md": "markdown", ".markdown": "markdown", ".rst": "rst", ".txt": "text",
    ".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json", ".ini": "ini",
    ".cfg": "ini", ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".fish": "shell",
    ".html": "html", ".htm": "html", ".css": "css", ".scss": "scss", ".sql": "sql",
    ".xml": "xml", ".proto": "protobuf", ".cmake": "cmake", ".scm": "scheme",
    ".lua": "lua", ".r": "r", ".jl": "julia", ".scala": "scala", ".dart": "dart",
    ".ex": "elixir", ".exs": "elixir", ".hs": "haskell", ".ml": "ocaml", ".pl": "perl",
    ".vue": "vue", ".svelte": "svelte", ".tf": "hcl", ".gradle": "groovy", ".mk": "make",
}
FILENAMES: dict[str, str] = {
    "Makefile": "make", "GNUmakefile": "make", "Dockerfile": "dockerfile",
    "CMakeLists.txt": "cmake", "Gemfile": "ruby", "Rakefile": "ruby", "Vagrantfile": "ruby",
    "LICENSE": "text", "README": "text", "Jenkinsfile": "groovy",
}

#: Languages parsed with tree-sitter (each has ``queries/<query name>.scm``).
PARSED: frozenset[str] = frozenset({
    "python", "javascript", "typescript", "tsx", "go", "rust", "java", "c", "cpp",
    "csharp", "ruby", "php", "kotlin", "swift",
})

# TSX is TypeScript plus JSX: the TypeScript tags apply unchanged.
_QUERY_FILE = {"tsx": "typescript"}

# Languages whose names are shared when matching references to definitions: a C file
# calling a function defined in a C++ file is normal, a Ruby file "calling" a Go function is not.
FAMILY = {"c": "c", "cpp": "c", "javascript": "js", "typescript": "js", "tsx": "js"}

_SHEBANGS = {"python": "python", "node": "javascript", "bash": "shell", "sh": "shell",
             "ruby": "ruby", "php": "php", "zsh": "shell"}


def family(language: str) -> str:
    """Languages whose identifiers may refer to each other share a family."""
    return FAMILY.get(language, language)


def detect_language(path: str, head: str = "") -> str:
    """Language of a repository file from its name (and shebang line).

    Args:
        path: repository-relative POSIX path.
        head: the first characters of the file, for a ``#!`` line.
    Returns:
        a tree-sitter-language-pack name for parsed languages, otherwise a plain label;
        ``"text"`` when nothing is known.
    """
    p = PurePosixPath(path)
    if p.name in FILENAMES:
        return FILENAMES[p.name]
    lang = EXTENSIONS.get(p.suffix.lower())
    if lang is not None:
        return lang
    if head.startswith("#!"):
        first = head.split("\n", 1)[0]
        words = first[2:].replace("/", " ").split()
        for word in reversed(words):
            for key, value in _SHEBANGS.items():
                if word == key or (word.startswith(key) and word[len(key):].replace(".", "").isdigit()):
                    return value
    return "text"


def query_source(language: str) -> str:
    """Text of the tags query for a parsed language."""
    name = _QUERY_FILE.get(language, language)
    return resources.files("ssa_code.context").joinpath("queries", f"{name}.scm").read_text("utf-8")


@functools.lru_cache(maxsize=None)
def query_digest(language: str) -> str:
    """Digest of the query text, part of the parse-cache key (editing a query invalidates)."""
    return hashlib.sha1(query_source(language).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def parser_and_query(language: str) -> tuple[Any, Any]:
    """(tree_sitter.Parser, tree_sitter.Query) for a parsed language, built once per process."""
    if language not in PARSED:
        raise ValueError(f"language {language!r} is not parsed; parsed: {sorted(PARSED)}")
    from tree_sitter import Query
    from tree_sitter_language_pack import get_language, get_parser

    return get_parser(language), Query(get_language(language), query_source(language))


def is_parsed(language: Optional[str]) -> bool:
    return language in PARSED
