"""The resume cursor of SSEStream and SSEManager: unsendable ids, and blocks that dispatch nothing.

Real loopback servers; a server that must deliver a block "alone in a chunk" writes it
only after the client handled everything before it, so no timing decides the split.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from plexd.api import (
    Config,
    ControlPlane,
    EventDispatcher,
    SignedEnvelope,
    SSEManager,
    SSEStream,
    envelope_json,
    sign_envelope,
)
from plexd.api.errors import ArgumentError

SEED = bytes(range(32))
NODE = "node-1"
EVENTS_PATH = f"/v1/nodes/{NODE}/events"

# One step of a scripted response: bytes to write, or a coroutine function to await first.
Step = bytes | Callable[[], Awaitable[object]]


def event(n: int, sse_id: str | None = None) -> bytes:
    """A signed event whose envelope id is evt-n, with the SSE id ``sse_id`` (default n)."""
    envelope = envelope_json(sign_envelope(SEED, "peer_added", f"evt-{n}", {"n": n}))
    shown = str(n) if sse_id is None else sse_id
    return b"id: " + shown.encode() + b"\ndata: " + envelope + b"\n\n"


@dataclass
class ScriptedEvents:
    """The events endpoint: the n-th request plays the n-th script (the last one repeats);
    a script that ends closes the stream, unless ``hold``."""

    scripts: list[list[Step]]
    hold: bool = False
    last_event_ids: list[str | None] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.last_event_ids.append(request.headers.get("Last-Event-ID"))
        script = self.scripts[min(len(self.last_event_ids), len(self.scripts)) - 1]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for step in script:
            if isinstance(step, bytes):
                await response.write(step)
            else:
                await step()
        if self.hold:
            await asyncio.sleep(3600)
        return response


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[ScriptedEvents]]]:
    runners: list[web.AppRunner] = []

    async def start(*scripts: list[Step], hold: bool = False) -> ScriptedEvents:
        server = ScriptedEvents(list(scripts), hold)
        app = web.Application()
        app.router.add_get(EVENTS_PATH, server.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


class Handled:
    """A handler recording envelope ids; ``reached(n)`` waits until n events were handled."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, envelope: SignedEnvelope) -> None:
        self.ids.append(envelope.event_id)
        self._changed.set()

    def reached(self, count: int) -> Callable[[], Awaitable[None]]:
        async def wait() -> None:
            while len(self.ids) < count:
                self._changed.clear()
                await self._changed.wait()
            # The handler returned; let the stream finish its batch before the next bytes.
            await asyncio.sleep(0.05)

        return wait


def stream_for(client: ControlPlane, handled: Handled, **kwargs: object) -> SSEStream:
    dispatcher = EventDispatcher()
    dispatcher.register("peer_added", handled)
    return SSEStream(client, None, dispatcher, 5.0, **kwargs)  # type: ignore[arg-type]


# --- a block that dispatches nothing, alone in a chunk, moves the cursor (item 5) -----


async def test_an_id_only_block_alone_in_a_chunk_moves_the_cursor(serve) -> None:  # type: ignore[no-untyped-def]
    handled = Handled()
    server = await serve([event(1), handled.reached(1), b"id: 7\n\n"])
    async with ControlPlane(Config(base_url=server.url), "test") as client:
        stream = stream_for(client, handled)
        await asyncio.wait_for(stream.connect(NODE), 10)
    assert handled.ids == ["evt-1"]
    assert stream.last_event_id == "7"


async def test_an_oversized_event_alone_in_a_chunk_moves_the_cursor(serve) -> None:  # type: ignore[no-untyped-def]
    handled = Handled()
    oversized = b"id: 8\ndata: " + b"x" * 5000 + b"\n\n"
    server = await serve([event(1), handled.reached(1), oversized])
    async with ControlPlane(Config(base_url=server.url), "test") as client:
        stream = stream_for(client, handled, max_event_size=1000)
        await asyncio.wait_for(stream.connect(NODE), 10)
    assert handled.ids == ["evt-1"]
    assert stream.last_event_id == "8"


