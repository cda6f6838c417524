"""Emulator, entry point: ``python -m plexd.emulator`` is the emulator's command line
(:mod:`.command`), the same as ``plexd-api emulator``."""

from __future__ import annotations

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python -m plexd.emulator"))
