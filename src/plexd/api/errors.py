"""Bottom layer: every exception of the package, the mapping of an HTTP error response
to its exception, and how a message shows what a server sent (:func:`printable`) or a
secret (:data:`MASK`).

The tree (public names are exported by :mod:`plexd.api`)::

    Exception
    ├── PlexdError                      root of everything the package raises
    │   ├── ConfigError (ValueError)
    │   ├── ArgumentError (ValueError)
    │   │   └── ArgumentTypeError (TypeError)
    │   ├── ClientClosedError
    │   ├── EventLoopError (RuntimeError)
    │   ├── APIError                    a status outside 2xx
    │   │   ├── BadRequestError         400
    │   │   ├── UnauthorizedError       401
    │   │   ├── ForbiddenError          403
    │   │   ├── NotFoundError           404
    │   │   ├── ConflictError           409
    │   │   ├── PayloadTooLargeError    413
    │   │   ├── RateLimitError          429
    │   │   └── ServerError             5xx
    │   ├── APIConnectionError          no response: DNS, connect, TLS, reset
    │   │   └── APITimeoutError
    │   │       └── SSEIdleTimeoutError no bytes on the event stream for the idle timeout
    │   ├── ResponseError               a 2xx the client cannot use
    │   ├── ChecksumError
    │   ├── NaiveDatetimeError (ValueError)
    │   ├── EnvelopeError
    │   ├── VerificationError
    │   │   └── DecryptionError         a secret does not decrypt (decrypt_secret)
    │   ├── SSEProtocolError
    │   └── _NoContent                  internal: an EventSource's server answered 204
    └── _StopRequested                  internal: an attempt saw the engine stopped
"""

from __future__ import annotations

import datetime
import email.utils
import time
from collections.abc import Mapping
from typing import Any

import msgspec

# API.md: "APIError.message is at most the first 4096 bytes of the body".
MAX_ERROR_BODY = 4096
PROBLEM_JSON = "application/problem+json"
"""The media type of a problem document (RFC 9457), whose members an APIError takes."""
# API.md: "retry_after is parsed from Retry-After on 429 and 503".
RETRY_AFTER_STATUSES = frozenset({429, 503})
# What a secret (a token, a password, a key) shows as in a repr, a message or a log line.
MASK = "***"
# The header a server or proxy names its log entry for a request with.
CORRELATION_ID_HEADER = "X-Correlation-Id"
# A correlation id longer than this (UTF-8 bytes) is dropped: an id is a short token,
# and a long one is a server (or proxy) stuffing text into our messages.
MAX_CORRELATION_ID = 256


def printable(text: str) -> str:
    """``text`` with every character ``repr()`` would escape shown escaped (``\\x0a``,
    ``\\x1b``, ``\\u202e``...), for a message or a log line that shows what a server sent.

    Raw, a line break would let a hostile server or proxy forge a log line, and an escape
    sequence or a bidirectional override would rewrite what a terminal shows.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escaped(char) for char in text)


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class PlexdError(Exception):
    """Root of every exception plexd-api raises."""


class ConfigError(PlexdError, ValueError):
    """A :class:`Config` that cannot work; the message names the field."""


class ArgumentError(PlexdError, ValueError):
    """An argument passed to the package cannot work (an empty node id, a size below 1)."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the wrong type (e.g. a Python value where raw JSON belongs)."""


class ClientClosedError(PlexdError):
    """The client was used after it was closed; closing is final."""


class EventLoopError(PlexdError, RuntimeError):
    """An asyncio object of the package was used from an event loop other than its own.

    A :class:`ControlPlane` belongs to the loop it was first used on (its connections
    do); make one client per ``asyncio.run()``.
    """


class APIError(PlexdError):
    """The control plane answered with a status outside 2xx.

    ``message`` is the start of the response body (at most 4096 bytes). When the
    body is an RFC 9457 problem document, ``title``, ``detail`` and ``code`` carry
    its members (empty when absent). ``correlation_id`` names the request in the
    server's logs: the problem document's ``correlation_id``, else the response's
    ``X-Correlation-Id`` header; "" when neither gave a usable one (one over 256
    bytes is dropped, unprintable characters are removed).
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        retry_after: float | None = None,
        title: str = "",
        detail: str = "",
        code: str = "",
        method: str = "",
        path: str = "",
        correlation_id: str = "",
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.retry_after = retry_after
        self.title = title
        self.detail = detail
        self.code = code
        self.method = method
        self.path = path
        self.correlation_id = correlation_id
        super().__init__(status_code, message)

    def __str__(self) -> str:
        where = f"{self.method} {self.path}: " if self.method else ""
        text = printable(self.detail or self.title or self.message.strip())
        shown = f"{where}HTTP {self.status_code}" + (f": {text}" if text else "")
        if self.correlation_id:
            shown += f" (correlation id {printable(self.correlation_id)})"
        return shown

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, message={self.message!r})"


class BadRequestError(APIError):
    """400 Bad Request."""


class UnauthorizedError(APIError):
    """401 Unauthorized: the token is missing, wrong or revoked."""


class ForbiddenError(APIError):
    """403 Forbidden: the token may not touch this resource."""


class NotFoundError(APIError):
    """404 Not Found."""


class ConflictError(APIError):
    """409 Conflict."""


class PayloadTooLargeError(APIError):
    """413 Payload Too Large."""


class RateLimitError(APIError):
    """429 Too Many Requests; ``retry_after`` is the server's wait in seconds, if it gave one."""


