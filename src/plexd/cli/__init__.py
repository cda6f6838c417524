"""CLI, entry point: the ``plexd-api`` command, to talk to a control plane, watch its
events, run the emulator.

click and rich (the optional ``cli`` extra) are imported only when the command runs,
so ``import plexd`` never needs them. Every failure ends as one line on stderr and an
exit code (see :mod:`plexd.cli.errors`); set ``PLEXD_DEBUG=1`` to get the traceback.

Layers from the bottom: ``errors``, ``output`` and ``connection`` (exit codes, what is
printed, reaching the control plane) → ``watch``, ``artifact`` and the demo
(``demo_scenario`` → ``demo``) → ``commands`` (the click group) → this entry point.
Everything the CLI needs from the library comes from ``plexd.api``'s public names.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    error_line,
    exit_code_for,
    one_line,
)

__all__ = ["main"]

_CLI_PACKAGES = frozenset({"click", "rich"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    try:
        import click
        import rich  # noqa: F401  (artifact and demo draw with it: say so before any work)

        from .commands import cli
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] not in _CLI_PACKAGES:
            raise
        _error("the command line needs click and rich: pip install 'plexd-api[cli]'")
        return EXIT_FAILURE

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args=args, prog_name=PROG, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        return exc.exit_code
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else PROG
        _error(f"{exc.format_message()} (see '{command} --help')")
        return EXIT_USAGE
    except click.ClickException as exc:
        _error(exc.format_message())
        return exc.exit_code
    except click.Abort:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("PLEXD_DEBUG"):
            raise
        _error(error_line(exc))
        return exit_code_for(exc)
    return result if isinstance(result, int) else 0


def _error(message: str) -> None:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr, flush=True)
