"""Errors that reach the user as one line and an exit code, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment.

    The CLI prints ``ssa-code: <message>`` on stderr and exits with ``exit_code``
    (2 for usage errors such as a bad path or option, 1 for everything else).
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class UsageError(UserError):
    """Bad arguments or a path that is not what the command needs (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)
