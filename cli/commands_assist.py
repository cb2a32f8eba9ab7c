"""``ask``, ``explain``, ``review`` and ``install-hook``: thin commands over ``ssa_code.engine``."""

from __future__ import annotations

import contextlib
import json
import shlex
import stat
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer

from ssa_code import atomic
from ssa_code.cli.app import app
from ssa_code.cli.common import err_console, fail, out_console, user_errors
from ssa_code.errors import UsageError, UserError

SSA_PRESETS = ("default", "small", "exact", "streaming", "h2o", "infllm")

RepoOpt = Annotated[Path, typer.Option("--repo", help="Path inside the git repository.")]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", help="Hugging Face id (already in the local cache), a local model folder, or 'tiny'."),
]
SSAOpt = Annotated[str, typer.Option("--ssa", help=f"SSA preset: {', '.join(SSA_PRESETS)}.")]
BudgetOpt = Annotated[
    Optional[int],
    typer.Option("--budget", min=1, help="Most tokens the whole context may take (repository, prompt and answer)."),
]
IncludeOpt = Annotated[list[str], typer.Option("--include", help="Only pack paths matching this glob (repeatable).")]
ExcludeOpt = Annotated[list[str], typer.Option("--exclude", help="Do not pack paths matching this glob (repeatable).")]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens in the answer.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", min=0.0, help="0 decodes greedily.")]
NoStateOpt = Annotated[bool, typer.Option("--no-state", help="Neither reuse nor save the prefilled repository state.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (for scripts).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Print timings (ttft, prefill) on stderr.")]


# -- Rich progress and streaming ----------------------------------------------------------------


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class RichUI:
    """Progress and warnings on stderr; the answer streamed to stdout as Markdown."""

    def __init__(self, stream_answer: bool, verbose: bool) -> None:
        self.err = err_console()
        self.stream_answer = stream_answer
        self.verbose = verbose
        self.warnings: list[str] = []

    def status(self, message: str) -> None:
        if self.verbose:
            self.err.print(message, markup=False, style="dim")

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.err.print(f"ssa-code: warning: {message}", markup=False, soft_wrap=True)

    @contextlib.contextmanager
    def prefill_progress(self, total: int) -> Iterator[Callable[[int, Any], None]]:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        import torch

        progress = Progress(
            TextColumn("prefill"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} tokens"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[mem]}"),
            TimeElapsedColumn(),
            console=self.err,
            transient=False,
        )
        task = progress.add_task("prefill", total=total, rate="", mem="")
        start = time.perf_counter()

        def report(done: int, cache: Any) -> None:
            elapsed = max(time.perf_counter() - start, 1e-9)
            if torch.cuda.is_available():
                mem = f"GPU {_gib(torch.cuda.max_memory_allocated())}"
            else:
                mem = f"state {_gib(cache.gpu_bytes())} (CPU)"
            progress.update(task, completed=done, rate=f"{done / elapsed:,.0f} tok/s", mem=mem)

        with progress:
            yield report

    @contextlib.contextmanager
    def answer_stream(self) -> Iterator[Callable[[str], None]]:
        if not self.stream_answer:
            yield lambda text: None
            return
        from rich.live import Live
        from rich.markdown import Markdown

        out = out_console()
        with Live(Markdown(""), console=out, refresh_per_second=8, vertical_overflow="visible") as live:
            yield lambda text: live.update(Markdown(text))


# -- shared plumbing -------------------------------------------------------------------------------


def _ssa_config(preset: str) -> Any:
    from ssa_code.attention import SSAConfig

    if preset not in SSA_PRESETS:
        raise UsageError(f"--ssa {preset!r} is not a preset; choose one of {', '.join(SSA_PRESETS)}")
    return SSAConfig.from_name(preset)


def _budget(option: int | None) -> int | None:
    if option is not None:
        return option
    from ssa_code.engine.models import config_dir, read_config

    value = read_config().get("budget")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"'budget' in {config_dir() / 'config.toml'} must be a positive integer")
    return value


def _load(model: str | None) -> Any:
    from ssa_code.engine.models import default_model_note, load_model, resolve_model_spec

    spec = resolve_model_spec(model)
    note = default_model_note(spec)
    if note:
        err_console().print(note, markup=False, soft_wrap=True)
    return load_model(spec)


def _pack(repo: Path, loaded: Any, include: list[str], exclude: list[str]) -> tuple[Any, Any]:
    from ssa_code.context import PackOptions, pack_repository

    # No question in the packing options: the packed repository (and so its saved state)
    # must not depend on the question, or a second question could not reuse it.
    options = PackOptions(question=None, budget=None, include=tuple(include), exclude=tuple(exclude))
    packed = pack_repository(str(repo), loaded.tokenizer, options)
    if not packed.files:
        raise UserError(f"{repo} has no text files to read{_skipped_summary(packed.skipped)}")
    # What changes the packed content (the cache folder and switch do not).
    key_options = {k: v for k, v in vars(options).items() if k not in ("cache_dir", "use_cache")}
    return packed, key_options