async def test_the_manager_resumes_after_an_id_only_block_that_came_alone(serve) -> None:  # type: ignore[no-untyped-def]
    handled = Handled()
    server = await serve(
        [event(1), handled.reached(1), b"id: 7\n\n"],
        [event(8)],
        hold=False,
    )
    async with ControlPlane(Config(base_url=server.url), "test") as client:
        manager = SSEManager(client)
        manager.set_reconnect_intervals(0.001, 0.01)

        def stop_at_two(envelope: SignedEnvelope) -> None:
            if len(handled.ids) == 2:
                manager.shutdown()

        manager.register_handler("peer_added", handled)
        manager.register_handler("peer_added", stop_at_two)
        await asyncio.wait_for(manager.start(NODE), 10)
    assert server.last_event_ids[:2] == [None, "7"]
    assert manager.last_event_id == "8"


# --- an unsendable id never stops the stream (item 4) ----------------------------------


@pytest.mark.parametrize(
    "bad_id",
    [
        pytest.param("a\x0bb", id="vertical-tab"),
        pytest.param("a\x7fb", id="DEL"),
        pytest.param("a\x1bb", id="escape"),
        pytest.param("9" * 5000, id="too-long"),
    ],
)
async def test_the_manager_resumes_from_the_last_sendable_id(  # type: ignore[no-untyped-def]
    serve, bad_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    handled = Handled()
    server = await serve(
        [event(1), event(2, bad_id), event(3, bad_id + "3")],  # then the server closes
        [event(4, "é-4")],
    )
    async with ControlPlane(Config(base_url=server.url), "test") as client:
        manager = SSEManager(client)
        manager.set_reconnect_intervals(0.001, 0.01)

        def stop_at_four(envelope: SignedEnvelope) -> None:
            if len(handled.ids) == 4:
                manager.shutdown()

        manager.register_handler("peer_added", handled)
        manager.register_handler("peer_added", stop_at_four)
        with caplog.at_level(logging.WARNING, logger="plexd.api"):
            await asyncio.wait_for(manager.start(NODE), 10)
    assert handled.ids == ["evt-1", "evt-2", "evt-3", "evt-4"]
    # the reconnection carried the last id a header can carry, and the stream went on
    assert server.last_event_ids[:2] == [None, "1"]
    assert manager.last_event_id == "é-4"
    # logged once (at WARNING), escaped, and cut if long
    warnings = [r for r in caplog.records if "cannot be sent as Last-Event-ID" in r.getMessage()]
    assert len(warnings) == 1
    assert repr(bad_id[:100]) in warnings[0].getMessage()


async def test_the_cursor_is_the_most_recent_sendable_id_however_it_was_set(serve) -> None:  # type: ignore[no-untyped-def]
    # A sendable id-only block between two events, then an unsendable id: the cursor is
    # the id-only block's, in one chunk as in many.
    handled = Handled()
    body = event(1) + b"id: 5\n\n" + event(2, "x\x01y")
    server = await serve([body])
    async with ControlPlane(Config(base_url=server.url), "test") as client:
        stream = stream_for(client, handled)
        await asyncio.wait_for(stream.connect(NODE), 10)
    assert handled.ids == ["evt-1", "evt-2"]
    assert stream.last_event_id == "5"


async def test_an_unsendable_cursor_given_to_the_stream_is_refused(serve) -> None:  # type: ignore[no-untyped-def]
    async with ControlPlane(Config(base_url="http://127.0.0.1:9"), "test") as client:
        stream = stream_for(client, Handled())
        with pytest.raises(ArgumentError, match="Last-Event-ID"):
            stream.last_event_id = "a\nb"
        stream.last_event_id = "ok\tfine"
        assert stream.last_event_id == "ok\tfine"
