"""The ``ssa-code`` command line: a thin Typer app over the library.

Each group of commands lives in its own module and registers itself on ``app``;
this module only wires them together and turns :class:`ssa_code.errors.UserError`
into a one-line message and an exit code.
"""

from __future__ import annotations

import sys

import typer

from ssa_code.errors import UserError

app = typer.Typer(
    name="ssa-code",
    help="Understand a whole git repository with a local model and Streaming Sparse Attention.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _register() -> None:
    # Imported for their side effect: each module adds its commands to ``app``.
    import importlib

    for name in ("ssa_code.cli.commands_context", "ssa_code.cli.commands_assist", "ssa_code.cli.commands_bench"):
        importlib.import_module(name)


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        # Without standalone mode click returns (not raises) the code of a typer.Exit.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except UserError as exc:
        print(f"ssa-code: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("ssa-code: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # click's own usage errors arrive here in standalone_mode=False
        import click

        # typer >= 0.24 vendors click as typer._click: its exceptions are not click's classes.
        exc_mods = [click.exceptions]
        try:
            from typer._click import exceptions as typer_click_exceptions

            exc_mods.append(typer_click_exceptions)
        except ImportError:
            pass
        if any(isinstance(exc, m.ClickException) for m in exc_mods):
            exc.show(file=sys.stderr)
            sys.exit(exc.exit_code)
        if any(isinstance(exc, getattr(m, "Abort", ())) for m in exc_mods):
            print("ssa-code: aborted", file=sys.stderr)
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
