"""Emulator, data layer (asyncio, no aiohttp): a node's event log and the connections
streaming it as text/event-stream.

Each event is encoded to its SSE frame once, when published; a stream connection
keeps a cursor into the log and writes whatever lies past it in batches, so a
replay after ``Last-Event-ID`` and live delivery are the same loop.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from plexd.api import SignedEnvelope, envelope_json

from .faults import (
    HEALTHY_STREAM,
    EventMutation,
    Faults,
    StreamPlan,
    mutates_events,
    take_event_mutation,
)

_log = logging.getLogger("plexd.emulator")

# A write gathers frames up to about this many bytes (replays and bursts).
BATCH_BYTES = 256 * 1024
KEEPALIVE = b": keep-alive\n"


def encode_frame(event_id: int, event_type: str, data: bytes) -> bytes:
    """One SSE event: ``id``, ``event`` and ``data`` lines and the blank line ending it.

    ``data`` is one line: envelope JSON as Go writes it has no raw line breaks.
    """
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, event_type.encode(), data)


def retry_frame(retry_ms: int) -> bytes:
    """The ``retry:`` field that tells the client how long to wait before reconnecting."""
    return b"retry: %d\n\n" % retry_ms


def spoiled_frame(event_id: int, envelope: SignedEnvelope, mutation: EventMutation) -> bytes:
    """The frame of an event as a fault sends it: bad signature, broken JSON or no event_id."""
    data = envelope_json(envelope)
    if mutation == "corrupt_signature":
        signature = bytearray(base64.b64decode(envelope.signature))
        signature[0] ^= 0x01
        wrong = base64.b64encode(bytes(signature))
        data = data.replace(envelope.signature.encode(), wrong)
    elif mutation == "invalid_json":
        data = data[: len(data) // 2]
    else:
        fields: dict[str, Any] = msgspec.json.decode(data)
        fields.pop("event_id", None)
        data = msgspec.json.encode(fields)
    return encode_frame(event_id, envelope.event_type, data)


class EventLog:
    """The events published to one node, with ids 1, 2, 3, … and their SSE frames.

    It keeps the most recent ``max_events`` (None: every one); older events go first,
    and ids keep counting. ``first_id`` is the id of the oldest event kept.
    """

    def __init__(self, max_events: int | None = None) -> None:
        if max_events is not None and max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.max_events = max_events
        self.envelopes: list[SignedEnvelope] = []
        self.frames: list[bytes] = []
        self.first_id = 1
        self.streams: set[StreamConnection] = set()

    def __len__(self) -> int:
        """How many events the log still holds."""
        return len(self.frames)

    @property
    def next_id(self) -> int:
        """The id the next published event gets."""
        return self.first_id + len(self.frames)

    @property
    def published(self) -> int:
        """How many events were ever published to the node (dropped ones included)."""
        return self.next_id - 1

    def append(self, envelopes: Iterable[SignedEnvelope]) -> None:
        """Add events (their ``event_id`` is their log id) and wake every stream."""
        for envelope in envelopes:
            event_id = self.next_id
            self.frames.append(encode_frame(event_id, envelope.event_type, envelope_json(envelope)))
            self.envelopes.append(envelope)
        excess = len(self.frames) - self.max_events if self.max_events is not None else 0
        if excess > 0:
            del self.frames[:excess]
            del self.envelopes[:excess]
            self.first_id += excess
        for stream in self.streams:
            stream.wake.set()

    def resume_point(self, last_event_id: str | None) -> Resume:
        """Where a stream starts: after ``last_event_id`` (None: no cursor, new events only).

        A cursor the log does not hold (older than its oldest event, never issued, or not
        an id of this log) starts at the oldest event kept, and says so (``held=False``).
        """
        if last_event_id is None:
            return Resume(self.next_id, held=True)
        try:
            last = int(last_event_id.strip())
        except ValueError:
            return Resume(self.first_id, held=False)
        if self.first_id - 1 <= last < self.next_id:
            return Resume(last + 1, held=True)
        return Resume(self.first_id, held=False)

    def close_streams(self) -> int:
        """End every connected stream (cleanly); returns how many there were."""
        streams = list(self.streams)
        for stream in streams:
            stream.stop()
        return len(streams)


@dataclass(frozen=True)
class Resume:
    """The id a new stream starts at, and whether the log held the client's cursor."""

    next_id: int
    held: bool


