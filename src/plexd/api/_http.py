"""I/O layer, below every facade: reading an HTTP response (capped, gzip), mapping
transport failures and non-2xx statuses to :mod:`.errors`, the streaming responses,
and :func:`run_connection`, the one read loop of every event stream.

``ControlPlane`` (``_client``) and ``EventSource`` (``_eventsource``) both build on
it; it knows nothing of either.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import aiohttp

from ._retry import Failure, FailureKind
from ._transport import release_tls_write_buffer, scrub_transport_error
from .errors import (
    MAX_ERROR_BODY,
    APIConnectionError,
    APIError,
    APITimeoutError,
    PlexdError,
    ResponseError,
    SSEIdleTimeoutError,
    SSEProtocolError,
    from_response,
    printable,
)

T = TypeVar("T")

EVENT_STREAM = "text/event-stream"
"""The media type of an event stream (WHATWG)."""
# Largest piece of decompressed output produced at once, so a gzip bomb never
# expands in memory by more than this before the cap is checked.
_INFLATE_STEP = 256 * 1024
_READ_SIZE = 64 * 1024

_GZIP_CODINGS = frozenset({"gzip", "x-gzip"})
_IDENTITY_CODINGS = frozenset({"identity", ""})
_DEFLATE_CODINGS = frozenset({"deflate"})
# zlib window bits: a gzip member, a zlib-wrapped deflate stream, raw deflate.
_GZIP_WBITS, _ZLIB_WBITS, _RAW_DEFLATE_WBITS = 31, 15, -15


def map_transport_error(exc: BaseException, what: str) -> PlexdError:
    """The PlexdError for a transport exception (the caller raises it ``from exc``).

    ``exc`` (and what is chained to it) is scrubbed in place first: no token and no URL
    password stays in its repr, str or traceback.
    """
    scrub_transport_error(exc)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return APITimeoutError(f"{what}: timed out connecting")
    if isinstance(exc, TimeoutError):
        return APITimeoutError(f"{what}: timed out")
    # aiohttp's message may quote what the server sent (a bad status line, a header).
    detail = printable(str(exc)) or type(exc).__name__
    return APIConnectionError(f"{what}: {detail}")


TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, EOFError)


def transport_failure(exc: BaseException) -> Failure:
    """What a transport exception means for a retry (see ``_retry``)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientHttpProxyError):
        # A certificate the client refuses, a proxy that refuses the tunnel: trying
        # again gets the same answer.
        return _OTHER_FAILURE
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        # No connection (refused, DNS, TLS handshake, connect timeout): nothing was sent.
        return _CONNECT_FAILURE
    if isinstance(exc, TimeoutError):
        return _TIMEOUT_FAILURE
    return _BROKEN_FAILURE


def failure_of(error: PlexdError) -> Failure:
    """What a PlexdError raised by a call means for a retry: its status, or what its
    transport exception (``__cause__``) says."""
    if isinstance(error, APIError):
        return Failure(FailureKind.STATUS, error.status_code, error.retry_after)
    if isinstance(error, APIConnectionError) and error.__cause__ is not None:
        return transport_failure(error.__cause__)
    return _OTHER_FAILURE


_OTHER_FAILURE = Failure(FailureKind.OTHER)
_CONNECT_FAILURE = Failure(FailureKind.CONNECT)
_TIMEOUT_FAILURE = Failure(FailureKind.TIMEOUT)
_BROKEN_FAILURE = Failure(FailureKind.BROKEN)


def _content_encoding(response: aiohttp.ClientResponse) -> str:
    return response.headers.get("Content-Encoding", "").strip().lower()


class _GzipDecoder:
    """Decodes a gzip body (every member, as Go's gzip reader does), never holding
    more than ``limit`` decoded bytes: a gzip bomb stops at the cap."""

    def __init__(self, limit: int, what: str) -> None:
        self._limit = limit
        self._what = what
        self._inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
        self._out = bytearray()

    def feed(self, data: bytes) -> None:
        while data:
            self._inflate(data)
            data = self._inflater.unconsumed_tail
            if self._inflater.eof and self._inflater.unused_data:
                # The next gzip member starts right after this one.
                data = self._inflater.unused_data
                self._inflater = zlib.decompressobj(wbits=_GZIP_WBITS)

    def result(self) -> bytes:
        if not self._inflater.eof:
            raise ResponseError(
                f"{self._what}: the gzip response body is truncated (the connection ended early)"
            )
        return bytes(self._out)

    def _inflate(self, data: bytes) -> None:
        try:
            piece = self._inflater.decompress(data, _INFLATE_STEP)
        except zlib.error as exc:
            raise ResponseError(
                f"{self._what}: the response says Content-Encoding: gzip but its body "
                f"is not valid gzip ({exc})"
            ) from None
        _check_size(len(self._out) + len(piece), self._limit, self._what)
        self._out += piece


