"""Pure logic: whether a failed request call is tried again, and after how long.

No I/O and no clock of its own: the request pipeline (``_client``) describes what went
wrong as a :class:`Failure` and asks :func:`retry_delay`, giving it the time left until
the call's deadline and a source of randomness, so every rule can be tested with a fake
clock and a fixed random.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from typing import NamedTuple

# The rules: 2 retries unless told otherwise, waits of 0.5 s doubling to 8 s.
DEFAULT_MAX_RETRIES = 2
DEFAULT_RETRY_BASE_DELAY = 0.5
DEFAULT_RETRY_MAX_DELAY = 8.0
# A Retry-After longer than this is not waited for: the error is raised at once, so the
# caller (who may have other work) decides rather than a call that hangs for an hour.
REQUEST_MAX_RETRY_AFTER = 60.0
# A wait is shortened by up to this fraction at random, never lengthened: many nodes
# failing at once spread their retries and no wait passes the maximum.
JITTER = 0.25
# base * 2**n stops growing here (2.0**1024 overflows a float; any base is past any cap
# long before 2**64).
MAX_BACKOFF_EXPONENT = 64
# The shortest time an attempt is given (a retry is only made with time left for it).
MIN_ATTEMPT_TIMEOUT = 0.001
# Statuses worth another try: the server or a proxy says "not now", not "never".
RETRIED_STATUSES = frozenset({408, 429, 502, 503, 504})
# Statuses that say the request was refused before it was acted on: safe to send again
# even when sending it twice would do it twice.
REFUSED_STATUSES = frozenset({429, 503})


class FailureKind(enum.Enum):
    """What a failed attempt ran into."""

    CONNECT = "connect"  # no connection was made: the request surely did not leave
    TIMEOUT = "timeout"  # the request may have reached the server
    BROKEN = "broken"  # the connection broke after the request may have been sent
    STATUS = "status"  # the server answered with a status outside 2xx
    OTHER = "other"  # anything else (a response the client cannot use, misuse)


class Failure(NamedTuple):
    """One failed attempt as the retry rules see it."""

    kind: FailureKind
    status: int = 0
    # The server's Retry-After in seconds (429, 503), None when it gave none.
    retry_after: float | None = None


def backoff_delay(
    attempt: int,
    random: Callable[[], float],
    base: float = DEFAULT_RETRY_BASE_DELAY,
    cap: float = DEFAULT_RETRY_MAX_DELAY,
) -> float:
    """The wait after failed attempt number ``attempt`` (1 for the first):
    ``base * 2**(attempt - 1)`` capped at ``cap``, shortened by up to 25 % at random."""
    exponent = min(max(attempt - 1, 0), MAX_BACKOFF_EXPONENT)
    return min(base * 2.0**exponent, cap) * (1.0 - JITTER * random())


def retry_delay(
    failure: Failure,
    *,
    attempt: int,
    max_retries: int,
    idempotent: bool,
    remaining: float,
    random: Callable[[], float],
    base: float = DEFAULT_RETRY_BASE_DELAY,
    cap: float = DEFAULT_RETRY_MAX_DELAY,
) -> float | None:
    """Seconds to wait before trying again after failed attempt number ``attempt``
    (1 for the first), or None when the failure is to be raised now.

    ``remaining`` is the time left until the call's deadline: a wait that would use it
    all is not worth making. A call that is not ``idempotent`` is sent again only when
    it surely was not acted on: no connection was made, or the answer was 429 or 503.
    """
    if attempt > max_retries or not _retried(failure, idempotent):
        return None
    if failure.retry_after is not None:
        if not math.isfinite(failure.retry_after) or failure.retry_after > REQUEST_MAX_RETRY_AFTER:
            return None
        delay = max(failure.retry_after, 0.0)
    else:
        delay = backoff_delay(attempt, random, base, cap)
    if delay >= remaining:
        return None
    return delay


def time_left(started: float, now: float, request_timeout: float, max_retries: int) -> float:
    """What is left of a call's time at ``now``: the call started at ``started`` has
    ``request_timeout * (max_retries + 1)`` in all, waits included."""
    return started + request_timeout * (max_retries + 1) - now


def attempt_timeout(left: float, request_timeout: float) -> float:
    """How long the next attempt may take: what is ``left`` of the call's time, at most
    ``request_timeout``, and at least 1 ms (to aiohttp a 0 would mean no limit)."""
    return max(min(left, request_timeout), MIN_ATTEMPT_TIMEOUT)


def _retried(failure: Failure, idempotent: bool) -> bool:
    kind = failure.kind
    if kind is FailureKind.CONNECT:
        return True
    if kind is FailureKind.STATUS:
        if idempotent:
            return failure.status in RETRIED_STATUSES
        return failure.status in REFUSED_STATUSES
    if kind is FailureKind.TIMEOUT or kind is FailureKind.BROKEN:
        return idempotent
    return False


def log_retry(
    log: logging.Logger, call: str, error: BaseException, attempt: int, attempts: int, delay: float
) -> None:
    """The INFO line of a retry: ``call`` failed with ``error`` (whose text shows what a
    server sent through ``printable``), attempt number ``attempt`` of ``attempts`` follows
    in ``delay`` seconds."""
    log.info(
        "%s failed (%s); attempt %d of %d in %.2f s",
        call,
        error,
        attempt,
        attempts,
        delay,
        extra={"call": call, "attempt": attempt, "delay": delay},
    )
