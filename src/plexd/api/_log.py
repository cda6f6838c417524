"""Bottom layer, beside ``errors``: the package logger's defaults.

A library must not print unless asked: the ``plexd.api`` logger gets a
:class:`logging.NullHandler`, so an application without logging set up sees nothing
(not even Python's "last resort" warnings). ``PLEXD_LOG=debug`` or ``PLEXD_LOG=info``
in the environment asks: the package then logs to stderr at that level, whatever the
application set up (as openai-python's ``OPENAI_LOG`` does).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

LOGGER_NAME = "plexd.api"
LOG_ENV = "PLEXD_LOG"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _EnvHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler PLEXD_LOG installs (a class of its own: installed once)."""


def setup_logging(environ: Mapping[str, str] | None = None) -> logging.Logger:
    """Give the package logger its NullHandler and, when ``PLEXD_LOG`` (in ``environ``,
    default ``os.environ``) is ``debug`` or ``info``, a stderr handler at that level.

    Run once at import; running it again adds nothing twice. Another value of
    ``PLEXD_LOG`` is ignored (a typo must not break an import).
    """
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    env = os.environ if environ is None else environ
    level = _LEVELS.get(env.get(LOG_ENV, "").strip().lower())
    if level is not None and not any(isinstance(h, _EnvHandler) for h in logger.handlers):
        handler = _EnvHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
        logger.setLevel(level)
        # Shown once: an application's own root handler would print each line again.
        logger.propagate = False
    return logger