class StreamCut(Exception):
    """A fault cut the connection; the server closes the transport without ending the body."""


class StreamConnection:
    """One client reading a node's event stream.

    ``write`` sends bytes on the HTTP response; ``faults`` returns the faults that
    apply now (looked up on every batch, so a fault set mid-stream takes effect).
    """

    def __init__(
        self,
        log: EventLog,
        next_id: int,
        write: Callable[[bytes], Awaitable[None]],
        faults: Callable[[], list[Faults]],
        *,
        keepalive_interval: float,
        retry_ms: int | None = None,
        plan: StreamPlan = HEALTHY_STREAM,
    ) -> None:
        self.log = log
        self.next_id = next_id
        self.dropped = 0
        self.sent = 0
        self.wake = asyncio.Event()
        self._write = write
        self._faults = faults
        self._keepalive_interval = keepalive_interval
        self._retry_ms = retry_ms
        self._plan = plan
        self._stopped = asyncio.Event()

    def stop(self) -> None:
        """Make :meth:`run` return (the response then ends cleanly)."""
        self._stopped.set()
        self.wake.set()

    async def run(self) -> None:
        """Send the stream until stopped; raises :class:`StreamCut` when a fault cuts it.

        A client that goes away shows up as a ``ConnectionError`` from ``write`` or as
        cancellation; both propagate.
        """
        if await self._limit_reached():
            return
        if self._retry_ms is not None:
            await self._send(retry_frame(self._retry_ms))
        while not self._stopped.is_set():
            self.wake.clear()
            if self.next_id < self.log.next_id:
                await self._send(self._next_batch())
                continue
            try:
                async with asyncio.timeout(self._keepalive_interval):
                    await self.wake.wait()
            except TimeoutError:
                await self._send(KEEPALIVE)

    def _next_batch(self) -> bytes:
        log = self.log
        if self.next_id < log.first_id:
            # The log dropped events this (slow) reader had not been sent yet.
            missed = log.first_id - self.next_id
            self.dropped += missed
            _log.warning("a stream fell behind the event log bound: %d events skipped", missed)
            self.next_id = log.first_id
        index = self.next_id - log.first_id
        faults = self._faults()
        if faults and mutates_events(faults):
            mutation = take_event_mutation(faults)
            event_id = self.next_id
            self.next_id += 1
            if mutation is not None:
                return spoiled_frame(event_id, log.envelopes[index], mutation)
            return log.frames[index]
        frames = log.frames
        start = end = index
        size = 0
        stop = len(frames)
        while end < stop and size < BATCH_BYTES:
            size += len(frames[end])
            end += 1
        self.next_id += end - start
        return b"".join(frames[start:end])

    async def _send(self, data: bytes) -> None:
        limit = self._byte_limit()
        if limit is not None and self.sent + len(data) >= limit:
            data = data[: limit - self.sent]
        if data:
            await self._write(data)
            self.sent += len(data)
        await self._limit_reached()

    def _byte_limit(self) -> int | None:
        limits = [
            n for n in (self._plan.cut_after_bytes, self._plan.stall_after_bytes) if n is not None
        ]
        return min(limits) if limits else None

    async def _limit_reached(self) -> bool:
        """Apply a cut or stall whose byte count is reached; True if the stream stalled."""
        plan = self._plan
        if plan.cut_after_bytes is not None and self.sent >= plan.cut_after_bytes:
            raise StreamCut
        if plan.stall_after_bytes is not None and self.sent >= plan.stall_after_bytes:
            await self._stopped.wait()
            return True
        return False