class ServerError(APIError):
    """Any 5xx."""


class APIConnectionError(PlexdError):
    """The request did not get a response: DNS, connect, TLS, reset, or a broken body.

    The transport's own exception is the ``__cause__``.
    """


class APITimeoutError(APIConnectionError):
    """A connect, request or read timeout expired."""


class ResponseError(PlexdError):
    """A 2xx response the client cannot use: empty, not JSON, the wrong shape, or too large."""


class ChecksumError(PlexdError):
    """A downloaded artifact does not match the checksum it was announced with."""


class NaiveDatetimeError(PlexdError, ValueError):
    """A wire type was given a datetime without a timezone (it would be sent as local time)."""


class EnvelopeError(PlexdError):
    """An event's data is not a usable signed envelope."""


class VerificationError(PlexdError):
    """A signed envelope failed verification; the message says which check."""


class DecryptionError(VerificationError):
    """A secret does not decrypt: a wrong node secret key, or tampered or malformed data."""


class SSEProtocolError(PlexdError):
    """The event stream broke the protocol, e.g. the response is not text/event-stream."""


class SSEIdleTimeoutError(APITimeoutError):
    """No bytes arrived on the event stream for the idle timeout."""


class _NoContent(PlexdError):
    """An :class:`EventSource`'s server answered 204: it wants no more reconnections."""


class _StopRequested(Exception):
    """Raised by an attempt that saw its reconnect engine stopped, to stop early."""


_STATUS_CLASSES: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitError,
}


def error_class(status: int) -> type[APIError]:
    """The exception class for a non-2xx status."""
    if status >= 500:
        return ServerError
    return _STATUS_CLASSES.get(status, APIError)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date.

    A date in the past gives 0; an absent or unparsable value gives None.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit() and value.isascii():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # An HTTP-date is always GMT; the asctime form just does not say so.
        when = when.replace(tzinfo=datetime.UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class _Problem(msgspec.Struct):
    title: Any = ""
    detail: Any = ""
    code: Any = ""
    correlation_id: Any = ""


_NO_PROBLEM = ("", "", "", "")


def _problem_members(body: bytes) -> tuple[str, str, str, str]:
    # A problem body is the server's word, not ours to trust: anything that does not
    # decode (nesting too deep for the decoder included) leaves the members empty.
    try:
        problem = msgspec.json.decode(body, type=_Problem)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return _NO_PROBLEM
    correlation_id = problem.correlation_id
    return (
        _member(problem.title),
        _member(problem.detail),
        _member(problem.code),
        correlation_id if isinstance(correlation_id, str) else "",
    )


def correlation_id_of(value: str | None) -> str:
    """A correlation id as it may be kept and shown: "" for none or one longer than
    :data:`MAX_CORRELATION_ID` UTF-8 bytes; unprintable characters (line breaks,
    escape sequences, bidirectional overrides) removed, so it cannot forge a log line."""
    if not value:
        return ""
    if len(value) > MAX_CORRELATION_ID or (
        not value.isascii() and len(value.encode("utf-8", "surrogatepass")) > MAX_CORRELATION_ID
    ):
        return ""
    if value.isprintable():
        return value.strip()
    return "".join(char for char in value if char.isprintable()).strip()


def _member(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    # null, or a list or an object where text belongs: nothing to show.
    return ""


def from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    method: str = "",
    path: str = "",
) -> APIError:
    """Build the exception for a non-2xx response from its status, headers and body prefix."""
    body = body[:MAX_ERROR_BODY]
    retry_after = None
    if status in RETRY_AFTER_STATUSES:
        retry_after = parse_retry_after(headers.get("Retry-After"))
    title = detail = code = correlation_id = ""
    content_type = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if content_type == PROBLEM_JSON:
        title, detail, code, correlation_id = _problem_members(body)
    correlation_id = correlation_id_of(correlation_id) or correlation_id_of(
        headers.get(CORRELATION_ID_HEADER)
    )
    return error_class(status)(
        status,
        body.decode("utf-8", errors="replace"),
        retry_after=retry_after,
        title=title,
        detail=detail,
        code=code,
        method=method,
        path=path,
        correlation_id=correlation_id,
    )
