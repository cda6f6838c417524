"""Pure logic, below the facades: the checks of the arguments a caller passes in.

Each raises :class:`ArgumentError` (or :class:`ArgumentTypeError`) naming the
argument, once, where it is given, rather than letting aiohttp or an event loop
refuse it later at every connection.
"""

from __future__ import annotations

import math
import re
import ssl
from typing import Any

from ._config import Config
from ._resume import is_header_safe
from .errors import ArgumentError, ArgumentTypeError

# RFC 9110 5.6.2: a method or a header name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def is_header_value(value: str) -> bool:
    """Whether ``value`` can be sent as an HTTP header value, whatever its length: the
    rule of ``Last-Event-ID`` (aiohttp refuses a control character, and sends a lone
    surrogate as nothing, which would send another token than the one set)."""
    return is_header_safe(value, max_bytes=None)


def is_token(value: str) -> bool:
    """Whether ``value`` is an HTTP method or header name (an RFC 9110 token)."""
    return _TOKEN.fullmatch(value) is not None


def check_client_arguments(config: Any, version: Any, ssl_context: Any) -> None:
    """The arguments of ``ControlPlane``: a :class:`Config`, a version that can go into
    every User-Agent header, an :class:`ssl.SSLContext` or None."""
    if not isinstance(config, Config):
        raise ArgumentTypeError(f"config must be a Config, got {type(config).__name__}")
    if not isinstance(version, str) or not is_header_value(version):
        raise ArgumentError(f"version {version!r}: must be a str without control characters")
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise ArgumentTypeError(
            f"ssl_context must be an ssl.SSLContext, got {type(ssl_context).__name__}"
        )


def check_header(name: str, value: str) -> None:
    """A header a caller asks to send: a token for a name, a sendable str for a value."""
    if not (
        isinstance(name, str)
        and isinstance(value, str)
        and is_token(name)
        and is_header_value(value)
    ):
        raise ArgumentError(f"header {name!r} cannot be sent: a control character or a bad name")


def check_delay(name: str, value: float) -> None:
    """A wait: a finite number of seconds, 0 or more."""
    if not (_is_seconds(value) and value >= 0):
        raise ArgumentError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


def check_timeout(name: str, value: float | None) -> None:
    """A timeout: None (no timeout) or a finite number of seconds above 0."""
    if value is not None and not (_is_seconds(value) and value > 0):
        raise ArgumentError(
            f"{name} must be None or a finite number of seconds > 0, got {value!r}"
        )


def check_intervals(base: float, maximum: float) -> None:
    """Raise :class:`ArgumentError` unless ``0 <= base <= maximum``, both finite."""
    check_delay("base", base)
    check_delay("max", maximum)
    if maximum < base:
        raise ArgumentError(f"max ({maximum!r}) must not be below base ({base!r})")


def check_polling(after: float, interval: float) -> None:
    """Raise :class:`ArgumentError` unless ``after >= 0`` and ``interval > 0``, both finite."""
    check_delay("after", after)
    check_delay("interval", interval)
    if interval <= 0:
        raise ArgumentError(f"interval must be above 0 seconds, got {interval!r}")


def _is_seconds(value: object) -> bool:
    # A bool is an int to Python, never a number of seconds to a caller.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)
