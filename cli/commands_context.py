"""``ssa-code pack`` and ``ssa-code map``: the repository context commands.

Thin wrappers over :mod:`ssa_code.context`: data (the packed context, the outline) goes to
stdout or ``--output``; the summary goes to stderr (Rich table, or JSON with ``--json``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ssa_code import atomic
from ssa_code.cli.app import app
from ssa_code.cli.common import err_console, user_errors
from ssa_code.errors import UsageError, UserError

RepoArg = Annotated[Path, typer.Argument(help="The git repository (default: the current directory).")]
IncludeOpt = Annotated[Optional[list[str]], typer.Option(
    "--include", help="Only pack paths matching this glob (repeatable).")]
ExcludeOpt = Annotated[Optional[list[str]], typer.Option(
    "--exclude", help="Leave out paths matching this glob (repeatable).")]
UntrackedOpt = Annotated[bool, typer.Option(
    "--include-untracked", help="Also pack untracked files that git does not ignore.")]
MaxBytesOpt = Annotated[int, typer.Option(
    "--max-file-bytes", help="Skip files larger than this many bytes.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the parse/token cache.")]


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` whole (:mod:`ssa_code.atomic`); CLI errors for bad paths."""
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise UsageError(f"--output {path}: directory {parent} does not exist")
    if path.is_dir():
        raise UsageError(f"--output {path}: is a directory")
    try:
        atomic.write_bytes(path, data)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_stdout(data: str) -> None:
    """Write UTF-8 whatever the locale; a reader that closes the pipe (``| head``) ends quietly."""
    try:
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is not None:
            sys.stdout.flush()
            buffer.write(data.encode("utf-8"))
            buffer.flush()
        else:
            sys.stdout.write(data)
            sys.stdout.flush()
    except BrokenPipeError:
        # Python would print a traceback at exit when flushing the dead pipe again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        # 128 + SIGPIPE, as a command killed by the signal would report.
        raise typer.Exit(141) from None


def load_tokenizer(spec: Optional[str]) -> Any:
    """A tokenizer from ``--tokenizer``: a ``tokenizer.json`` file or a local model directory.

    ``None`` gives the bundled tiny model's tokenizer, loaded straight from its
    ``tokenizer.json`` (the same ids as ``ssa_code.models.default_tokenizer()``, without
    importing transformers, which would cost a second at every start).
    """
    from tokenizers import Tokenizer

    if spec is None:
        from ssa_code.models import TINY_MODEL_DIR

        path = TINY_MODEL_DIR / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"bundled tokenizer missing: {path}; pass --tokenizer")
        return Tokenizer.from_file(str(path))
    p = Path(spec).expanduser()
    if p.is_file():
        try:
            return Tokenizer.from_file(str(p))
        except Exception as exc:  # the Rust loader raises plain Exception subclasses
            raise UsageError(f"--tokenizer {spec}: not a tokenizer.json ({str(exc).splitlines()[0]})") from None
    if p.is_dir() and (p / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(p / "tokenizer.json"))
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(spec, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--tokenizer {spec}: no tokenizer found offline ({str(exc).splitlines()[0]})") from None


def _summary_table(summary: dict, seconds: float) -> None:
    console = err_console()
    table = Table(title=f"packed {summary['files']} files, {summary['lines']} lines, "
                        f"{summary['tokens']} tokens in {seconds:.2f}s", title_justify="left")
    table.add_column("language")
    table.add_column("files", justify="right")
    table.add_column("lines", justify="right")
    table.add_column("tokens", justify="right")
    for lang, s in summary["by_language"].items():
        table.add_row(lang, str(s["files"]), str(s["lines"]), str(s["tokens"]))
    table.add_row("(repository map)", "", "", str(summary["map_tokens"]))
    console.print(table)
    for key, label in (("skipped", "skipped"), ("omitted", "omitted by --budget")):
        items = summary[key]
        if not items:
            continue
        console.print(f"{len(items)} {label}:", markup=False)
        for item in items[:50]:
            console.print(f"  {item['path']}: {item['reason']}", markup=False, highlight=False)
        if len(items) > 50:
            console.print(f"  ... {len(items) - 50} more (--json lists all)", markup=False)
    if summary["focus"]:
        console.print("nearest the question: " + ", ".join(summary["focus"]), markup=False)


@app.command("pack")
@user_errors
def pack_command(
    repo: RepoArg = Path("."),
    question: Annotated[Optional[str], typer.Option(
        "--question", "-q", help="Move the files most relevant to this question to the end.")] = None,
    budget: Annotated[Optional[int], typer.Option(
        "--budget", "-b", help="At most this many tokens; the least relevant files are left out whole.")] = None,
    fmt: Annotated[OutputFormat, typer.Option(
        "--format", "-f", help="text: the context itself; json: text, token ids and spans.")] = OutputFormat.text,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write the context to this file instead of stdout.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(
        "--tokenizer", help="tokenizer.json or local model directory (default: the bundled tiny model's).")] = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    include_untracked: UntrackedOpt = False,
    max_file_bytes: MaxBytesOpt = 1_000_000,
    summary_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stderr.")] = False,
    no_cache: NoCacheOpt = False,
) -> None:
    """Pack a git repository into one long context (repository map, then every file)."""
    from ssa_code.context import PackOptions, pack_repository

    t0 = time.perf_counter()
    options = PackOptions(question=question, budget=budget, include=tuple(include or ()),
                          exclude=tuple(exclude or ()), include_untracked=include_untracked,
                          max_file_bytes=max_file_bytes, use_cache=not no_cache)
    packed = pack_repository(repo, load_tokenizer(tokenizer), options)
    if fmt is OutputFormat.json:
        data = json.dumps(packed.to_json(), ensure_ascii=False) + "\n"
    else:
        data = packed.text
    if output is not None:
        _write_atomic(output, data.encode("utf-8"))
    else:
        _write_stdout(data)
    summary = packed.summary()
    if summary_json:
        err_console().file.write(json.dumps(summary, ensure_ascii=False) + "\n")
    else:
        _summary_table(summary, time.perf_counter() - t0)


@app.command("map")
@user_errors
def map_command(
    repo: RepoArg = Path("."),
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    include_untracked: UntrackedOpt = False,
    max_file_bytes: MaxBytesOpt = 1_000_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outline as JSON.")] = False,
    no_cache: NoCacheOpt = False,
) -> None:
    """Print the symbol outline of a git repository: every file and its definitions."""
    from ssa_code.context import PackOptions, map_repository
    from ssa_code.context.repomap import build_outline, outline_json

    options = PackOptions(include=tuple(include or ()), exclude=tuple(exclude or ()),
                          include_untracked=include_untracked, max_file_bytes=max_file_bytes,
                          use_cache=not no_cache)
    walk, graph = map_repository(repo, options)
    if as_json:
        payload = {"repository": str(walk.root), "tree_id": walk.tree_id, "files": outline_json(graph),
                   "skipped": [{"path": p, "reason": r} for p, r in walk.skipped]}
        _write_stdout(json.dumps(payload, ensure_ascii=False) + "\n")
        return
    _write_stdout(build_outline(graph))
    if walk.skipped:
        err_console().print(f"{len(walk.skipped)} skipped (see pack --json for reasons)", markup=False)
