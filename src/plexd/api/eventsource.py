"""EventSource: the package's one SSE client, for any URL.

The connection logic lives here once: :func:`run_connection` opens a stream,
checks it is ``text/event-stream``, and hands its bytes on as they arrive;
:class:`ReconnectEngine` decides the waits between connections. :class:`EventSource`
runs them for a plain URL in a background task and parses in the consumer's
``async for`` (an :class:`SSEParser`, a slice at a time); ``SSEStream``/``SSEManager``
run the same function on ``ControlPlane.connect_sse``, parse as bytes arrive, and
add envelopes, verification, dispatch and the polling fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from types import TracebackType
from typing import Literal, TypeVar, cast

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .client import (
    TRANSPORT_ERRORS,
    EventStreamResponse,
    map_transport_error,
    raise_for_status,
)
from .errors import PlexdError, SSEProtocolError
from .reconnect import (
    ConnectionState,
    Decision,
    FailureAction,
    ReconnectEngine,
    ReconnectPolicy,
    always_retry,
)
from .sse import SSEComment, SSEEvent, SSEParser
from .transport import LeanConnector

T = TypeVar("T")

EVENT_STREAM = "text/event-stream"
# Redirects an EventSource follows, at most MAX_REDIRECTS in a row.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10
# Chunks the connection may read ahead of the consumer.
_READ_AHEAD = 2
# The consumer parses a chunk this much at a time, as it iterates: ~380 events at most
# are alive at once, under the garbage collector's young-generation threshold (700),
# so reading 256 KiB (~750 events) at a time never wakes the collector.
PARSE_SLICE = 128 * 1024

StreamOpener = Callable[[], contextlib.AbstractAsyncContextManager[EventStreamResponse]]


def require_event_stream(response: EventStreamResponse) -> None:
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


class _NoContent(PlexdError):
    """The server answered 204: it wants no more reconnections."""


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Marker:
    __slots__ = ()


# Queue messages besides the chunks: a new connection begins (its bytes start a new
# stream for the parser), and the end of the iteration.
_NEW_CONNECTION = _Marker()
_END = _Marker()
_Message = bytes | _Failure | _Marker


def _unparsed(chunk: bytes) -> list[bytes]:
    return [chunk]


def _classify(exc: BaseException) -> FailureAction:
    if isinstance(exc, _NoContent):
        return FailureAction.PERMANENT_FAILURE
    return always_retry(exc)


class EventSource:
    """A server-sent events client for any URL, exact to the WHATWG parsing rules.

    Iterate it for :class:`SSEEvent` objects across reconnects, until :meth:`aclose`
    or a 204 answer::

        async with EventSource("https://example.com/stream") as source:
            async for event in source:
                print(event.type, event.id, event.data)

    Requests carry ``Accept: text/event-stream``, ``Cache-Control: no-cache``, the
    caller's headers, and ``Last-Event-ID`` when the last event ID is not empty.
    301/302/303/307/308 redirects are followed (``Authorization`` dropped when the
    origin changes). Any other failure calls ``on_error`` once and reconnects after
    the backoff delay (``reconnect_delay=0``: at once). Comments call ``on_comment``.
    Callbacks run in stream order relative to the events.
    """

    def __init__(
        self,
        url: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        last_event_id: str = "",
        reconnect_delay: float = 1.0,
        max_reconnect_delay: float = 60.0,
        read_timeout: float | None = None,
        connect_timeout: float = 10.0,
        ssl: ssl_module.SSLContext | None = None,
        on_comment: Callable[[str], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._url = URL(url)
        self._method = method.upper()
        self._body = body
        self._headers = CIMultiDict(headers or {})
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._ssl = ssl
        self.on_comment = on_comment
        self.on_error = on_error
        self._log = logger or logging.getLogger("plexd.api")
        self._parser = SSEParser(on_retry=self._server_retry, last_event_id=last_event_id)
        self._engine = ReconnectEngine(
            policy=ReconnectPolicy(reconnect_delay, max_reconnect_delay, polling_after=None),
            classify=_classify,
            on_failure=self._failed,
            on_state_change=self._state_changed,
            logger=self._log,
        )
        self._queue: asyncio.Queue[_Message] = asyncio.Queue(_READ_AHEAD)
        self._items: Iterator[SSEEvent | SSEComment] = iter(())
        self._chunk = b""
        self._offset = 0
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._response: EventStreamResponse | None = None
        self._restarting = False
        self._closed = False
        self.ready_state: Literal["connecting", "open", "closed"] = "connecting"

    def __repr__(self) -> str:
        return f"EventSource({str(self._url)!r}, ready_state={self.ready_state!r})"

    @property
    def last_event_id(self) -> str:
        """The last event ID of the stream (what ``Last-Event-ID`` carries on reconnect)."""
        return self._parser.last_event_id

    # --- lifecycle --------------------------------------------------------

    async def __aenter__(self) -> EventSource:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading, close the connection and the session. Safe to call more than once."""
        self._closed = True
        self.ready_state = "closed"
        self._engine.stop()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_END)

    def restart(self) -> None:
        """Drop the current connection now and reconnect at once, reporting no error."""
        response = self._response
        if response is None or self._closed:
            return
        self._restarting = True
        self._engine.policy.reconnect_now()
        response.abort()

    def _start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run())

    # --- consuming ----------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[SSEEvent]:
        return self

    async def __anext__(self) -> SSEEvent:
        while True:
            # The per-event path: resume the current slice's iterator.
            for item in self._items:
                if type(item) is SSEEvent:
                    return item
                if self.on_comment is not None:
                    self.on_comment(cast(SSEComment, item).text)
            if self._offset < len(self._chunk):
                self._parse_slice()
                continue
            if self._closed:
                raise StopAsyncIteration
            self._start()
            message = await self._queue.get()
            if type(message) is bytes:
                self._chunk, self._offset = message, 0
                continue
            self._queue.task_done()
            if message is _END:
                self._closed = True
                self.ready_state = "closed"
                raise StopAsyncIteration
            if message is _NEW_CONNECTION:
                self._parser.reset()
            elif isinstance(message, _Failure) and self.on_error is not None:
                self.on_error(message.error)

    def _parse_slice(self) -> None:
        chunk, start = self._chunk, self._offset
        end = start + PARSE_SLICE
        items = self._parser.feed_items(chunk[start:end] if start or end < len(chunk) else chunk)
        self._offset = end
        if end >= len(chunk):
            self._chunk, self._offset = b"", 0
            self._queue.task_done()  # the connection may go on: the chunk is parsed
        for item in items:
            if type(item) is SSEEvent:
                self._engine.event_delivered()
                break
        self._items = iter(items)

    # --- the connection (runs in the background task) ---------------------

    async def _run(self) -> None:
        try:
            await self._engine.run(self._attempt)
        except _NoContent:
            self._log.info("server answered 204: not reconnecting", extra={"url": str(self._url)})
        except Exception as exc:  # a bug: surface it through on_error rather than lose it
            self._log.exception("event source stopped by an unexpected error")
            await self._queue.put(_Failure(exc))
        finally:
            self.ready_state = "closed"
            if not self._closed:
                await self._queue.put(_END)

    async def _attempt(self) -> None:
        await self._queue.put(_NEW_CONNECTION)
        try:
            await run_connection(
                self._open, _unparsed, self._read_timeout, self._opened, self._forward
            )
        except Exception:
            if self._restarting:
                return
            raise
        finally:
            self._response = None
            self._restarting = False
            # Before the engine decides what comes next, everything read is parsed: the
            # events it counts for the backoff, a retry: line, the Last-Event-ID to send.
            await self._queue.join()

    def _opened(self, response: EventStreamResponse) -> None:
        self._response = response
        self._engine.connected()

    async def _forward(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            await self._queue.put(chunk)

    def _server_retry(self, milliseconds: int) -> None:
        self._engine.server_retry(milliseconds)

    async def _failed(self, error: BaseException, decision: Decision) -> None:
        if not isinstance(error, _NoContent):
            await self._queue.put(_Failure(error))

    def _state_changed(self, state: ConnectionState) -> None:
        if self._closed:
            return
        self.ready_state = "open" if state is ConnectionState.CONNECTED else "connecting"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
                connector=LeanConnector(ssl=self._ssl if self._ssl is not None else True),
            )
        return self._session

    def _request_headers(self) -> CIMultiDict[str]:
        headers = CIMultiDict(self._headers)
        headers["Accept"] = EVENT_STREAM
        headers["Cache-Control"] = "no-cache"
        last_event_id = self._parser.last_event_id
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        else:
            headers.popall("Last-Event-ID", None)
        return headers

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[EventStreamResponse]:
        url, method, body = self._url, self._method, self._body
        headers = self._request_headers()
        session = self._get_session()
        for _ in range(MAX_REDIRECTS + 1):
            what = f"{method} {url}"
            try:
                async with asyncio.timeout(self._read_timeout):
                    response = await session.request(
                        method, url, data=body, headers=headers, allow_redirects=False
                    )
            except TRANSPORT_ERRORS as exc:
                raise map_transport_error(exc, what) from exc
            if response.status in REDIRECT_STATUSES:
                response.close()
                url, method, body = self._redirect(response, url, method, body, headers)
                continue
            try:
                await self._check_status(response, method, url)
                stream = EventStreamResponse(response, what, self._read_timeout)
                yield stream
            finally:
                response.close()
            return
        raise SSEProtocolError(f"more than {MAX_REDIRECTS} redirects from {self._url}")

    def _redirect(
        self,
        response: aiohttp.ClientResponse,
        url: URL,
        method: str,
        body: bytes | None,
        headers: CIMultiDict[str],
    ) -> tuple[URL, str, bytes | None]:
        location = response.headers.get("Location", "").strip()
        if not location:
            raise SSEProtocolError(f"{response.status} redirect from {url} without a Location")
        try:
            target = url.join(URL(location))
        except ValueError as exc:
            raise SSEProtocolError(f"bad redirect Location {location!r}: {exc}") from None
        if target.scheme not in ("http", "https"):
            raise SSEProtocolError(f"redirect to a non-HTTP URL {location!r}")
        if target.origin() != url.origin():
            headers.popall("Authorization", None)
        if response.status == 303 or (response.status in (301, 302) and method == "POST"):
            method, body = "GET", None
        return target, method, body

    @staticmethod
    async def _check_status(response: aiohttp.ClientResponse, method: str, url: URL) -> None:
        if response.status == 204:
            raise _NoContent(f"{method} {url}: 204 No Content")
        await raise_for_status(response, method, str(url))
