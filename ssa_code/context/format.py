"""The packed-context text format: file headers and the block layout.

This module is deliberately free of tree-sitter, gitpython and tokenizer imports: the
training script on the GPU machine imports it to pack its corpus exactly as ``ssa-code pack``
does, so a model sees the same header lines in training and in use.

A packed context is::

    <repository map block>
    === src/app.py (python, 42 lines) ===
    <file text, LF line ends, trailing blank lines dropped, ending in one newline>
    === README.md (markdown, 10 lines) ===
    ...

Each file block (header + body) always ends with exactly one ``\\n`` after a non-blank line,
and every block starts with ``===``.  Both choices keep block boundaries clean token
boundaries for byte-level BPE tokenizers, so blocks can be tokenized (and cached) one by one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

#: Bumped whenever the text produced here changes; part of every cache key.
FORMAT_VERSION = 1

HEADER_PREFIX = "=== "
HEADER_SUFFIX = " ==="
MAP_TITLE = "=== Repository map"

_HEADER_RE = re.compile(r"^=== (?P<path>.+) \((?P<language>[A-Za-z0-9_+#.-]+), (?P<lines>\d+) lines?\) ===$")


@dataclass(frozen=True)
class Header:
    """A parsed file header line."""

    path: str
    language: str
    lines: int


def file_header(path: str, language: str, lines: int) -> str:
    """The one-line header of a file block, newline included.

    Args:
        path: repository-relative POSIX path.
        language: language name (``"python"``, ``"text"``, ...).
        lines: number of lines of the normalised body (see :func:`normalise_text`).
    Returns:
        ``"=== path (language, N lines) ===\\n"``.
    """
    if "\n" in path or "\r" in path:
        raise ValueError(f"path must be one line, got {path!r}")
    unit = "line" if lines == 1 else "lines"
    return f"{HEADER_PREFIX}{path} ({language}, {lines} {unit}){HEADER_SUFFIX}\n"


def parse_header(line: str) -> Optional[Header]:
    """Inverse of :func:`file_header`; ``None`` when ``line`` is not a header."""
    m = _HEADER_RE.match(line.rstrip("\n"))
    if m is None:
        return None
    return Header(m["path"], m["language"], int(m["lines"]))


def normalise_text(text: str) -> str:
    """The body of a file as it appears in the packed context.

    CRLF and lone CR become LF, trailing whitespace at the end of the file is dropped, and
    a non-empty body ends with exactly one newline.  Line ``k`` of the body is line ``k`` of
    the file on disk, so ``file:line`` citations stay correct.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.rstrip()
    return text + "\n" if text else ""


def count_lines(body: str) -> int:
    """Lines of a normalised body (``normalise_text`` output)."""
    return body.count("\n")


def file_block(path: str, language: str, text: str) -> tuple[str, str]:
    """(header, body) of one file; ``text`` is the decoded file content."""
    body = normalise_text(text)
    return file_header(path, language, count_lines(body)), body


def tree_lines(paths: Sequence[str], label: Callable[[str], str]) -> list[str]:
    """Indented folder tree of ``paths`` (sorted), each file line produced by ``label(path)``."""
    lines: list[str] = []
    open_dirs: list[str] = []
    for path in sorted(paths):
        parts = path.split("/")
        dirs = parts[:-1]
        common = 0
        while common < len(open_dirs) and common < len(dirs) and open_dirs[common] == dirs[common]:
            common += 1
        open_dirs = open_dirs[:common]
        for d in dirs[common:]:
            lines.append("  " * len(open_dirs) + d + "/")
            open_dirs.append(d)
        lines.append("  " * len(dirs) + label(path))
    return lines


def map_block(title: str, lines: list[str]) -> str:
    """The repository map block: a title line then the map lines, ending in one newline."""
    body = "\n".join(line.rstrip() for line in lines).rstrip()
    head = f"{MAP_TITLE}: {title} ==="
    return head + "\n" + (body + "\n" if body else "")
