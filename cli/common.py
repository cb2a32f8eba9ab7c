"""Shared pieces of the CLI: the stderr console and the one-line error contract."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console

from ssa_code.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


def err_console() -> Console:
    """Diagnostics and progress go to stderr; data goes to stdout.

    ``SSA_CODE_WIDTH`` fixes the width so tests render the same everywhere.
    """
    width = os.environ.get("SSA_CODE_WIDTH")
    return Console(stderr=True, width=int(width) if width else None, highlight=False)


def out_console() -> Console:
    width = os.environ.get("SSA_CODE_WIDTH")
    return Console(width=int(width) if width else None, highlight=False)


def fail(message: str, exit_code: int = 1) -> typer.Exit:
    """Print ``ssa-code: message`` on stderr and return the Exit to raise."""
    err_console().print(f"ssa-code: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(exit_code)


def user_errors(fn: F) -> F:
    """Turn :class:`UserError` and Ctrl-C inside a command into a one-line message and exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise fail(exc.message, exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper  # type: ignore[return-value]
