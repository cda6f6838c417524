"""The connector under many TLS connections: shared read buffer, released write buffer,
and the queue for TLS connection set-ups."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, ClassVar

import pytest
from aiohttp import web

from plexd.api import (
    TLS_HANDSHAKE_LIMIT,
    APITimeoutError,
    Config,
    ControlPlane,
    set_tls_handshake_limit,
)
from plexd.api._transport import share_tls_read_buffer


@pytest.fixture
def handshake_limit() -> Iterator[None]:
    """Restores the default limit after a test that changes it."""
    yield
    set_tls_handshake_limit(TLS_HANDSHAKE_LIMIT)


def tls_client(url: str, context: ssl.SSLContext) -> ControlPlane:
    """A client of ``url`` with SSL ``context``, patient when connecting."""
    return ControlPlane(Config(base_url=url, connect_timeout=30), "1.2.3", ssl_context=context)


@contextlib.asynccontextmanager
async def pinging(
    tls_contexts: Any, url: str, count: int
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """``count`` clients of ``url`` (trusting the test CA) each pinging it in the background
    until the block ends; yields the pings."""
    clients = [tls_client(url, tls_contexts.client()) for _ in range(count)]
    pings = [asyncio.create_task(client.ping()) for client in clients]
    try:
        yield pings
    finally:
        for ping in pings:
            ping.cancel()
        await asyncio.gather(*pings, return_exceptions=True)
        for client in clients:
            await client.aclose()


def event_stream(
    release: asyncio.Event,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler that sends one event and keeps the stream open until ``release`` is set."""

    async def stream_one_event(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"id: 1\ndata: {}\n\n")
        await release.wait()
        return response

    return stream_one_event


# --- read buffer ----------------------------------------------------------------


async def test_tls_connections_of_one_loop_share_one_read_buffer(
    tls_contexts: Any, loopback: Any
) -> None:
    # asyncio would give every TLS connection its own 256 KiB read buffer.
    server = await loopback(ssl_context=tls_contexts.server())
    port = int(server.url.rsplit(":", 1)[1])
    streams = []
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls_contexts.client())
        share_tls_read_buffer(writer.transport)
        streams.append((reader, writer))
    buffers = {
        id(writer.transport._ssl_protocol._ssl_buffer)  # type: ignore[attr-defined]
        for _, writer in streams
    }
    for _, writer in streams:
        writer.write(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    # every connection still reads its own answer through the shared buffer
    replies = [await reader.read() for reader, _ in streams]
    for _, writer in streams:
        writer.close()
        await writer.wait_closed()
    assert len(buffers) == 1
    assert all(reply.startswith(b"HTTP/1.1 200") for reply in replies)


# --- write buffer ---------------------------------------------------------------


class RecordingSSLObject(ssl.SSLObject):
    """Records the size of every write made through the TLS object."""

    writes: ClassVar[list[int]] = []

    def write(self, data: Any) -> int:
        RecordingSSLObject.writes.append(len(data))
        return super().write(data)


async def test_an_event_stream_frees_the_tls_write_buffer_once_its_head_arrives(
    tls_contexts: Any, loopback: Any
) -> None:
    # The server's TLS 1.3 session tickets made OpenSSL set up a 16 KiB write buffer;
    # an event stream never writes again, so the client makes one empty write.
    context = tls_contexts.client()
    context.sslobject_class = RecordingSSLObject
    RecordingSSLObject.writes = []
    release = asyncio.Event()
    server = await loopback(event_stream(release), ssl_context=tls_contexts.server())
    async with (
        tls_client(server.url, context) as cp,
        cp.connect_sse("n1") as stream,
    ):
        first = await stream.read_chunk(5)
        release.set()
    assert RecordingSSLObject.writes[0] > 0  # the request
    assert RecordingSSLObject.writes[1:] == [0]
    assert b"id: 1" in first


# --- handshake queue ------------------------------------------------------------


async def test_tls_set_ups_to_one_server_wait_for_a_free_slot(
    silent_server: Any, tls_contexts: Any, handshake_limit: None
) -> None:
    set_tls_handshake_limit(2)
    async with pinging(tls_contexts, f"https://{silent_server.address}", 4):
        await silent_server.wait_for_accepted(2)
        await asyncio.sleep(0.2)  # room for a connection that should not come
        accepted_while_stalled = silent_server.accepted
    assert accepted_while_stalled == 2


async def test_a_stalled_server_does_not_hold_up_set_ups_to_another(
    silent_server: Any,
    tls_contexts: Any,
    loopback: Any,
    handshake_limit: None,
) -> None:
    set_tls_handshake_limit(1)
    healthy = await loopback(ssl_context=tls_contexts.server())
    async with (
        tls_client(healthy.url, tls_contexts.client()) as healthy_client,
        pinging(tls_contexts, f"https://{silent_server.address}", 1) as stuck,
    ):
        await silent_server.wait_for_accepted(1)
        await asyncio.wait_for(healthy_client.ping(), 10)
        assert not stuck[0].done()
    assert healthy.last.raw_path == "/v1/ping"


async def test_waiting_for_a_slot_counts_against_the_connect_timeout(
    silent_server: Any,
    tls_contexts: Any,
    handshake_limit: None,
) -> None:
    set_tls_handshake_limit(1)
    stalled = f"https://{silent_server.address}"
    async with pinging(tls_contexts, stalled, 1):
        await silent_server.wait_for_accepted(1)
        async with ControlPlane(
            Config(base_url=stalled, connect_timeout=0.2, request_timeout=30),
            "1.2.3",
            ssl_context=tls_contexts.client(),
        ) as waiter:
            with pytest.raises(APITimeoutError):
                await asyncio.wait_for(waiter.ping(), 10)
        accepted = silent_server.accepted
    assert accepted == 1  # the waiter never got to connect


async def test_a_limit_of_zero_lets_every_set_up_through_at_once(
    silent_server: Any, tls_contexts: Any, handshake_limit: None
) -> None:
    set_tls_handshake_limit(0)
    async with pinging(tls_contexts, f"https://{silent_server.address}", 4):
        await asyncio.wait_for(silent_server.wait_for_accepted(4), 10)
    assert silent_server.accepted == 4


def test_a_negative_handshake_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        set_tls_handshake_limit(-1)