def _skipped_summary(skipped: list[tuple[str, str]], most: int = 3) -> str:
    """`` (2 skipped: 1 not matched by --include, 1 binary)``: why the walk left files out."""
    if not skipped:
        return ""
    reasons = Counter(reason for _, reason in skipped).most_common()
    parts = [f"{n} {reason}" for reason, n in reasons[:most]]
    if len(reasons) > most:
        parts.append(f"{sum(n for _, n in reasons[most:])} for other reasons")
    return f" ({len(skipped)} skipped: {', '.join(parts)})"


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process in bytes (``None`` where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def peak_memory(loaded: Any) -> dict[str, int | None]:
    """Process peaks after a query: GPU memory allocated (when the model runs on CUDA) and host RSS."""
    gpu = None
    device = getattr(loaded, "device", None)
    if getattr(device, "type", None) == "cuda":
        import torch

        gpu = int(torch.cuda.max_memory_allocated(device))
    return {"peak_gpu_bytes": gpu, "peak_rss_bytes": peak_rss_bytes()}


def _result_json(result: Any, loaded: Any) -> dict[str, Any]:
    return {
        "answer": result.answer,
        "sources": [{"path": s.path, "share": round(s.share, 4)} for s in result.sources],
        "ttft_s": None if result.ttft_s is None else round(result.ttft_s, 4),
        "prefill_s": round(result.prefill_s, 4),
        "state_reused": result.state_reused,
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "tokens": result.tokens,
        "memory": result.memory,
        "model": loaded.identity.get("model"),
        "device": str(loaded.device),
        "model_load": getattr(loaded, "load_path", None),
        "warnings": result.warnings,
    }


def _print_timings(result: Any) -> None:
    ttft = "n/a (empty answer)" if result.ttft_s is None else f"{result.ttft_s:.3f} s"
    memory = ""
    if result.memory.get("peak_gpu_bytes") is not None:
        memory += f" · peak GPU {_gib(result.memory['peak_gpu_bytes'])}"
    if result.memory.get("peak_rss_bytes") is not None:
        memory += f" · peak RSS {_gib(result.memory['peak_rss_bytes'])}"
    err_console().print(
        f"ttft {ttft} · prefill {result.prefill_s:.3f} s · state reused: {'yes' if result.state_reused else 'no'} · "
        f"{result.tokens.get('context', 0):,} context tokens · {result.tokens.get('answer', 0)} answer tokens{memory}",
        markup=False,
        soft_wrap=True,
    )


def _print_sources(result: Any) -> None:
    out = out_console()
    if not result.sources:
        return
    out.print("\nSources (attention while answering):", markup=False)
    for s in result.sources:
        out.print(f"  {s.share:6.1%}  {s.path}", markup=False)


def _run(
    kind: str,
    question: str,
    repo: Path,
    model: str | None,
    ssa: str,
    budget: int | None,
    include: list[str],
    exclude: list[str],
    max_tokens: int,
    temperature: float,
    no_state: bool,
    as_json: bool,
    verbose: bool,
    anchors_for: Callable[[Any], tuple[tuple[tuple[int, int], ...], str, Any]] | None = None,
    loaded: Any = None,
) -> tuple[Any, Any, Any]:
    """Load, pack, answer. Returns (result, loaded model, extra info from ``anchors_for``)."""
    from ssa_code.engine.generate import GenerationConfig
    from ssa_code.engine.session import Query, run_query

    from ssa_code.context.walk import open_repository

    ssa_config = _ssa_config(ssa)
    total_budget = _budget(budget)
    gen = GenerationConfig(max_new_tokens=max_tokens, temperature=temperature)
    # Cheap checks first: a wrong path must not wait for a model to load.
    open_repository(repo)
    t = time.perf_counter()
    loaded = loaded or _load(model)
    load_s = time.perf_counter() - t
    started = time.perf_counter()
    packed, options = _pack(repo, loaded, include, exclude)
    pack_s = time.perf_counter() - started
    extra: tuple[tuple[int, int], ...] = ()
    info = None
    if anchors_for is not None:
        extra, question, info = anchors_for(packed)
    ui = RichUI(stream_answer=not as_json, verbose=verbose)
    ui.status(f"packed {len(packed.files)} files, {len(packed.token_ids):,} tokens in {pack_s:.2f} s"
              f"{f' ({len(packed.skipped)} skipped)' if packed.skipped else ''}; model {loaded.identity.get('model')} "
              f"on {loaded.device} ({loaded.identity.get('dtype')}), loaded in {load_s:.2f} s")
    result = run_query(
        packed, Query(kind, question, extra), loaded, ssa_config, gen, options,
        ui=ui, reuse_state=not no_state, budget=total_budget, started=started,
    )
    result.timings = {"model_load_s": load_s, "pack_s": pack_s, **result.timings}
    result.memory = peak_memory(loaded)
    return result, loaded, info


def _check_question(question: str) -> str:
    if not question.strip():
        raise UsageError("the question is empty")
    return question.strip()


# -- commands --------------------------------------------------------------------------------------


@app.command()
@user_errors
def ask(
    question: Annotated[str, typer.Argument(help="The question about the repository.")],
    repo: RepoOpt = Path("."),
    model: ModelOpt = None,
    ssa: SSAOpt = "default",
    budget: BudgetOpt = None,
    include: IncludeOpt = [],  # noqa: B006 - Typer needs a literal default
    exclude: ExcludeOpt = [],  # noqa: B006
    max_tokens: MaxTokensOpt = 512,
    temperature: TemperatureOpt = 0.0,
    no_state: NoStateOpt = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Answer a question about the whole repository, streaming the answer and citing its sources."""
    question = _check_question(question)
    result, loaded, _ = _run("ask", question, repo, model, ssa, budget, include, exclude,
                             max_tokens, temperature, no_state, as_json, verbose)
    if as_json:
        print(json.dumps({"question": question, **_result_json(result, loaded)}, indent=2))
        return
    _print_sources(result)
    if verbose:
        _print_timings(result)


@app.command()
@user_errors
def explain(
    target: Annotated[str, typer.Argument(help="A symbol, a path, or path:line.")],
    repo: RepoOpt = Path("."),
    model: ModelOpt = None,
    ssa: SSAOpt = "default",
    budget: BudgetOpt = None,
    include: IncludeOpt = [],  # noqa: B006
    exclude: ExcludeOpt = [],  # noqa: B006
    max_tokens: MaxTokensOpt = 512,
    temperature: TemperatureOpt = 0.0,
    no_state: NoStateOpt = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Explain a symbol or file across files: its definition, callers and callees are pinned."""
    from ssa_code.engine.explain import explain_anchors

    target = _check_question(target)
    result, loaded, info = _run("explain", target, repo, model, ssa, budget, include, exclude,
                                max_tokens, temperature, no_state, as_json, verbose,
                                anchors_for=lambda packed: explain_anchors(packed, target))
    if as_json:
        print(json.dumps({"target": target, "pieces": [p.to_dict() for p in info], **_result_json(result, loaded)}, indent=2))
        return
    out = out_console()
    out.print("\nPinned:", markup=False)
    for p in info:
        out.print(f"  {p.role:7}  {p.path}:{p.line}  {p.name or '(top level)'}", markup=False)
    _print_sources(result)
    if verbose:
        _print_timings(result)


@app.command()
@user_errors
def review(
    staged: Annotated[bool, typer.Option("--staged", help="Review the staged change (the default).")] = False,
    rev: Annotated[Optional[str], typer.Option("--rev", help="Review a revision range, e.g. main..HEAD.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when a finding is at or above --fail-on.")] = False,
    fail_on: Annotated[str, typer.Option("--fail-on", help="Severity that fails --strict: info, warning or error.")] = "error",
    repo: RepoOpt = Path("."),
    model: ModelOpt = None,
    ssa: SSAOpt = "default",
    budget: BudgetOpt = None,
    include: IncludeOpt = [],  # noqa: B006
    exclude: ExcludeOpt = [],  # noqa: B006
    max_tokens: MaxTokensOpt = 384,
    no_state: NoStateOpt = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Review a change with the whole repository as context; findings as file:line: severity: message.

    Fail-open: when the model cannot run, a warning is printed and the exit code is 0, so a
    pre-commit hook never blocks a commit because of the tool itself.
    """
    from ssa_code.engine.review import SEVERITIES, at_or_above, get_diff, parse_findings, review_question

    try:
        if staged and rev is not None:
            raise UsageError("use either --staged or --rev, not both")
        if fail_on.lower() not in SEVERITIES:
            raise UsageError(f"--fail-on {fail_on!r} is not a severity; choose one of {', '.join(SEVERITIES)}")
        ssa_config_check = _ssa_config(ssa)  # noqa: F841 - validate before the diff
        diff = get_diff(repo, staged=rev is None, rev=rev)
    except UserError as exc:
        raise fail(exc.message, exc.exit_code) from None

    what = rev or "the staged change"
    if diff.empty:
        if as_json:
            print(json.dumps({"findings": [], "files": [], "reviewed": what, "skipped": "empty diff"}, indent=2))
        else:
            err_console().print(f"ssa-code: nothing to review in {what}", markup=False)
        return
    if diff.truncated:
        err_console().print("ssa-code: warning: the diff is long; only its start is reviewed", markup=False)

    try:
        result, loaded, _ = _run("review", review_question(diff), repo, model, ssa, budget, include, exclude,
                                 max_tokens, 0.0, no_state, True, verbose)
    except Exception as exc:  # noqa: BLE001
        # Fail-open: whatever keeps the model from running (a missing or broken model, no
        # memory, a bug of ours) must not stand between the user and their commit.
        message = exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        err_console().print(f"ssa-code: warning: review skipped, the model could not run: {message}",
                            markup=False, soft_wrap=True)
        if as_json:
            print(json.dumps({"findings": [], "files": diff.files, "reviewed": what, "skipped": message}, indent=2))
        return

    known = {f.path for f in result.packed.files} | set(diff.files)
    findings = parse_findings(result.answer, known)
    failing = at_or_above(findings, fail_on) if strict else []
    if as_json:
        print(json.dumps({
            "findings": [f.to_dict() for f in findings],
            "files": diff.files,
            "reviewed": what,
            "failing": len(failing),
            **{k: v for k, v in _result_json(result, loaded).items() if k != "answer"},
            "answer": result.answer,
        }, indent=2))
    else:
        out = out_console()
        for f in findings:
            out.print(str(f), markup=False, soft_wrap=True)
        err_console().print(
            f"ssa-code: {len(findings)} finding{'s' if len(findings) != 1 else ''} in {what} "
            f"({len(diff.files)} file{'s' if len(diff.files) != 1 else ''})",
            markup=False,
        )
        if verbose:
            _print_timings(result)
    if failing:
        err_console().print(
            f"ssa-code: {len(failing)} finding{'s' if len(failing) != 1 else ''} at or above '{fail_on.lower()}' (--strict)",
            markup=False,
        )
        raise typer.Exit(1)


HOOK_MARK = "# installed by ssa-code install-hook"


def hook_script(args: list[str]) -> str:
    """The plain git pre-commit hook: runs this Python's ssa-code on the staged change."""
    # `python -c` rather than `-m ssa_code.cli.app`: run as __main__, app.py would be a second
    # module whose Typer app has none of the commands registered on ssa_code.cli.app.
    entry = "import sys; from ssa_code.cli.app import main; sys.argv[0] = 'ssa-code'; main()"
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-c", entry, "review", "--staged", *args])
    return (
        "#!/bin/sh\n"
        f"{HOOK_MARK}\n"
        "# Reviews the staged change with ssa-code. Fail-open: if the model cannot run the commit\n"
        "# goes through with a warning. Skip once with `git commit --no-verify`.\n"
        f"exec {cmd}\n"
    )


@app.command("install-hook")
@user_errors
def install_hook(
    repo: RepoOpt = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing pre-commit hook.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Block the commit on findings at or above --fail-on.")] = False,
    fail_on: Annotated[str, typer.Option("--fail-on", help="Severity that blocks with --strict.")] = "error",
    model: ModelOpt = None,
    ssa: SSAOpt = "default",
) -> None:
    """Install a plain git pre-commit hook that runs `ssa-code review --staged`."""
    import git

    from ssa_code.engine.review import SEVERITIES

    if fail_on.lower() not in SEVERITIES:
        raise UsageError(f"--fail-on {fail_on!r} is not a severity; choose one of {', '.join(SEVERITIES)}")
    try:
        r = git.Repo(repo, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise UsageError(f"{repo} is not a git repository") from None
    if r.bare:
        raise UsageError(f"{repo} is a bare repository; hooks need a working tree")
    hooks = Path(r.git.rev_parse("--git-path", "hooks"))
    if not hooks.is_absolute():
        hooks = Path(r.working_tree_dir) / hooks
    hook = hooks / "pre-commit"
    if (hook.exists() or hook.is_symlink()) and not force:
        raise UserError(f"{hook} already exists; pass --force to replace it")
    args: list[str] = []
    if strict:
        args += ["--strict", "--fail-on", fail_on.lower()]
    if model:
        # A relative model path must still resolve when git runs the hook from the repository root.
        args += ["--model", str(Path(model).resolve()) if Path(model).exists() else model]
    if ssa != "default":
        args += ["--ssa", ssa]
    hooks.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(hook) as tmp:
        tmp.write_text(hook_script(args), encoding="utf-8")
        tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    err_console().print(f"installed {hook}", markup=False)
