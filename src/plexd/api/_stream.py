"""Facade layer: :class:`SSEStream`, one connection to the node's event stream, from
bytes to dispatched events (parse, envelope, verify, dispatch, the resume cursor).

The connection itself is ``_http``'s :func:`run_connection` on
``ControlPlane.connect_sse``; a reconnect loop that drives it (``SSEManager``'s
:class:`ReconnectEngine`) follows it through one :class:`AttemptHooks` object.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TypeGuard

from ._client import ControlPlane
from ._dispatch import EventDispatcher
from ._envelope import SignedEnvelope, parse_envelope
from ._http import EventStreamResponse, run_connection
from ._pool import DEFAULT_VERIFY_THREADS, VERIFY_POOL
from ._reconnect import AttemptHooks
from ._resume import UnsendableIdLog, is_header_safe, shown_id
from ._sse import DEFAULT_MAX_EVENT_SIZE, SSEEvent, SSEParser
from ._verify import (
    Ed25519Verifier,
    EventVerifier,
    NonceStore,
    NoOpVerifier,
    SigningKeySet,
    check_signatures,
)
from .errors import ArgumentError, EnvelopeError, VerificationError, _StopRequested, printable

# The most threads a stream may ask for (more only take turns on the same cores).
MAX_VERIFY_THREADS_SETTING = 64
# Events per job handed to a thread: enough to make the hand-over cheap (~1.3 ms of
# verifying), few enough to spread a chunk's events over every thread. (bench_fleet: 16
# gave 31,340 events/s, 32 gave 32,335 and 64 32,498, medians of six interleaved rounds.)
_SLICE = 32


class _NoReconnectLoop:
    """The :class:`AttemptHooks` of a stream connected by hand: nothing listens."""

    stopped = False

    def connected(self) -> None:
        pass

    def event_delivered(self) -> None:
        pass

    def server_retry(self, milliseconds: int) -> None:
        pass


def check_verify_threads(value: int | None) -> int:
    """The number of verification threads a stream uses for the setting ``value``."""
    if value is None:
        return DEFAULT_VERIFY_THREADS
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 <= value <= MAX_VERIFY_THREADS_SETTING
    ):
        raise ArgumentError(
            f"verify_threads must be an int from 0 to {MAX_VERIFY_THREADS_SETTING} "
            f"(0: verify on the event loop), got {value!r}"
        )
    return value


def _pipelines(verifier: EventVerifier) -> TypeGuard[Ed25519Verifier]:
    """Whether the stream may split the verifier's work over the pool: an
    :class:`Ed25519Verifier` whose checks a subclass did not replace."""
    if not isinstance(verifier, Ed25519Verifier):
        return False
    kind = type(verifier)
    return (
        kind.verify is Ed25519Verifier.verify
        and kind.verify_sync is Ed25519Verifier.verify_sync
        and kind.finish_check is Ed25519Verifier.finish_check
        and kind.signed_message is Ed25519Verifier.signed_message
    )


def _deliver(
    dispatch: Callable[[SignedEnvelope], Awaitable[None] | None],
    envelope: SignedEnvelope,
    nonces: NonceStore | None,
) -> Awaitable[None] | None:
    """Hand a verified event to its handlers: None once they all ran, or what finishes
    them (await it at once). No coroutine while the handlers are plain functions."""
    try:
        pending = dispatch(envelope)
    except BaseException:
        _unspend(nonces, envelope)
        raise
    return None if pending is None else _finish_delivery(pending, envelope, nonces)


async def _finish_delivery(
    pending: Awaitable[None], envelope: SignedEnvelope, nonces: NonceStore | None
) -> None:
    try:
        await pending
    except BaseException:
        _unspend(nonces, envelope)
        raise


def _unspend(nonces: NonceStore | None, envelope: SignedEnvelope) -> None:
    # The handlers were interrupted (a stop or a cancellation): the cursor stays before the
    # event, and its replay must not be refused as a replay.
    if nonces is not None:
        nonces.forget(envelope.nonce)


def _nothing() -> None:
    pass


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _SignatureJob:
    """Signatures ``messages[start:end]`` of one chunk's events, checked by whoever claims
    the job first: a pool thread, or the event loop itself when it needs the result and
    no thread has started on it (work stealing: a quiet stream's one event is verified
    without waiting for a thread to wake, and a loop with nothing else to do verifies
    too).

    The loop waits only for a job that is not ``done``, and a thread wakes the loop only
    when it waits: a loop that falls behind its threads is never woken. (The GIL orders
    the two flags: whichever side looks second sees the other's write.)
    """

    __slots__ = (
        "cancelled",
        "claim",
        "done",
        "end",
        "keys",
        "loop",
        "messages",
        "outcomes",
        "start",
        "waiter",
    )

    def __init__(
        self,
        messages: list[bytes | None],
        keys: SigningKeySet,
        outcomes: bytearray,
        start: int,
        end: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.messages = messages
        self.keys = keys
        self.outcomes = outcomes
        self.start = start
        self.end = end
        self.loop = loop
        self.cancelled = False
        self.claim = threading.Lock()
        self.done = False
        self.waiter: asyncio.Future[None] | None = None

    def run(self) -> None:
        """On a pool thread."""
        try:
            if not self.steal():
                return
        finally:
            waiter = self.waiter
            if waiter is not None and self.done:
                # A closed loop (RuntimeError) has nobody waiting any more.
                with contextlib.suppress(RuntimeError):
                    self.loop.call_soon_threadsafe(_wake, waiter)

    def steal(self) -> bool:
        """Check the signatures here and now, unless someone claimed the job already."""
        if self.cancelled or not self.claim.acquire(blocking=False):
            return False
        try:
            check_signatures(self.messages, self.keys, self.outcomes, self.start, self.end)
        finally:
            # Even after a failure, which leaves the outcomes UNCHECKED: each event is
            # then verified whole on the loop when its turn comes.
            self.done = True
        return True

    async def wait(self) -> None:
        self.waiter = self.loop.create_future()
        if not self.done:
            await self.waiter


class _PooledBatch:
    """One chunk's events on their way through the pool: parsed, and their signatures
    handed to the threads, one job of ``size`` events at a time."""

    def __init__(self, events: list[SSEEvent], verifier: Ed25519Verifier, threads: int) -> None:
        count = len(events)
        self.events = events
        self.verifier = verifier
        self.keys = verifier.keys
        # Small chunks are spread over the threads and the loop; large ones go in jobs
        # of _SLICE.
        self.size = min(_SLICE, max(1, -(-count // (threads + 1))))
        # How many jobs the loop keeps handed out beyond the one it waits for.
        self.ahead = threads + 1
        self.parsed: list[SignedEnvelope | EnvelopeError] = []
        self.messages: list[bytes | None] = []
        self.outcomes = bytearray(count)
        self.jobs: list[_SignatureJob] = []
        self._loop = asyncio.get_running_loop()

    def parse_through(self, last_job: int) -> None:
        """Parse the events of the jobs up to ``last_job`` and hand those jobs out."""
        events, parsed, messages = self.events, self.parsed, self.messages
        signed_message = self.verifier.signed_message
        jobs, size, count = self.jobs, self.size, len(self.events)
        while len(jobs) <= last_job and (start := len(jobs) * size) < count:
            end = min(start + size, count)
            for event in events[start:end]:
                try:
                    envelope = parse_envelope(event.data)
                except EnvelopeError as exc:
                    parsed.append(exc)
                    messages.append(None)
                else:
                    parsed.append(envelope)
                    messages.append(signed_message(envelope))
            job = _SignatureJob(messages, self.keys, self.outcomes, start, end, self._loop)
            jobs.append(job)
            VERIFY_POOL.submit(job)


async def _complete(jobs: list[_SignatureJob], position: int) -> None:
    """Until ``jobs[position]`` is done: the loop verifies what no thread took yet."""
    job = jobs[position]
    if not position:
        # One turn of the loop first: the other streams' chunks that arrived with this
        # one hand their work to the threads too, before this loop starts verifying.
        # (Later in the chunk they have had theirs: a turn per job costs more than it
        # gives, about 1 us per event.)
        await asyncio.sleep(0)
    if job.done or job.steal():
        return
    # A thread has it: meanwhile verify the next jobs that no thread has started.
    for later in itertools.islice(jobs, position + 1, None):
        if job.done:
            return
        later.steal()
    if not job.done:
        await job.wait()


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

    With an :class:`Ed25519Verifier`, signatures are checked on ``verify_threads``
    threads of a pool shared by the process (default: one per CPU but one, at most 8;
    none with a single CPU), while the event loop goes on parsing, and verifies too
    whenever it would otherwise wait for a thread. Events are still dispatched one at
    a time in stream order, and the time window and nonce checks run on the loop in
    that order, each just before its event's handlers. ``0`` verifies on the event
    loop. The threads live while a stream or manager using them runs. Another
    verifier's ``verify`` (a coroutine or a plain function) is called on the event
    loop, one event at a time, as always.
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
        verify_threads: int | None = None,
    ) -> None:
        self._client = client
        self._verifier: EventVerifier = verifier if verifier is not None else NoOpVerifier()
        self._verify_threads = check_verify_threads(verify_threads)
        # Set while connected with the pool in use: the verifier whose work it splits.
        self._pooled: Ed25519Verifier | None = None
        self._dispatcher = dispatcher
        # Handlers that are plain functions run without a coroutine per event, unless a
        # subclass changed how events are dispatched.
        self._dispatch_now: Callable[[SignedEnvelope], Awaitable[None] | None] = (
            dispatcher.dispatch_now
            if type(dispatcher).dispatch is EventDispatcher.dispatch
            else dispatcher.dispatch
        )
        self._idle_timeout = idle_timeout
        self._log = logger or logging.getLogger("plexd.api")
        self._max_event_size = max_event_size
        self._engine: AttemptHooks = engine if engine is not None else _NoReconnectLoop()
        self._parser: SSEParser | None = None
        # The resume cursor, and the last id the stream moved to (maybe not sendable).
        self._last_event_id = ""
        self._seen_id = ""
        self._tell_unsendable = UnsendableIdLog(self._log)

    def hold_verify_threads(self) -> Callable[[], None]:
        """Keep the stream's verification threads running across :meth:`connect` calls
        until the returned function is called (once). A no-op without threads."""
        if not (self._verify_threads and _pipelines(self._verifier)):
            return _nothing
        VERIFY_POOL.acquire(self._verify_threads)
        return VERIFY_POOL.release

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
        verifier = self._verifier
        pooled = verifier if self._verify_threads and _pipelines(verifier) else None
        if pooled is not None:
            VERIFY_POOL.acquire(self._verify_threads)
        self._pooled = pooled
        try:
            await run_connection(
                lambda: self._client.connect_sse(node_id, self.last_event_id),
                parser.feed,
                self._idle_timeout,
                self._opened,
                self._handle_pooled if pooled is not None else self._handle_batch,
            )
        finally:
            self._parser = None
            self._pooled = None
            if pooled is not None:
                VERIFY_POOL.release()

    def _opened(self, response: EventStreamResponse) -> None:
        self._log.info("event stream open", extra={"last_event_id": self.last_event_id})
        self._engine.connected()

    async def _handle_batch(self, events: list[SSEEvent]) -> None:
        # The hot path of the whole client: one iteration per event, nothing per event
        # that can be done per batch, and no verify() call at all for a NoOpVerifier.
        verifier = self._verifier
        verify: Callable[[SignedEnvelope], object] | None = None
        nonces: NonceStore | None = None
        if _pipelines(verifier):
            # Its checks without a coroutine per event.
            verify, nonces = verifier.verify_sync, verifier.nonces
        elif not isinstance(verifier, NoOpVerifier):
            verify = verifier.verify
        dispatch = self._dispatch_now
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
                        result = verify(envelope)
                        # A user's verify may be a plain function as well as a coroutine.
                        if result is not None and inspect.isawaitable(result):
                            await result
                except VerificationError as exc:
                    self._skip_unverifiable(event, envelope, exc)
                else:
                    pending = _deliver(dispatch, envelope, nonces)
                    if pending is not None:
                        await pending
            if event.id != self._seen_id:
                self._advance(event.id)
        self._batch_done(events)

    async def _handle_pooled(self, events: list[SSEEvent]) -> None:
        # _handle_batch with the signatures checked on the pool's threads. The loop stays a
        # few jobs ahead: it parses a slice of events and hands it to the threads, and
        # then, in stream order, each event waits for its slice, takes the checks that
        # depend on the order (window, key in force, nonce) and is dispatched. (Parsing a
        # whole large chunk first would hold the GIL for milliseconds, and stall every
        # thread that finished a verify meanwhile.)
        verifier = self._pooled
        assert verifier is not None
        batch = _PooledBatch(events, verifier, self._verify_threads)
        try:
            await self._dispatch_checked(batch)
        finally:
            # Stopped, cancelled or failed mid-way: the threads skip what is left.
            for job in batch.jobs:
                job.cancelled = True
        self._batch_done(events)

    async def _dispatch_checked(self, batch: _PooledBatch) -> None:
        verifier = batch.verifier
        finish, nonces = verifier.finish_check, verifier.nonces
        dispatch = self._dispatch_now
        task = asyncio.current_task()
        engine = self._engine
        parsed, outcomes, keys, jobs = batch.parsed, batch.outcomes, batch.keys, batch.jobs
        size, ahead = batch.size, batch.ahead
        position = -1
        for index, event in enumerate(batch.events):
            if engine.stopped:
                raise _StopRequested
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            if index // size != position:
                position = index // size
                batch.parse_through(position + ahead)
            envelope = parsed[index]
            # Handled from here on: dropped from the batch, it dies young, and the garbage
            # collector has fewer survivors to promote (a chunk holds hundreds of events).
            parsed[index] = None  # type: ignore[call-overload]
            if isinstance(envelope, EnvelopeError):
                self._skip_malformed(event, envelope)
            else:
                if not jobs[position].done:
                    await _complete(jobs, position)
                    if engine.stopped:
                        raise _StopRequested
                try:
                    finish(envelope, outcomes[index], keys)
                except VerificationError as exc:
                    self._skip_unverifiable(event, envelope, exc)
                else:
                    pending = _deliver(dispatch, envelope, nonces)
                    if pending is not None:
                        await pending
            if event.id != self._seen_id:
                self._advance(event.id)

    def _batch_done(self, events: list[SSEEvent]) -> None:
        if events:
            self._engine.event_delivered()
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