def _check_size(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise ResponseError(f"{what}: response body larger than {limit} bytes; not read further")


async def read_capped_body(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """A response body, gzip-decoded if need be, never read or inflated past ``limit`` bytes."""
    encoding = _content_encoding(response)
    if encoding in _IDENTITY_CODINGS:
        length = response.content_length
        if length is not None:
            _check_size(length, limit, what)
            return await response.read()
        decoder = None
    elif encoding in _GZIP_CODINGS:
        decoder = _GzipDecoder(limit, what)
    else:
        raise ResponseError(
            f"{what}: unsupported Content-Encoding {encoding!r} (only gzip was accepted)"
        )
    out = bytearray()
    while chunk := await response.content.read(_READ_SIZE):
        if decoder is not None:
            decoder.feed(chunk)
        else:
            out += chunk
            _check_size(len(out), limit, what)
    return decoder.result() if decoder is not None else bytes(out)


async def raise_for_status(response: aiohttp.ClientResponse, method: str, path: str) -> None:
    """Raise the :class:`APIError` of a non-2xx response (its body read only 4096 bytes far)."""
    if 200 <= response.status < 300:
        return
    body = await read_error_body(response)
    raise from_response(response.status, response.headers, body, method=method, path=path)


async def read_error_body(response: aiohttp.ClientResponse) -> bytes:
    """At most MAX_ERROR_BODY bytes of an error body: never more from the socket."""
    raw = bytearray()
    with contextlib.suppress(*TRANSPORT_ERRORS):
        while len(raw) < MAX_ERROR_BODY:
            chunk = await response.content.read(MAX_ERROR_BODY - len(raw))
            if not chunk:
                break
            raw += chunk
    if _content_encoding(response) in _GZIP_CODINGS:
        try:
            return zlib.decompressobj(wbits=_GZIP_WBITS).decompress(bytes(raw), MAX_ERROR_BODY)
        except zlib.error:
            pass
    return bytes(raw)


class StreamingResponse:
    """An open streaming response; leaving its ``async with`` block closes the connection."""

    def __init__(
        self, response: aiohttp.ClientResponse, what: str, read_timeout: float | None
    ) -> None:
        release_tls_write_buffer(response)
        self._response = response
        self._what = what
        self._read_timeout = read_timeout
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in chunks of whatever size the socket delivers."""
        while chunk := await self._next_chunk(self._read_timeout):
            yield chunk

    async def _next_chunk(self, wait_at_most: float | None) -> bytes:
        # The one read of every stream: b"" at the end, PlexdErrors for the rest.
        content = self._response.content
        try:
            if wait_at_most is None:
                return await content.readany()
            async with asyncio.timeout(wait_at_most):
                return await content.readany()
        except TRANSPORT_ERRORS as exc:
            raise map_transport_error(exc, self._what) from exc


class _StreamInflater:
    """Incremental gzip or deflate decoding of a stream, at most ``_INFLATE_STEP`` bytes
    out per call however much the input expands (a gzip bomb costs no memory).

    gzip: every member, one after the other. deflate: zlib-wrapped or raw, told apart
    by the first two bytes, as browsers do.
    """

    def __init__(self, coding: str, what: str) -> None:
        self._gzip = coding in _GZIP_CODINGS
        self._what = what
        self._inflater = zlib.decompressobj(wbits=_GZIP_WBITS) if self._gzip else None
        self._input = b""

    def feed(self, data: bytes) -> None:
        """Take the next bytes received."""
        self._input += data

    def next_piece(self) -> bytes:
        """Decoded bytes from the input so far (b"" when more input is needed)."""
        while self._input:
            inflater = self._current_inflater()
            if inflater is None:
                return b""
            try:
                piece = inflater.decompress(self._input, _INFLATE_STEP)
            except zlib.error as exc:
                raise SSEProtocolError(
                    f"{self._what}: undecodable {self._coding} data ({exc})"
                ) from None
            self._input = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
            if piece:
                return piece
        return b""

    @property
    def _coding(self) -> str:
        return "gzip" if self._gzip else "deflate"

    def _current_inflater(self) -> zlib._Decompress | None:
        if self._inflater is None:
            if len(self._input) < 2:
                return None  # deflate: the wrapping shows in the first two bytes
            self._inflater = zlib.decompressobj(wbits=_deflate_wbits(self._input))
        elif self._inflater.eof:
            if not self._gzip:
                raise SSEProtocolError(f"{self._what}: data after the end of the deflate stream")
            # The next gzip member starts right after this one.
            self._inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
        return self._inflater


def _deflate_wbits(head: bytes) -> int:
    # RFC 1950: CM = 8 (deflate), CINFO <= 7, and the 16-bit header a multiple of 31.
    cmf, flg = head[0], head[1]
    is_zlib = cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0
    return _ZLIB_WBITS if is_zlib else _RAW_DEFLATE_WBITS


def _stream_inflater(response: aiohttp.ClientResponse, what: str) -> _StreamInflater | None:
    coding = _content_encoding(response)
    if coding in _IDENTITY_CODINGS:
        return None
    if coding in _GZIP_CODINGS or coding in _DEFLATE_CODINGS:
        return _StreamInflater(coding, what)
    raise SSEProtocolError(
        f"{what}: the event stream has an unsupported Content-Encoding {coding[:64]!r}"
    )


class EventStreamResponse(StreamingResponse):
    """The response of ``connect_sse``: a ``text/event-stream`` body read chunk by chunk.

    ``read_timeout`` is the idle timeout of :meth:`iter_chunks`. With ``decode_content``
    a gzip- or deflate-encoded stream (a proxy may encode it despite
    ``Accept-Encoding: identity``) is decoded as it arrives; any other
    Content-Encoding raises :class:`SSEProtocolError`.
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        what: str,
        read_timeout: float | None,
        *,
        decode_content: bool = False,
    ) -> None:
        super().__init__(response, what, read_timeout)
        self._inflater = _stream_inflater(response, what) if decode_content else None

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The (decoded) body as it arrives; :class:`SSEIdleTimeoutError` when nothing
        arrives for ``read_timeout`` seconds."""
        while chunk := await self.read_chunk(self._read_timeout):
            yield chunk

    async def read_chunk(self, idle_timeout: float | None) -> bytes:
        """The next bytes as they arrive (``b""`` at the end of the stream).

        Raises :class:`SSEIdleTimeoutError` when nothing arrives for ``idle_timeout``
        seconds (None waits forever), :class:`APIConnectionError` when the connection breaks,
        :class:`SSEProtocolError` when an encoded stream does not decode.
        """
        try:
            if self._inflater is None:
                return await self._next_chunk(idle_timeout)
            return await self._next_decoded(self._inflater, idle_timeout)
        except APITimeoutError:
            raise SSEIdleTimeoutError(
                f"{self._what}: no bytes for {idle_timeout:g} s (idle timeout)"
            ) from None

    async def _next_decoded(self, inflater: _StreamInflater, idle_timeout: float | None) -> bytes:
        # Input already received is decoded before the socket is read again; a truncated
        # stream just ends (the parser drops a partial event, as for any disconnect).
        while not (piece := inflater.next_piece()):
            data = await self._next_chunk(idle_timeout)
            if not data:
                return b""
            inflater.feed(data)
        return piece

    def abort(self) -> None:
        """Close the connection now; a pending :meth:`read_chunk` raises APIConnectionError."""
        self._response.close()


class ArtifactStream(StreamingResponse):
    """The response of ``fetch_artifact``; ``content_length`` is None when the server gave none."""

    def __init__(
        self, response: aiohttp.ClientResponse, what: str, read_timeout: float | None
    ) -> None:
        super().__init__(response, what, read_timeout)
        self.content_length: int | None = response.content_length


StreamOpener = Callable[[], contextlib.AbstractAsyncContextManager[EventStreamResponse]]


def require_event_stream(response: StreamingResponse) -> None:
    """Raise :class:`SSEProtocolError` unless the response is ``text/event-stream``."""
    content_type = response.headers.get("Content-Type", "")
    if content_type.split(";", 1)[0].strip().lower() != EVENT_STREAM:
        raise SSEProtocolError(
            f"expected a {EVENT_STREAM} response, got {content_type or 'no Content-Type'!r}"
            f" (status {response.status})"
        )


async def run_connection(
    open_stream: StreamOpener,
    parse: Callable[[bytes], list[T]],
    read_timeout: float | None,
    on_open: Callable[[EventStreamResponse], None],
    on_batch: Callable[[list[T]], Awaitable[None]],
) -> None:
    """One SSE connection: open it, check it, and parse its bytes until the server closes it.

    ``on_open`` is called once the response is usable; ``on_batch`` is awaited with
    what each received chunk completed (maybe nothing: the chunk may still have moved
    the parser, by an ``id:`` alone or a skipped oversized event), before the next chunk
    is read. The read timeout restarts with every chunk (keep-alive comments included)
    and raises :class:`SSEIdleTimeoutError`.
    """
    async with open_stream() as response:
        require_event_stream(response)
        on_open(response)
        while chunk := await response.read_chunk(read_timeout):
            await on_batch(parse(chunk))
