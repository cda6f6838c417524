"""ControlPlane: the request pipeline and one method per endpoint of WIRE.md."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gzip
import logging
import re
import ssl
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec
from yarl import URL

from . import _types as t
from ._config import Config
from ._transport import (
    LeanConnector,
    release_tls_write_buffer,
    scrub_transport_error,
    shared_ssl_context,
)
from .errors import (
    MAX_ERROR_BODY,
    APIConnectionError,
    APITimeoutError,
    ArgumentError,
    ArgumentTypeError,
    ClientClosedError,
    ConfigError,
    EventLoopError,
    PlexdError,
    ResponseError,
    SSEIdleTimeoutError,
    SSEProtocolError,
    from_response,
    printable,
)

T = TypeVar("T")

# WIRE.md, the artifact download: the SHA-256 of the body, hex, when the server knows it.
CHECKSUM_HEADER = "X-Checksum-SHA256"
# API.md: "A JSON request body over 1024 bytes is gzip-compressed".
GZIP_THRESHOLD = 1024
# API.md: "A JSON response body, gzip or not, is never read past 10 MiB (decompressed)".
MAX_RESPONSE_SIZE = 10 * 1024 * 1024
# Largest piece of decompressed output produced at once, so a gzip bomb never
# expands in memory by more than this before the cap is checked.
_INFLATE_STEP = 256 * 1024
_READ_SIZE = 64 * 1024

_JSON = "application/json"
_EVENT_STREAM = "text/event-stream"
_GZIP_CODINGS = frozenset({"gzip", "x-gzip"})
_IDENTITY_CODINGS = frozenset({"identity", ""})

_DEFLATE_CODINGS = frozenset({"deflate"})
# zlib window bits: a gzip member, a zlib-wrapped deflate stream, raw deflate.
_GZIP_WBITS, _ZLIB_WBITS, _RAW_DEFLATE_WBITS = 31, 15, -15

_NO_BODY: Final = object()
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_CONTENT_TYPE = ("Content-Type",)
# What aiohttp refuses to write in a header value (RFC 9110 5.5): C0 controls but TAB, DEL.
_NOT_IN_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def is_header_value(value: str) -> bool:
    """Whether ``value`` can be sent as an HTTP header value."""
    return _NOT_IN_HEADER.search(value) is None


def path_segment(value: str, name: str) -> str:
    """Percent-encode ``value`` as exactly one path segment (``/``, ``?``, ``#``, ``%``, ``..``).

    Raises :class:`ArgumentError` for an empty value or one that is not a str.
    """
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value:
        raise ArgumentError(f"{name} must not be empty")
    encoded = quote(value, safe="")
    if encoded in (".", ".."):
        # Dot segments are unreserved, yet a URL resolver would treat them as
        # "this/parent directory": encode them so they stay names.
        encoded = encoded.replace(".", "%2E")
    return encoded


@functools.lru_cache(maxsize=256)
def _node_path(node_id: str) -> str:
    # A node makes every call with the same id: encode it once.
    return "/v1/nodes/" + path_segment(node_id, "node_id")


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


def _content_encoding(response: aiohttp.ClientResponse) -> str:
    return response.headers.get("Content-Encoding", "").strip().lower()


class _GzipDecoder:
    """Decodes a gzip body (every member, as Go's gzip reader does), never holding
    more than ``limit`` decoded bytes: a gzip bomb stops at the cap."""

    def __init__(self, limit: int, what: str) -> None:
        self._limit = limit
        self._what = what
        self._inflater = zlib.decompressobj(wbits=31)
        self._out = bytearray()

    def feed(self, data: bytes) -> None:
        while data:
            self._inflate(data)
            data = self._inflater.unconsumed_tail
            if self._inflater.eof and self._inflater.unused_data:
                # The next gzip member starts right after this one.
                data = self._inflater.unused_data
                self._inflater = zlib.decompressobj(wbits=31)

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
            return zlib.decompressobj(wbits=31).decompress(bytes(raw), MAX_ERROR_BODY)
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


@dataclasses.dataclass(frozen=True)
class _JSONHeaders:
    """The header sets of JSON calls for one token, built once per token, not per call."""

    no_body: Mapping[str, str]
    body: Mapping[str, str]
    gzip_body: Mapping[str, str]


class ControlPlane:
    """An asyncio client of the Plexsphere control plane.

    One aiohttp session per client; use it as ``async with ControlPlane(...) as cp``
    or call :meth:`aclose` to release every connection.

    ``ssl_context``, when given, is used for every TLS connection instead of the one
    built from ``config`` (system CAs, TLS 1.2 minimum), e.g. to trust a private CA;
    ``tls_insecure_skip_verify`` is then ignored. A client that does not verify the
    server's certificate logs one warning when it is constructed.
    """

    def __init__(
        self,
        config: Config,
        version: str,
        logger: logging.Logger | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ):
        _check_arguments(config, version, ssl_context)
        config = dataclasses.replace(config)
        config.apply_defaults()
        config.validate()
        self.config = config
        self._log = logger or logging.getLogger("plexd.api")
        self._base = str(URL(config.base_url.rstrip("/")))
        self._user_agent = f"plexd/{version}"
        # The loop of the first call: the session and its connections belong to it.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token_lock = threading.Lock()
        self._token = ""
        self._json_headers = self._build_json_headers(self._token)
        self._ssl = ssl_context or shared_ssl_context(config.tls_insecure_skip_verify)
        self._session: aiohttp.ClientSession | None = None
        # aiohttp's total timeout bounds a JSON call, body read included; a stream has
        # none (its reader bounds it) and request_timeout bounds only its head.
        self._call_timeout = aiohttp.ClientTimeout(
            total=config.request_timeout, sock_connect=config.connect_timeout
        )
        self._stream_timeout = aiohttp.ClientTimeout(sock_connect=config.connect_timeout)
        self._closed = False
        self._encoder = msgspec.json.Encoder()
        self._decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
        if self._ssl.verify_mode == ssl.CERT_NONE:
            self._log.warning(
                "TLS certificate verification is disabled; "
                "the control plane's identity is not checked",
                extra={"base_url": self._shown_base},
            )

    def __repr__(self) -> str:
        return f"ControlPlane(base_url={self._shown_base!r})"

    @property
    def _shown_base(self) -> str:
        # A base URL may carry user:password; it never goes into a repr or a log line.
        return str(URL(self._base).with_user(None))

    # --- lifecycle --------------------------------------------------------

    async def __aenter__(self) -> ControlPlane:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session and every connection it holds. Safe to call twice.

        From another event loop than the client's: when the client's loop is closed its
        connections are released at once; when it runs in another thread the session is
        closed there. A client's loop that is open but not running cannot be reached:
        :class:`EventLoopError`.
        """
        session, owner = self._session, self._loop
        if session is not None and _unreachable(owner):
            raise self._foreign_loop_error()
        self._closed = True
        self._session = None
        if session is None:
            return
        if owner is None or owner is _running_loop():
            await session.close()
        elif owner.is_running():
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(session.close(), owner))
        else:
            await _release_orphaned(session)

    def set_auth_token(self, token: str) -> None:
        """Set the bearer token of later requests (thread-safe; "" sends none).

        Raises :class:`ConfigError` for a token that cannot go into a header (CR, LF,
        another control character): it would fail every request.
        """
        if not isinstance(token, str):
            raise ConfigError(f"token: must be a str, got {type(token).__name__}")
        if not is_header_value(token):
            # Never echo the token: the message may be logged.
            raise ConfigError(
                "token: holds a control character (CR, LF, NUL, DEL ...) that an HTTP "
                "header cannot carry; token not set"
            )
        headers = self._build_json_headers(token)
        with self._token_lock:
            self._token = token
            self._json_headers = headers

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientClosedError("ControlPlane is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop and self._loop is not None:
            await self._leave_foreign_loop()
        self._loop = loop
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=LeanConnector(ssl=self._ssl),
                timeout=self._call_timeout,
                auto_decompress=False,
                trust_env=False,
                # The control plane authenticates by token; cookies would only be state
                # that leaks between calls (and memory, for thousands of clients).
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def _leave_foreign_loop(self) -> None:
        # Used from a second loop. When the first one is closed (an earlier asyncio.run()),
        # its connections are dead: release them now rather than warn at exit.
        session, owner = self._session, self._loop
        if session is not None and owner is not None and owner.is_closed():
            self._session = None
            await _release_orphaned(session)
        raise self._foreign_loop_error()

    def _foreign_loop_error(self) -> EventLoopError:
        return EventLoopError(
            "this ControlPlane belongs to the event loop it was first used on; "
            "make one client per event loop (per asyncio.run())"
        )

    def _headers(self, accept: str, token: str | None = None) -> dict[str, str]:
        headers = {"User-Agent": self._user_agent, "Accept": accept}
        token = self._token if token is None else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _build_json_headers(self, token: str) -> _JSONHeaders:
        no_body = self._headers(_JSON, token)
        no_body["Accept-Encoding"] = "gzip"
        body = {**no_body, "Content-Type": _JSON}
        return _JSONHeaders(no_body, body, {**body, "Content-Encoding": "gzip"})

    def _url(self, path: str) -> URL:
        return URL(self._base + path, encoded=True)

    def _decoder(self, result_type: Any) -> msgspec.json.Decoder[Any]:
        decoder = self._decoders.get(result_type)
        if decoder is None:
            decoder = self._decoders[result_type] = msgspec.json.Decoder(result_type)
        return decoder

    # --- the request pipeline --------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = _NO_BODY,
        result_type: Any = None,
        *,
        want_result: bool = True,
        url: URL | None = None,
    ) -> Any:
        """Send one JSON call and decode its answer; every endpoint goes through here."""
        call = f"{method} {path}"
        json_headers = self._json_headers
        data = None
        skip_auto_headers = None
        if body is _NO_BODY:
            headers = json_headers.no_body
            if method in _BODY_METHODS:
                # aiohttp would label a body-less POST application/octet-stream. Only
                # here: a skip list puts aiohttp on a slower path for every request.
                skip_auto_headers = _CONTENT_TYPE
        else:
            data = self._encode(body, call)
            headers = json_headers.body
            if len(data) > GZIP_THRESHOLD:
                data = gzip.compress(data, compresslevel=6)
                headers = json_headers.gzip_body
        session = await self._get_session()
        try:
            async with session.request(
                method,
                url or self._url(path),
                data=data,
                headers=headers,
                skip_auto_headers=skip_auto_headers,
                allow_redirects=False,
            ) as response:
                await raise_for_status(response, method, path)
                if not want_result:
                    return None
                raw = await read_capped_body(response, MAX_RESPONSE_SIZE, call)
                content_type = response.headers.get("Content-Type", "")
        except TRANSPORT_ERRORS as exc:
            raise map_transport_error(exc, call) from exc
        except PlexdError:
            raise
        except ValueError as exc:
            # aiohttp refusing what it was given (a URL, a header value): our checks
            # should have caught it first.
            raise ArgumentError(f"{call}: cannot send the request: {exc}") from None
        return self._decode(raw, result_type, call, content_type)

    def _encode(self, body: Any, call: str) -> bytes:
        try:
            t.check_times(body)
            return self._encoder.encode(body)
        except RecursionError:
            raise ArgumentError(f"{call}: cannot encode request body: nested too deep") from None
        except t.JSON_ENCODE_ERRORS as exc:
            raise ArgumentError(f"{call}: cannot encode request body: {exc}") from None

    def _decode(self, raw: bytes, result_type: Any, call: str, content_type: str) -> Any:
        name = getattr(result_type, "__name__", "value")
        if not raw.strip():
            if result_type is None:
                return None
            raise ResponseError(f"{call}: empty response body, expected a JSON {name}")
        try:
            return self._decoder(Any if result_type is None else result_type).decode(raw)
        except msgspec.ValidationError as exc:
            detail = printable(str(exc))
            raise ResponseError(f"{call}: response is not a valid {name}: {detail}") from None
        except t.JSON_DECODE_ERRORS as exc:
            shown = f" (Content-Type: {printable(content_type)})" if content_type else ""
            raise ResponseError(f"{call}: response is not valid JSON{shown}: {exc}") from None

    @contextlib.asynccontextmanager
    async def _stream(
        self,
        path: str,
        headers: dict[str, str],
        make_response: Callable[[aiohttp.ClientResponse, str], StreamingResponse],
    ) -> AsyncIterator[Any]:
        call = f"GET {path}"
        # The chunks go to the caller as they arrive: ask for them unencoded.
        headers["Accept-Encoding"] = "identity"
        session = await self._get_session()
        try:
            async with asyncio.timeout(self.config.request_timeout):
                response = await session.get(
                    self._url(path),
                    headers=headers,
                    allow_redirects=False,
                    timeout=self._stream_timeout,
                )
                try:
                    await raise_for_status(response, "GET", path)
                except BaseException:
                    response.close()
                    raise
        except TRANSPORT_ERRORS as exc:
            raise map_transport_error(exc, call) from exc
        try:
            yield make_response(response, call)
        finally:
            response.close()

    # --- generic calls ----------------------------------------------------

    async def ping(self) -> None:
        """Check that the control plane answers (``GET /v1/ping``)."""
        await self._request("GET", "/v1/ping", want_result=False)

    async def get_json(self, path: str, result_type: type[T] | None = None) -> Any:
        """GET ``path`` (relative to the base URL) and decode the JSON answer.

        With ``result_type`` None the decoded JSON value is returned (None for an empty body).
        """
        url = self._user_url(path)
        return await self._request("GET", path, result_type=result_type, url=url)

    async def post_json(self, path: str, body: Any, result_type: type[T] | None = None) -> Any:
        """POST ``body`` as JSON to ``path`` and decode the JSON answer.

        A ``body`` of None sends no body at all (as Go's client does for a nil body).
        """
        payload = _NO_BODY if body is None else body
        return await self._request("POST", path, payload, result_type, url=self._user_url(path))

    def _user_url(self, path: str) -> URL:
        if not isinstance(path, str):
            raise ArgumentTypeError(f"path must be a str, got {type(path).__name__}")
        if _NOT_IN_HEADER.search(path):
            raise ArgumentError(f"path {path!r}: holds a control character")
        try:
            return URL(self._base + "/" + path.lstrip("/"))
        except ValueError as exc:
            raise ArgumentError(f"path {path!r}: {exc}") from None

    # --- the endpoints of WIRE.md -----------------------------------------

    def _node(self, node_id: str, *rest: str) -> str:
        if not isinstance(node_id, str):
            # Checked before the cache, which would raise TypeError for an unhashable id.
            raise ArgumentTypeError(f"node_id must be a str, got {type(node_id).__name__}")
        return _node_path(node_id) + "".join(rest)

    async def register(self, req: t.RegisterRequest) -> t.RegisterResponse:
        """Register this node with a bootstrap token."""
        result: t.RegisterResponse = await self._request(
            "POST", "/v1/register", req, t.RegisterResponse
        )
        return result

    async def heartbeat(self, node_id: str, req: t.HeartbeatRequest) -> t.HeartbeatResponse:
        """Report liveness; the answer says whether to reconcile or rotate keys."""
        result: t.HeartbeatResponse = await self._request(
            "POST", self._node(node_id, "/heartbeat"), req, t.HeartbeatResponse
        )
        return result

    async def deregister(self, node_id: str) -> None:
        """Remove this node from the control plane."""
        await self._request("POST", self._node(node_id, "/deregister"), want_result=False)

    async def fetch_state(self, node_id: str) -> t.StateResponse:
        """The node's full desired state."""
        result: t.StateResponse = await self._request(
            "GET", self._node(node_id, "/state"), result_type=t.StateResponse
        )
        return result

    def connect_sse(
        self, node_id: str, last_event_id: str = ""
    ) -> contextlib.AbstractAsyncContextManager[EventStreamResponse]:
        """Open the node's event stream; the error mapping happens on entry.

        The stream is not cut by ``request_timeout``: the reader bounds it with an idle timeout.
        """
        path = self._node(node_id, "/events")
        if not isinstance(last_event_id, str) or not is_header_value(last_event_id):
            raise ArgumentError(
                f"last_event_id {last_event_id!r}: not a valid header value (control character)"
            )
        headers = self._headers(_EVENT_STREAM)
        headers["Cache-Control"] = "no-cache"
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        make_response = functools.partial(
            EventStreamResponse, read_timeout=self.config.sse_idle_timeout, decode_content=True
        )
        return self._stream(path, headers, make_response)

    async def rotate_keys(self, req: t.KeyRotateRequest) -> t.KeyRotateResponse:
        """Announce the node's new public key."""
        result: t.KeyRotateResponse = await self._request(
            "POST", "/v1/keys/rotate", req, t.KeyRotateResponse
        )
        return result

    async def update_capabilities(self, node_id: str, caps: t.CapabilitiesPayload) -> None:
        """Publish what the node can do."""
        await self._request("PUT", self._node(node_id, "/capabilities"), caps, want_result=False)

    async def report_endpoint(self, node_id: str, req: t.EndpointReport) -> t.EndpointResponse:
        """Report the node's public endpoint; the answer has the peers' endpoints."""
        result: t.EndpointResponse = await self._request(
            "PUT", self._node(node_id, "/endpoint"), req, t.EndpointResponse
        )
        return result

    async def report_drift(self, node_id: str, req: t.DriftReport) -> None:
        """Report corrections made to drifted state."""
        await self._request("POST", self._node(node_id, "/drift"), req, want_result=False)

    async def fetch_secret(self, node_id: str, key: str) -> t.SecretResponse:
        """Fetch one encrypted secret."""
        path = self._node(node_id, "/secrets/", path_segment(key, "key"))
        result: t.SecretResponse = await self._request("GET", path, result_type=t.SecretResponse)
        return result

    async def sync_reports(self, node_id: str, req: t.ReportSyncRequest) -> None:
        """Sync the node's reports."""
        await self._request("POST", self._node(node_id, "/report"), req, want_result=False)

    async def ack_execution(self, node_id: str, execution_id: str, req: t.ExecutionAck) -> None:
        """Acknowledge an action request."""
        await self._request(
            "POST", self._execution(node_id, execution_id, "/ack"), req, want_result=False
        )

    async def report_result(self, node_id: str, execution_id: str, req: t.ExecutionResult) -> None:
        """Report the outcome of an execution."""
        await self._request(
            "POST", self._execution(node_id, execution_id, "/result"), req, want_result=False
        )

    def _execution(self, node_id: str, execution_id: str, action: str) -> str:
        execution = path_segment(execution_id, "execution_id")
        return self._node(node_id, "/executions/", execution, action)

    async def report_metrics(self, node_id: str, batch: Sequence[t.MetricPoint]) -> None:
        """Send a batch of metric points."""
        await self._request(
            "POST", self._node(node_id, "/metrics"), _batch(batch), want_result=False
        )

    async def report_logs(self, node_id: str, batch: Sequence[t.LogEntry]) -> None:
        """Send a batch of log entries."""
        await self._request("POST", self._node(node_id, "/logs"), _batch(batch), want_result=False)

    async def report_audit(self, node_id: str, batch: Sequence[t.AuditEntry]) -> None:
        """Send a batch of audit entries."""
        await self._request("POST", self._node(node_id, "/audit"), _batch(batch), want_result=False)

    def fetch_artifact(
        self, version: str, os: str, arch: str
    ) -> contextlib.AbstractAsyncContextManager[ArtifactStream]:
        """Download a plexd binary; each read is bounded by ``request_timeout``."""
        path = "/v1/artifacts/plexd/" + "/".join(
            path_segment(value, name)
            for value, name in ((version, "version"), (os, "os"), (arch, "arch"))
        )
        headers = self._headers("application/octet-stream, */*")
        make_response = functools.partial(ArtifactStream, read_timeout=self.config.request_timeout)
        return self._stream(path, headers, make_response)


def _batch(batch: Sequence[Any]) -> list[Any]:
    try:
        return list(batch)
    except TypeError:
        raise ArgumentTypeError(f"batch must be a sequence, got {type(batch).__name__}") from None


def _check_arguments(config: Any, version: Any, ssl_context: Any) -> None:
    if not isinstance(config, Config):
        raise ArgumentTypeError(f"config must be a Config, got {type(config).__name__}")
    if not isinstance(version, str) or not is_header_value(version):
        # It goes into every User-Agent header.
        raise ArgumentError(f"version {version!r}: must be a str without control characters")
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise ArgumentTypeError(
            f"ssl_context must be an ssl.SSLContext, got {type(ssl_context).__name__}"
        )


def _unreachable(loop: asyncio.AbstractEventLoop | None) -> bool:
    # Another loop, open but not running: nothing can run a close on it now.
    return (
        loop is not None
        and loop is not _running_loop()
        and not (loop.is_closed() or loop.is_running())
    )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _release_orphaned(session: aiohttp.ClientSession) -> None:
    # The session's loop is closed: its sockets are closed directly, then close() only
    # marks the session closed (it no longer touches that loop).
    connector = session.connector
    if isinstance(connector, LeanConnector):
        connector.close_orphaned()
    await session.close()
