"""However a byte stream is cut into chunks, the SSE clients see the same thing.

For SSEParser (fed in memory), SSEStream and EventSource (a real loopback server writes
the chosen chunks one by one, each flushed, with a pause between them): the same events
and comments in the same order, the same retry and oversize reports, the same
``last_event_id`` and the same resume cursor as the stream parsed in one piece. The
streams mix what makes cursors and chunk boundaries hard: ids with control characters,
id-only blocks, oversized events, CR/LF/CRLF line ends, a byte order mark and
multi-byte UTF-8.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plexd.api import (
    Config,
    ControlPlane,
    EnvelopeError,
    EventDispatcher,
    EventSource,
    SignedEnvelope,
    SSEComment,
    SSEEvent,
    SSEParser,
    SSEStream,
    parse_envelope,
)

BOM = b"\xef\xbb\xbf"
NODE = "n1"
# Small enough that the streams below hold oversized events.
MAX_EVENT_SIZE = 120
HANG_GUARD = 10.0


# --- streams --------------------------------------------------------------------------


def envelope(n: int) -> str:
    return json.dumps(
        {"event_type": "t", "event_id": f"e{n}", "payload": {"text": "é ✓ 😀 ß"}},
        ensure_ascii=False,
    )


@st.composite
def block(draw: st.DrawFn, n: int) -> list[str]:
    """The lines of one block of the stream (its blank line included)."""
    ids = [
        [],
        [f"id: {n}"],
        [f"id: {n}"],
        [f"id: a\x0b{n}"],  # unsendable: not a cursor
        [f"id: \x7f{n}"],
        [f"id: é{n}"],
        [f"id: a\x00{n}"],  # ignored (WHATWG)
        ["id"],  # resets the id
    ]
    kind = draw(st.sampled_from(["event", "event", "event", "split", "id-only", "big", "bad"]))
    head = draw(st.sampled_from(ids))
    if kind == "event":
        return [*head, "event: t", f"data: {envelope(n)}", ""]
    if kind == "split":  # the envelope over two data lines (joined with LF: still JSON)
        text = envelope(n)
        cut = draw(st.integers(1, len(text) - 1))
        while text[cut - 1] == "\\":  # not inside an escape
            cut -= 1
        return [*head, f"data:{text[:cut]}", f"data:{text[cut:]}", ""]
    if kind == "id-only":
        return [*(head or [f"id: {n}"]), ""]
    if kind == "big":  # over MAX_EVENT_SIZE: skipped by the parser and the stream
        return [*head, "data: " + "é" * (MAX_EVENT_SIZE + 10), ""]
    return [*head, "data: not an envelope", ""]


extras = st.sampled_from([[": keep-alive"], [":é comment"], ["retry: 7"], ["retry: x"], []])


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    lines: list[str] = []
    for n in range(1, draw(st.integers(1, 12)) + 1):
        lines += draw(extras) + draw(block(n))
    if draw(st.booleans()):
        lines.append("data: cut by the end of the stream")
    ends = draw(st.sampled_from([["\n"], ["\r\n"], ["\r"], ["\n", "\r\n", "\r"]]))
    text = "".join(line + draw(st.sampled_from(ends)) for line in lines)
    return (BOM if draw(st.booleans()) else b"") + text.encode()


@st.composite
def splits(draw: st.DrawFn, max_cuts: int) -> tuple[bytes, list[bytes]]:
    stream = draw(streams())
    points = sorted(set(draw(st.lists(st.integers(1, len(stream) - 1), max_size=max_cuts))))
    bounds = [0, *points, len(stream)]
    return stream, [stream[a:b] for a, b in itertools.pairwise(bounds)]


# --- what the parser makes of a stream ------------------------------------------------


@dataclass
class Parsed:
    items: list[SSEEvent | SSEComment] = field(default_factory=list)
    retries: list[int] = field(default_factory=list)
    oversized: int = 0
    last_event_id: str = ""
    resume_id: str = ""


def parse(chunks: Sequence[bytes], max_event_size: int, fast_path_min_size: int) -> Parsed:
    parsed = Parsed()

    def oversize(size: int) -> None:
        parsed.oversized += 1

    parser = SSEParser(parsed.retries.append, max_event_size, oversize)
    parser._fast_path_min_size = fast_path_min_size
    for chunk in chunks:
        parsed.items += parser.feed_items(chunk)
    parsed.last_event_id, parsed.resume_id = parser.last_event_id, parser.resume_id
    return parsed


def delivered(parsed: Parsed) -> list[str]:
    """The envelope ids SSEStream hands to handlers: the events that are envelopes."""
    ids = []
    for item in parsed.items:
        if isinstance(item, SSEEvent):
            with contextlib.suppress(EnvelopeError):
                ids.append(parse_envelope(item.data).event_id)
    return ids


@settings(max_examples=300, deadline=None)
@given(splits(max_cuts=40), st.sampled_from([MAX_EVENT_SIZE, 16 * 1024 * 1024]), st.booleans())
def test_the_parser_gives_the_same_however_the_stream_is_cut(
    case: tuple[bytes, list[bytes]], max_event_size: int, fast: bool
) -> None:
    stream, chunks = case
    fast_path_min_size = 0 if fast else SSEParser._fast_path_min_size
    whole = parse([stream], max_event_size, fast_path_min_size)
    assert parse(chunks, max_event_size, fast_path_min_size) == whole
    one_byte_chunks = [stream[i : i + 1] for i in range(len(stream))]
    assert parse(one_byte_chunks, max_event_size, fast_path_min_size) == whole


# --- the same through a real connection -----------------------------------------------


async def serve_chunks(
    chunks: Sequence[bytes], then_204: bool
) -> tuple[web.AppRunner, str, list[str | None]]:
    """A server whose first answer writes ``chunks`` one by one, then ends; later
    answers are 204 (``then_204``) or the same stream again."""
    last_event_ids: list[str | None] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        last_event_ids.append(request.headers.get("Last-Event-ID"))
        if then_204 and len(last_event_ids) > 1:
            return web.Response(status=204)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
            await asyncio.sleep(0.002)  # let the client read it on its own
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}", last_event_ids


class RetryLog:
    """Stands where a reconnect engine would (AttemptHooks): keeps every ``retry:``."""

    stopped = False

    def __init__(self, retries: list[int]) -> None:
        self.retries = retries

    def connected(self) -> None:
        pass

    def event_delivered(self) -> None:
        pass

    def server_retry(self, milliseconds: int) -> None:
        self.retries.append(milliseconds)


@dataclass
class StreamRun:
    handled: list[str]
    retries: list[int]
    last_event_id: str


async def through_sse_stream(chunks: Sequence[bytes]) -> StreamRun:
    runner, url, _ = await serve_chunks(chunks, then_204=False)
    handled: list[str] = []
    retries: list[int] = []

    def handler(envelope: SignedEnvelope) -> None:
        handled.append(envelope.event_id)

    dispatcher = EventDispatcher()
    dispatcher.register("t", handler)
    quiet = logging.getLogger("test.chunking.quiet")
    try:
        async with ControlPlane(Config(base_url=url), "test") as client:
            stream = SSEStream(
                client,
                None,
                dispatcher,
                HANG_GUARD,
                quiet,
                max_event_size=MAX_EVENT_SIZE,
                engine=RetryLog(retries),
            )
            await asyncio.wait_for(stream.connect(NODE), HANG_GUARD)
    finally:
        await runner.cleanup()
    return StreamRun(handled, retries, stream.last_event_id)


@dataclass
class SourceRun:
    seen: list[SSEEvent | SSEComment]
    last_event_id: str
    resumed_with: str | None


async def through_event_source(chunks: Sequence[bytes]) -> SourceRun:
    runner, url, last_event_ids = await serve_chunks(chunks, then_204=True)
    seen: list[SSEEvent | SSEComment] = []

    def comment(text: str) -> None:
        seen.append(SSEComment(text))

    source = EventSource(
        url,
        reconnect_delay=0,
        max_reconnect_delay=0.01,
        on_comment=comment,
        logger=logging.getLogger("test.chunking.quiet"),
    )
    try:
        async with asyncio.timeout(HANG_GUARD), source:
            # The first connection ends, the second is a 204: the iteration ends.
            async for event in source:
                seen.append(event)
    finally:
        await runner.cleanup()
    return SourceRun(seen, source.last_event_id, last_event_ids[1])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(splits(max_cuts=12))
def test_sse_stream_and_event_source_give_the_same_however_the_bytes_arrive(
    case: tuple[bytes, list[bytes]],
) -> None:
    stream, chunks = case
    small = parse([stream], MAX_EVENT_SIZE, SSEParser._fast_path_min_size)
    default = parse([stream], 16 * 1024 * 1024, SSEParser._fast_path_min_size)

    run = asyncio.run(through_sse_stream(chunks))
    assert run.handled == delivered(small)
    assert run.retries == small.retries
    assert run.last_event_id == small.resume_id

    source = asyncio.run(through_event_source(chunks))
    assert source.seen == default.items
    assert source.last_event_id == default.resume_id
    assert source.resumed_with == (default.resume_id or None)
