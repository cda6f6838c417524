"""CLI, bottom layer: the exit codes of ``plexd-api``, and the one line it prints for a
failure."""

from __future__ import annotations

from plexd.api import (
    APIConnectionError,
    ConfigError,
    ForbiddenError,
    NotFoundError,
    PlexdError,
    UnauthorizedError,
)

# The command's name, as it prefixes every error line and names itself in --help.
PROG = "plexd-api"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_CONNECTION = 5
# What a shell reports for a process ended by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
Exit codes:
  0  success
  1  failure
  2  usage error
  3  authentication refused (HTTP 401 or 403)
  4  not found (HTTP 404)
  5  connection failed or timed out"""

_HINTS = {
    EXIT_AUTH: "is the token right? (--token or PLEXD_TOKEN)",
    EXIT_CONNECTION: "is the control plane up at --base-url or PLEXD_BASE_URL?",
}


def exit_code_for(exc: BaseException) -> int:
    """The exit code a failure ends the command with."""
    if isinstance(exc, UnauthorizedError | ForbiddenError):
        return EXIT_AUTH
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, APIConnectionError):
        return EXIT_CONNECTION
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    return EXIT_FAILURE


def error_line(exc: BaseException) -> str:
    """One line saying what went wrong (and what to check), without a traceback."""
    if isinstance(exc, PlexdError | OSError):
        text = str(exc) or type(exc).__name__
    else:
        # Not one of ours: a bug or an unexpected condition; name the type to help a report.
        text = f"unexpected {type(exc).__name__}: {exc}"
    hint = _HINTS.get(exit_code_for(exc))
    if hint:
        text = f"{text}; {hint}"
    return one_line(text)


def one_line(text: str) -> str:
    """``text`` with its line breaks folded into spaces."""
    return " ".join(text.split())
