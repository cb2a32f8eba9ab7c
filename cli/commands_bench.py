"""``ssa-code bench``: the needle benchmark and the pooling of its reports, from the CLI.

Thin wrappers: the options are those of ``python -m ssa_code.bench.needle`` and ``python -m
ssa_code.bench.needle_pool`` (``ssa-code bench needle --help`` lists them), which the GPU machine
without this package's console script runs directly.
"""

from __future__ import annotations

import typer

from ssa_code.cli.app import app

bench_app = typer.Typer(help="Benchmarks: the needle in a haystack, and pooling its reports over seeds.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

# Every argument, --help included, goes to the benchmark's own parser.
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _run(main, args: list[str], prog: str) -> None:
    code = main(args, prog=prog)
    if code:
        raise typer.Exit(code)


@bench_app.command("needle", context_settings=_PASS_THROUGH, add_help_option=False)
def needle(ctx: typer.Context) -> None:
    """Needle in a haystack of packed code, every method side by side (--help for the options)."""
    from ssa_code.bench import needle as bench

    _run(bench.main, ctx.args, "ssa-code bench needle")


@bench_app.command("pool", context_settings=_PASS_THROUGH, add_help_option=False)
def pool(ctx: typer.Context) -> None:
    """Pool needle reports of several seeds: accuracy with 95% intervals, methods cell by cell."""
    from ssa_code.bench import needle_pool

    _run(needle_pool.main, ctx.args, "ssa-code bench pool")
