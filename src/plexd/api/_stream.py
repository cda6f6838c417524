"""Facade layer: :class:`SSEStream`, one connection to the node's event stream, from
bytes to dispatched events (parse, envelope, verify, dispatch, the resume cursor).

The connection itself is ``_http``'s :func:`run_connection` on
``ControlPlane.connect_sse``; a reconnect loop that drives it (``SSEManager``'s
:class:`ReconnectEngine`) follows it through one :class:`AttemptHooks` object.
"""

from __future__ import annotations

import asyncio
import logging

from ._client import ControlPlane
from ._dispatch import EventDispatcher
from ._envelope import SignedEnvelope, parse_envelope
from ._http import EventStreamResponse, run_connection
from ._reconnect import AttemptHooks
from ._resume import UnsendableIdLog, is_header_safe, shown_id
from ._sse import DEFAULT_MAX_EVENT_SIZE, SSEEvent, SSEParser
from ._verify import EventVerifier, NoOpVerifier
from .errors import ArgumentError, EnvelopeError, VerificationError, _StopRequested, printable


class _NoReconnectLoop:
    """The :class:`AttemptHooks` of a stream connected by hand: nothing listens."""

    stopped = False

    def connected(self) -> None:
        pass

    def event_delivered(self) -> None:
        pass

    def server_retry(self, milliseconds: int) -> None:
        pass


class SSEStream:
    """Reads ``GET /v1/nodes/{node_id}/events`` once: parse, verify, dispatch, in stream order.

    ``last_event_id`` advances only after an event's handlers finished (or the event
    was skipped as malformed or unverifiable), so the next :meth:`connect` sends a
    ``Last-Event-ID`` that never skips an event cut mid-way or still being handled.
    A block that dispatches nothing (``id:`` alone, an oversized event) moves it too,
    however the bytes were split. It is the most recent such id that is a valid header
    value (:func:`is_header_safe`): an id with a control character, or longer than
    ``MAX_RESUME_ID_BYTES``, is logged once and skipped as a cursor.
    ``engine`` (a :class:`ReconnectEngine`, or any :class:`AttemptHooks`) hears when
    the stream is open, that events arrived and the server's ``retry:``; once it is
    ``stopped`` the stream stops before the next event.
    """

    def __init__(
        self,
        client: ControlPlane,
        verifier: EventVerifier | None,
        dispatcher: EventDispatcher,
        idle_timeout: float,
        logger: logging.Logger | None = None,
        *,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        engine: AttemptHooks | None = None,
    ) -> None:
        self._client = client
        self._verifier: EventVerifier = verifier if verifier is not None else NoOpVerifier()
        self._dispatcher = dispatcher
        self._idle_timeout = idle_timeout
        self._log = logger or logging.getLogger("plexd.api")
        self._max_event_size = max_event_size
        self._engine: AttemptHooks = engine if engine is not None else _NoReconnectLoop()
        self._parser: SSEParser | None = None
        # The resume cursor, and the last id the stream moved to (maybe not sendable).
        self._last_event_id = ""
        self._seen_id = ""
        self._tell_unsendable = UnsendableIdLog(self._log)

    @property
    def last_event_id(self) -> str:
        """What ``Last-Event-ID`` carries on the next :meth:`connect` ("" sends none)."""
        return self._last_event_id

    @last_event_id.setter
    def last_event_id(self, value: str) -> None:
        if not is_header_safe(value):
            raise ArgumentError(
                f"last_event_id {shown_id(value)} cannot be sent as a Last-Event-ID header"
            )
        self._last_event_id = self._seen_id = value

    async def connect(self, node_id: str) -> None:
        """Connect (with ``Last-Event-ID`` when there is one) and handle events until the
        server closes the stream; raises on a failed connect, a broken stream, an idle
        timeout or a response that is not ``text/event-stream``."""
        self._seen_id = self._last_event_id
        parser = self._parser = SSEParser(
            on_retry=self._engine.server_retry,
            max_event_size=self._max_event_size,
            on_oversize=self._oversize,
            last_event_id=self.last_event_id,
        )
        try:
            await run_connection(
                lambda: self._client.connect_sse(node_id, self.last_event_id),
                parser.feed,
                self._idle_timeout,
                self._opened,
                self._handle_batch,
            )
        finally:
            self._parser = None

    def _opened(self, response: EventStreamResponse) -> None:
        self._log.info("event stream open", extra={"last_event_id": self.last_event_id})
        self._engine.connected()

    async def _handle_batch(self, events: list[SSEEvent]) -> None:
        # The hot path of the whole client: one iteration per event, nothing per event
        # that can be done per batch, and no verify() call at all for a NoOpVerifier.
        verify = None if isinstance(self._verifier, NoOpVerifier) else self._verifier.verify
        dispatch = self._dispatcher.dispatch
        task = asyncio.current_task()
        engine = self._engine
        for event in events:
            # A shutdown from a handler that never suspends would only be noticed at the
            # next read: stop before the next event, which is then replayed next time.
            if engine.stopped:
                raise _StopRequested
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            try:
                envelope = parse_envelope(event.data)
            except EnvelopeError as exc:
                self._skip_malformed(event, exc)
            else:
                try:
                    if verify is not None:
                        await verify(envelope)
                except VerificationError as exc:
                    self._skip_unverifiable(event, envelope, exc)
                else:
                    await dispatch(envelope)
            if event.id != self._seen_id:
                self._advance(event.id)
        if events:
            engine.event_delivered()
        parser = self._parser
        if parser is not None:
            # Every block of the chunk is processed, those that dispatched nothing (an
            # `id:` alone, an oversized event) included: the cursor follows the parser.
            if parser.last_event_id != self._seen_id:
                self._advance(parser.last_event_id)
            self._last_event_id = parser.resume_id

    def _advance(self, event_id: str) -> None:
        self._seen_id = event_id
        if is_header_safe(event_id):
            self._last_event_id = event_id
        else:
            self._tell_unsendable(event_id, self._last_event_id)

    def _skip_malformed(self, event: SSEEvent, exc: EnvelopeError) -> None:
        self._log.warning(
            "skipping malformed event %r: %s",
            event.id,
            exc,
            extra={"sse_id": event.id, "reason": str(exc)},
        )

    def _skip_unverifiable(
        self, event: SSEEvent, envelope: SignedEnvelope, exc: VerificationError
    ) -> None:
        # Not verified, so not the control plane's word: shown escaped.
        self._log.warning(
            "skipping unverifiable %s event %s: %s",
            printable(envelope.event_type),
            printable(envelope.event_id),
            exc,
            extra={
                "sse_id": event.id,
                "event_type": envelope.event_type,
                "event_id": envelope.event_id,
                "reason": str(exc),
            },
        )

    def _oversize(self, size: int) -> None:
        self._log.error(
            "skipping an event larger than %d bytes (%d bytes seen)",
            self._max_event_size,
            size,
            extra={"size": size, "max_event_size": self._max_event_size},
        )
