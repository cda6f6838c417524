"""Pure logic, below the parser: which event id may go back as ``Last-Event-ID``.

WHATWG keeps whatever id the server sent; an HTTP header cannot carry all of them. The
rule (:func:`is_header_safe`) and how a refused id is told (:class:`UnsendableIdLog`)
live here once, for SSEParser's ``resume_id``, SSEStream and EventSource.
"""

from __future__ import annotations

import logging
import re

# The longest event id sent back as Last-Event-ID, in bytes of UTF-8. Servers refuse
# much longer header lines (aiohttp's server: 8190 bytes, nginx: 8 KiB by default).
MAX_RESUME_ID_BYTES = 4096
# RFC 9110 5.5: no control character but TAB in a field value (aiohttp refuses them with
# ValueError). A lone surrogate has no UTF-8 form (aiohttp's C writer drops it silently).
_NOT_IN_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
# How much of a (maybe huge) event id a log line shows.
_SHOWN_ID_LENGTH = 100


def is_header_safe(value: str, max_bytes: int | None = MAX_RESUME_ID_BYTES) -> bool:
    """Whether ``value`` can be sent as an HTTP header value (a ``Last-Event-ID``, say).

    It must hold no control character other than TAB (no C0 control, no DEL; RFC 9110,
    and aiohttp refuses them), no lone surrogate (no UTF-8 form), and be at most
    ``max_bytes`` bytes once encoded as UTF-8 (None: no bound). Other non-ASCII text is
    fine: it goes on the wire as UTF-8, as a browser's ``Last-Event-ID`` does.
    """
    # A character is at most 4 bytes of UTF-8: count the bytes only when it can matter.
    if (
        max_bytes is not None
        and len(value) * 4 > max_bytes
        and len(value.encode(errors="replace")) > max_bytes
    ):
        return False
    # isprintable() is false for every character refused (and for a few allowed ones).
    return value.isprintable() or _NOT_IN_HEADER.search(value) is None


def shown_id(value: str) -> str:
    """An event id for a log line or an error message: escaped, and cut if long."""
    if len(value) <= _SHOWN_ID_LENGTH:
        return repr(value)
    return f"{value[:_SHOWN_ID_LENGTH]!r}... ({len(value)} characters)"


class UnsendableIdLog:
    """Tells of an event id no header can carry: the first at WARNING, the rest at DEBUG
    (a server that sends one such id sends many)."""

    __slots__ = ("_log", "_told")

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._told = False

    def __call__(self, event_id: str, resume_id: str) -> None:
        level = logging.DEBUG if self._told else logging.WARNING
        self._told = True
        self._log.log(
            level,
            "event id %s cannot be sent as Last-Event-ID; a reconnection resumes from %s",
            shown_id(event_id),
            shown_id(resume_id),
            extra={"sse_id": shown_id(event_id)},
        )
