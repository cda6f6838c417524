"""Pure logic, below the reconnect loop: what a failed connection attempt calls for.

:func:`classify_error` is the node's rule (``SSEManager``), :func:`classify_as_browser`
the WHATWG ``EventSource``'s; both answer with a :class:`FailureAction`, which
``ReconnectPolicy`` turns into a wait or a stop.
"""

from __future__ import annotations

import enum

from .errors import (
    RETRY_AFTER_STATUSES,
    APIConnectionError,
    APIError,
    ArgumentError,
    ClientClosedError,
    ConfigError,
    EventLoopError,
    PlexdError,
    SSEProtocolError,
)

# 4xx statuses that describe a passing condition rather than a wrong request.
_TRANSIENT_4XX = frozenset({408, 425})
# The 4xx a browser's EventSource reconnects after; every other 4xx ends the iteration.
_BROWSER_RETRIED_4XX = _TRANSIENT_4XX | {429}
# Failures no server and no network can cause (a closed client, a wrong setting or
# argument, another event loop): the next attempt would fail the same way.
_CALLERS_FAILURES = (ClientClosedError, ConfigError, ArgumentError, EventLoopError)


class FailureAction(enum.Enum):
    """What a failed connection attempt calls for."""

    RETRY_TRANSIENT = "retry_transient"
    RETRY_AUTH = "retry_auth"
    RESPECT_SERVER = "respect_server"
    PERMANENT_FAILURE = "permanent_failure"


def classify_error(exc: BaseException) -> FailureAction:
    """Map a failure to an action; the transient failures are listed, all else is permanent.

    - ``RETRY_TRANSIENT``: :class:`APIConnectionError` (timeouts included, the
      :class:`SSEIdleTimeoutError` of a silent stream too), :class:`SSEProtocolError`,
      and an :class:`APIError` with a 5xx, 408 or 425 status. A 503 is
      ``RETRY_TRANSIENT`` even with a ``Retry-After``: the action says what failed, and
      :class:`ReconnectPolicy` honours the ``retry_after`` of any retried failure that
      carries one (429 and 503 do).
    - ``RESPECT_SERVER``: 429.
    - ``RETRY_AUTH``: 401 (the engine calls ``on_auth_failure`` and stops).
    - ``PERMANENT_FAILURE``: everything else: 403, 404, every other 4xx, an unfollowed
      3xx, a closed client (:class:`ClientClosedError`), :class:`ConfigError`,
      :class:`ArgumentError`, :class:`EventLoopError`, any other :class:`PlexdError`,
      and any exception the package does not raise on purpose (a bug): the same
      attempt would fail the same way, so it surfaces instead of looping.
    """
    if isinstance(exc, APIError):
        return _classify_status(exc.status_code)
    if isinstance(exc, APIConnectionError | SSEProtocolError):
        return FailureAction.RETRY_TRANSIENT
    return FailureAction.PERMANENT_FAILURE


def _classify_status(status: int) -> FailureAction:
    if status == 401:
        return FailureAction.RETRY_AUTH
    if status == 429:
        return FailureAction.RESPECT_SERVER
    if status >= 500 or status in _TRANSIENT_4XX:
        return FailureAction.RETRY_TRANSIENT
    return FailureAction.PERMANENT_FAILURE


def classify_as_browser(exc: BaseException) -> FailureAction:
    """What an ``EventSource`` does after a failed connection, as a browser would.

    401, 403, 404, 410 and every other 4xx except 408, 425 and 429 stop it: retrying
    cannot help (a 204, the server's "no more", never gets here). 429 and 503 respect
    the server's Retry-After; any other status, an I/O error, a read timeout and a
    response that is not an event stream reconnect. What no server can cause stops it
    (:class:`ClientClosedError`, :class:`ConfigError`, :class:`ArgumentError`,
    :class:`EventLoopError`), and so does anything that is not a :class:`PlexdError`
    (a bug).
    """
    if isinstance(exc, APIError):
        status = exc.status_code
        if status in RETRY_AFTER_STATUSES:
            return FailureAction.RESPECT_SERVER
        if 400 <= status < 500 and status not in _BROWSER_RETRIED_4XX:
            return FailureAction.PERMANENT_FAILURE
        return FailureAction.RETRY_TRANSIENT
    if isinstance(exc, PlexdError) and not isinstance(exc, _CALLERS_FAILURES):
        return FailureAction.RETRY_TRANSIENT
    return FailureAction.PERMANENT_FAILURE
