"""Reviewing a change: the diff (gitpython), the question around it, and the model's findings.

The model is asked for one finding per line, ``path:line: severity: message``; models format
loosely, so the parser also takes bullets, backticks, brackets around the severity and
``warn``/``note``. A finding must name a file of the repository (an invented path is dropped)
and a line >= 1. Severities are ordered ``info < warning < error``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from ssa_code.errors import UsageError

SEVERITIES = ("info", "warning", "error")
_ALIASES = {"warn": "warning", "note": "info", "err": "error", "critical": "error", "bug": "error"}
# Diffs past this many characters are cut (with a marker) so one huge change cannot crowd out
# the repository; the cut is reported.
MAX_DIFF_CHARS = 60_000


def severity_rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for error; ``ValueError`` for anything else."""
    s = _ALIASES.get(severity.lower(), severity.lower())
    if s not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}; expected one of {', '.join(SEVERITIES)}")
    return SEVERITIES.index(s)


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    severity: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.severity}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Diff:
    """A unified diff and what it touches.

    ``added`` maps each changed file (new path) to the line numbers added or modified in its new
    version.
    """

    text: str
    files: list[str] = field(default_factory=list)
    added: dict[str, set[int]] = field(default_factory=dict)
    truncated: bool = False

    @property
    def empty(self) -> bool:
        return not self.text.strip()


_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")


def parse_diff(text: str) -> Diff:
    """Files and added line numbers of a unified diff (``git diff`` output)."""
    diff = Diff(text)
    path: str | None = None
    line = 0
    for raw in text.splitlines():
        if raw.startswith("diff --git "):
            path = None
        elif raw.startswith("+++ "):
            target = raw[4:].strip()
            path = None if target == "/dev/null" else target[2:] if target.startswith("b/") else target
            if path is not None and path not in diff.added:
                diff.files.append(path)
                diff.added[path] = set()
        elif raw.startswith("@@"):
            m = _HUNK.match(raw)
            line = int(m.group(1)) if m else 0
        elif path is not None and line:
            if raw.startswith("+"):
                diff.added[path].add(line)
                line += 1
            elif raw.startswith(" "):
                line += 1
    return diff


def get_diff(repo_path: str | Path, *, staged: bool = True, rev: str | None = None) -> Diff:
    """The staged change (``git diff --cached``) or a revision range (``git diff RANGE``)."""
    import git

    from ssa_code.context.walk import open_repository

    repo = open_repository(repo_path, purpose="review")
    args = ["--no-color", "--no-ext-diff", "--unified=3"]
    try:
        if rev is not None:
            if not rev.strip() or rev.startswith("-"):
                raise UsageError(f"--rev {rev!r} is not a revision range")
            text = repo.git.diff(rev, *args, "--")
        else:
            text = repo.git.diff("--cached", *args)
    except git.GitCommandError as exc:
        detail = (exc.stderr or "").strip().splitlines()
        reason = detail[0].removeprefix("stderr: ").strip(" '") if detail else "git diff failed"
        raise UsageError(f"cannot diff {rev or 'the staged change'}: {reason}") from None
    diff = parse_diff(text)
    if len(text) > MAX_DIFF_CHARS:
        diff.text = text[:MAX_DIFF_CHARS] + "\n[... diff truncated ...]\n"
        diff.truncated = True
    return diff


def review_question(diff: Diff) -> str:
    """The text that goes where ``{question}`` is in ``prompts/review.txt``."""
    return f"The change (unified diff):\n\n```diff\n{diff.text.rstrip()}\n```"


_FINDING = re.compile(
    r"""^[\s>*\-+•\d.)]*            # bullets or numbering
        `?(?P<path>[^\s`:'"()\[\]]+?)  # a repository path
        :(?P<line>\d+)(?::\d+)?`?      # :line (and an optional :column)
        [\s:,\-–—]*
        [\[(*]*(?P<sev>info|warning|warn|error|err|note|critical|bug)[\])*]*
        [\s:,\-–—]*
        (?P<msg>\S.*?)\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


def parse_findings(text: str, known_paths: Iterable[str] | None = None) -> list[Finding]:
    """Findings in the model's answer, in order, without duplicates.

    ``known_paths``: when given, a finding whose path is not among them (after stripping a
    leading ``./``, ``a/`` or ``b/``) is dropped as invented.
    """
    known = set(known_paths) if known_paths is not None else None
    out: list[Finding] = []
    seen = set()
    for raw in text.splitlines():
        m = _FINDING.match(raw)
        if not m:
            continue
        path = m["path"]
        for prefix in ("./", "a/", "b/"):
            if known is not None and path not in known and path.startswith(prefix):
                path = path[len(prefix):]
        if known is not None and path not in known:
            continue
        line = int(m["line"])
        if line < 1:
            continue
        sev = SEVERITIES[severity_rank(m["sev"])]
        f = Finding(path, line, sev, m["msg"])
        if (f.path, f.line, f.severity, f.message) not in seen:
            seen.add((f.path, f.line, f.severity, f.message))
            out.append(f)
    return out


def at_or_above(findings: Iterable[Finding], level: str) -> list[Finding]:
    """Findings whose severity is at least ``level``."""
    rank = severity_rank(level)
    return [f for f in findings if severity_rank(f.severity) >= rank]
