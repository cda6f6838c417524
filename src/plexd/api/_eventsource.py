"""Facade layer: :class:`EventSource`, the package's one SSE client, for any URL.

It runs ``_http``'s :func:`run_connection` (open a stream, check it is
``text/event-stream``, hand its bytes on as they arrive) in a background task,
with :class:`ReconnectEngine` deciding the waits between connections, and parses in
the consumer's ``async for`` (an :class:`SSEParser`, a slice at a time).
``SSEStream``/``SSEManager`` run the same function on ``ControlPlane.connect_sse``,
parse as bytes arrive, and add envelopes, verification, dispatch and the polling
fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import ssl as ssl_module
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Literal, NoReturn, cast

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from ._checks import check_delay, check_header, check_timeout, is_token
from ._classify import classify_as_browser
from ._config import shown_url
from ._http import (
    EVENT_STREAM,
    TRANSPORT_ERRORS,
    EventStreamResponse,
    map_transport_error,
    raise_for_status,
    run_connection,
)
from ._reconnect import ConnectionState, Decision, ReconnectEngine, ReconnectPolicy, Step
from ._resume import UnsendableIdLog, is_header_safe, shown_id
from ._sse import SSEComment, SSEEvent, SSEParser
from ._transport import LeanConnector
from .errors import (
    APITimeoutError,
    ArgumentError,
    ArgumentTypeError,
    PlexdError,
    SSEProtocolError,
    _NoContent,
)

# Redirects an EventSource follows, at most MAX_REDIRECTS in a row.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10
# Chunks the connection may read ahead of the consumer.
_READ_AHEAD = 2
# The consumer parses a chunk this much at a time, as it iterates: ~380 events at most
# are alive at once, under the garbage collector's young-generation threshold (700),
# so reading 256 KiB (~750 events) at a time never wakes the collector.
PARSE_SLICE = 128 * 1024


def _shown(url: URL) -> str:
    # For a repr, an error or a log line: the user information masked, a token in the
    # user's place included (the rule of Config and the CLI).
    return shown_url(str(url))


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Marker:
    __slots__ = ()


# Queue messages besides the chunks: a new connection begins (its bytes start a new
# stream for the parser), and a wake-up for a consumer waiting while nothing comes.
_NEW_CONNECTION = _Marker()
_WAKE = _Marker()
_Message = bytes | _Failure | _Marker
# How the connection task ended: the iteration ends cleanly, or with an error.
_Outcome = PlexdError | None
# The outcome while the connection task has not ended.
_RUNNING = _Marker()


def _unparsed(chunk: bytes) -> list[bytes]:
    return [chunk]


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
    origin changes). 401, 403, 404, 410 and every other 4xx except 408, 425 and 429
    call ``on_error`` and then end the iteration by raising that :class:`APIError`.
    Any other failure calls ``on_error`` once and reconnects after the backoff delay
    (``reconnect_delay=0``: at once), except what no server can cause (a
    :class:`ConfigError`, :class:`ArgumentError`, :class:`EventLoopError` or
    :class:`ClientClosedError`), which ends the iteration like a 4xx. Comments call
    ``on_comment``. Callbacks run in stream order relative to the events.

    ``last_event_id`` is the most recent event id, up to the last event yielded, that
    can be sent back as ``Last-Event-ID`` (see :func:`is_header_safe`); an id with a
    control character, or longer than ``MAX_RESUME_ID_BYTES``, is logged and skipped.
    Leaving ``async with`` (also after ``break``) returns promptly; a cancellation of
    the caller always propagates. A password in the URL never shows in a repr, an
    error or a log line.
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
        self._url = self._checked_url(url)
        self._shown_url = _shown(self._url)
        if not (isinstance(method, str) and is_token(method)):
            raise ArgumentError(f"method {method!r} is not an HTTP method name")
        self._method = method.upper()
        self._body = body
        for name, value in (headers or {}).items():
            check_header(name, value)
        self._headers = CIMultiDict(headers or {})
        self._check_arguments(last_event_id, reconnect_delay, max_reconnect_delay)
        check_timeout("read_timeout", read_timeout)
        check_timeout("connect_timeout", connect_timeout)
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._ssl = ssl
        self.on_comment = on_comment
        self.on_error = on_error
        self._log = logger or logging.getLogger("plexd.api")
        self._engine = ReconnectEngine(
            policy=ReconnectPolicy(reconnect_delay, max_reconnect_delay, polling_after=None),
            classify=classify_as_browser,
            on_failure=self._failed,
            on_state_change=self._state_changed,
            logger=self._log,
        )
        self._parser = SSEParser(on_retry=self._engine.server_retry, last_event_id=last_event_id)
        self._queue: asyncio.Queue[_Message] = asyncio.Queue(_READ_AHEAD)
        self._items: Iterator[SSEEvent | SSEComment] = iter(())
        self._chunk = b""
        self._offset = 0
        self._holding_chunk = False
        # The resume cursor is worked out when asked for, from the slice being handed out
        # (what was parsed last) and the cursor before it: nothing per event.
        self._slice: Sequence[SSEEvent | SSEComment] = ()
        self._slice_start_id = self._parser.resume_id
        self._checked_id = last_event_id
        self._tell_unsendable = UnsendableIdLog(self._log)
        self._outcome: _Outcome | _Marker = _RUNNING
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._response: EventStreamResponse | None = None
        self._restarting = False
        self._closed = False
        self.ready_state: Literal["connecting", "open", "closed"] = "connecting"

    def __repr__(self) -> str:
        return f"EventSource({self._shown_url!r}, ready_state={self.ready_state!r})"

    @property
    def last_event_id(self) -> str:
        """What ``Last-Event-ID`` carries on the next connection ("" sends none)."""
        return self._cursor()

    def _cursor(self) -> str:
        # The most recent sendable id among the events handed out of the current slice
        # (nearly always the last one), else the cursor the slice started from.
        items = self._slice
        handed_out = len(items) - operator.length_hint(self._items)
        for index in range(handed_out - 1, -1, -1):
            item = items[index]
            if type(item) is SSEEvent and is_header_safe(item.id):
                return item.id
        return self._slice_start_id

    @staticmethod
    def _checked_url(url: str) -> URL:
        try:
            parsed = URL(url)
        except (TypeError, ValueError):
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ArgumentError("EventSource needs an absolute http:// or https:// URL")
        return parsed

    def _check_arguments(self, last_event_id: str, delay: float, max_delay: float) -> None:
        # What aiohttp would refuse with a ValueError at every connection, refused once.
        if "Authorization" in self._headers and self._url.user is not None:
            raise ArgumentError("give credentials in the URL or an Authorization header, not both")
        if not isinstance(last_event_id, str):
            raise ArgumentTypeError(
                f"last_event_id must be a str, got {type(last_event_id).__name__}"
            )
        if not is_header_safe(last_event_id):
            raise ArgumentError(
                f"last_event_id {shown_id(last_event_id)} cannot be sent as Last-Event-ID"
            )
        check_delay("reconnect_delay", delay)
        check_delay("max_reconnect_delay", max_delay)

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
        """Stop reading, close the connection and the session. Safe to call more than once.

        Returns promptly from any state; a cancellation of the caller propagates.
        """
        self._closed = True
        self.ready_state = "closed"
        # What was not handed out is dropped: the cursor stays where the consumer is.
        self._slice_start_id, self._slice = self._cursor(), ()
        self._items, self._chunk = iter(()), b""
        self._engine.stop()
        self._wake_consumer()
        task, self._task = self._task, None
        try:
            if task is not None:
                # wait() raises only if the caller is cancelled; the task, stopped above,
                # never waits for a consumer once cancelled.
                await asyncio.wait([task])
        finally:
            await self._close_session()

    def restart(self) -> None:
        """Drop the current connection now and reconnect at once, reporting no error."""
        response = self._response
        if response is None or self._closed:
            return
        self._restarting = True
        self._engine.policy.reconnect_now()
        response.abort()

    def _start(self) -> None:
        if self._task is None and not self._closed and self._outcome is _RUNNING:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _wake_consumer(self) -> None:
        # A consumer waiting on an empty queue wakes up; a full queue has no one waiting.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_WAKE)

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
            if self._closed:
                # aclose() dropped what was not handed out: the cursor stays put.
                raise StopAsyncIteration
            # Everything parsed so far was consumed: the cursor is where the parser is.
            self._slice, self._slice_start_id = (), self._parser.resume_id
            if self._offset < len(self._chunk):
                self._parse_slice()
                continue
            if self._holding_chunk:
                self._holding_chunk = False
                self._chunk = b""
                self._queue.task_done()  # the connection may go on: the chunk is consumed
            if self._outcome is not _RUNNING and self._queue.empty():
                self._end()
            self._start()
            message = await self._queue.get()
            if type(message) is bytes:
                self._chunk, self._offset, self._holding_chunk = message, 0, True
                continue
            self._queue.task_done()
            if message is _NEW_CONNECTION:
                self._parser.reset()
            elif isinstance(message, _Failure) and self.on_error is not None:
                self.on_error(message.error)

    def _parse_slice(self) -> None:
        chunk, start = self._chunk, self._offset
        end = start + PARSE_SLICE
        parser = self._parser
        items = parser.feed_items(chunk[start:end] if start or end < len(chunk) else chunk)
        self._offset = end
        if parser.last_event_id is not self._checked_id:
            self._checked_id = parser.last_event_id
            if parser.resume_id != parser.last_event_id:
                self._tell_unsendable(parser.last_event_id, parser.resume_id)
        for item in items:
            if type(item) is SSEEvent:
                self._engine.event_delivered()
                break
        self._slice = items
        self._items = iter(items)

    def _end(self) -> NoReturn:
        # The connection task ended and everything it read was consumed.
        outcome = self._outcome
        self._closed = True
        self.ready_state = "closed"
        if outcome is None or outcome is _RUNNING:
            raise StopAsyncIteration
        error = cast(PlexdError, outcome)
        if self.on_error is not None:
            self.on_error(error)
        raise error

    # --- the connection (runs in the background task) ---------------------

    async def _run(self) -> None:
        outcome: _Outcome = None
        try:
            await self._engine.run(self._attempt)
        except PlexdError as exc:
            outcome = exc
        except Exception as exc:  # a bug: end the iteration with a PlexdError, not a loop
            self._log.error(
                "event source stopped by an unexpected %s", type(exc).__name__, exc_info=exc
            )
            outcome = PlexdError(f"event source stopped by an unexpected {type(exc).__name__}")
            outcome.__cause__ = exc
        finally:
            # Also when cancelled: a consumer waiting for more learns there is none.
            self.ready_state = "closed"
            if self._outcome is _RUNNING:
                self._outcome = outcome
            self._wake_consumer()
        await self._close_session()

    async def _attempt(self) -> None:
        await self._queue.put(_NEW_CONNECTION)
        error: Exception | None = None
        try:
            await run_connection(
                self._open, _unparsed, self._read_timeout, self._opened, self._forward
            )
        except _NoContent:
            # The server wants no more connections: a clean end, not a failure to report.
            self._log.info("server answered 204: not reconnecting", extra={"url": self._shown_url})
            self._engine.stop()
        except Exception as exc:
            error = exc
        finally:
            self._response = None
        restarted, self._restarting = self._restarting, False
        # Before the engine decides what comes next, everything read is consumed: the
        # events it counts for the backoff, a retry: line, the Last-Event-ID to send.
        # Not in a finally: a cancelled attempt must not wait for a consumer.
        await self._queue.join()
        if error is not None and not restarted:
            raise error

    def _opened(self, response: EventStreamResponse) -> None:
        self._response = response
        self._engine.connected()

    async def _forward(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            await self._queue.put(chunk)

    async def _failed(self, error: BaseException, decision: Decision) -> None:
        # An error that stops the iteration is reported where it is raised, in __anext__.
        if decision.step is not Step.STOP:
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
        resume_id = self._cursor()
        if resume_id:
            headers["Last-Event-ID"] = resume_id
        else:
            headers.popall("Last-Event-ID", None)
        return headers

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[EventStreamResponse]:
        url, method, body = self._url, self._method, self._body
        headers = self._request_headers()
        session = self._get_session()
        for _ in range(MAX_REDIRECTS + 1):
            what = f"{method} {_shown(url)}"
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
        raise SSEProtocolError(f"more than {MAX_REDIRECTS} redirects from {self._shown_url}")

    def _redirect(
        self,
        response: aiohttp.ClientResponse,
        url: URL,
        method: str,
        body: bytes | None,
        headers: CIMultiDict[str],
    ) -> tuple[URL, str, bytes | None]:
        status, shown = response.status, _shown(url)
        location = response.headers.get("Location", "").strip()
        if not location:
            raise SSEProtocolError(f"{status} redirect from {shown} without a Location")
        try:
            target = url.join(URL(location))
        except ValueError:
            # Not shown: an unparsable Location may hold a password yarl cannot mask.
            raise SSEProtocolError(f"{status} redirect from {shown}: bad Location") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise SSEProtocolError(
                f"{status} redirect from {shown} to a non-HTTP URL {_shown(target)!r}"
            )
        if target.origin() != url.origin():
            headers.popall("Authorization", None)
        if response.status == 303 or (response.status in (301, 302) and method == "POST"):
            method, body = "GET", None
        return target, method, body

    async def _check_status(self, response: aiohttp.ClientResponse, method: str, url: URL) -> None:
        shown = _shown(url)
        if response.status == 204:
            raise _NoContent(f"{method} {shown}: 204 No Content")
        # The error body is read under the read timeout too: a server may stall in it.
        try:
            async with asyncio.timeout(self._read_timeout):
                await raise_for_status(response, method, shown)
        except TimeoutError:
            raise APITimeoutError(f"{method} {shown}: timed out reading the error body") from None
