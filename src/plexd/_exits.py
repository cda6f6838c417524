"""What plexd's two command lines share, below both (``plexd-api`` in ``plexd.cli`` and
the emulator's in ``plexd.emulator.command``): the exit codes, the code a failed call
to a control plane ends with, and the one line an error is printed as."""

from __future__ import annotations

from plexd.api import APIConnectionError, ForbiddenError, NotFoundError, UnauthorizedError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_CONNECTION = 5


def failure_exit_code(exc: BaseException) -> int:
    """The exit code of a failure: refused authentication (401 or 403), not found (404),
    no connection (or a timeout), anything else."""
    if isinstance(exc, UnauthorizedError | ForbiddenError):
        return EXIT_AUTH
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, APIConnectionError):
        return EXIT_CONNECTION
    return EXIT_FAILURE


def one_line(text: str) -> str:
    """``text`` with its line breaks folded into spaces."""
    return " ".join(text.split())
