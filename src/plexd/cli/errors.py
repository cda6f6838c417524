"""CLI, bottom layer: the exit codes of ``plexd-api``, and the one line it prints for a
failure."""

from __future__ import annotations

from plexd._exits import (
    EXIT_AUTH,
    EXIT_CONNECTION,
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    failure_exit_code,
    one_line,
)
from plexd.api import ConfigError, PlexdError

__all__ = [
    "EXIT_AUTH",
    "EXIT_CODES_HELP",
    "EXIT_CONNECTION",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "error_line",
    "exit_code_for",
    "one_line",
]

# The command's name, as it prefixes every error line and names itself in --help.
PROG = "plexd-api"

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
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    return failure_exit_code(exc)


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

