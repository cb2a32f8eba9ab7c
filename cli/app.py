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
)


def _register() -> None:
    # Imported for their side effect: each module adds its commands to ``app``.
    import importlib

    for name in ("ssa_code.cli.commands_context", "ssa_code.cli.commands_assist", "ssa_code.cli.commands_bench"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A command group that is not written yet must not break the others.
            if exc.name != name:
                raise


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        app(standalone_mode=False)
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

        if isinstance(exc, click.exceptions.ClickException):
            exc.show(file=sys.stderr)
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            print("ssa-code: aborted", file=sys.stderr)
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
