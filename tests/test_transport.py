"""The connector under many TLS connections: shared read buffer, released write buffer,
and the queue for TLS connection set-ups."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pytest
from aiohttp import web

from _servers import (
    Handler,
    Server,
    client_tls_trusting_test_ca,
    serve,
    server_tls,
    silent_tcp_server,
)
from plexd.api import APITimeoutError, Config, ControlPlane
from plexd.api._transport import (
    TLS_HANDSHAKE_LIMIT,
    set_tls_handshake_limit,
    share_tls_read_buffer,
)


@pytest.fixture
def handshake_limit() -> Iterator[None]:
    """Restores the default limit after a test that changes it."""
    yield
    set_tls_handshake_limit(TLS_HANDSHAKE_LIMIT)


def tls_client(server: Server | str, context: ssl.SSLContext | None = None) -> ControlPlane:
    """A client trusting the test CA (or using ``context``), patient when connecting."""
    url = server.url if isinstance(server, Server) else server
    return ControlPlane(
        Config(base_url=url, connect_timeout=30),
        "1.2.3",
        ssl_context=context or client_tls_trusting_test_ca(),
    )


@contextlib.asynccontextmanager
async def pinging(url: str, count: int) -> AsyncIterator[list[asyncio.Task[None]]]:
    """``count`` clients of ``url`` each pinging it in the background until the block ends;
    yields the pings."""
    clients = [tls_client(url) for _ in range(count)]
    pings = [asyncio.create_task(client.ping()) for client in clients]
    try:
        yield pings
    finally:
        for ping in pings:
            ping.cancel()
        await asyncio.gather(*pings, return_exceptions=True)
        for client in clients:
            await client.aclose()


def event_stream(release: asyncio.Event) -> Handler:
    """A handler that sends one event and keeps the stream open until ``release`` is set."""

    async def stream_one_event(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"id: 1\ndata: {}\n\n")
        await release.wait()
        return response

    return stream_one_event


# --- read buffer ----------------------------------------------------------------


async def test_tls_connections_of_one_loop_share_one_read_buffer() -> None:
    # asyncio would give every TLS connection its own 256 KiB read buffer.
    async with serve(ssl_context=server_tls()) as server:
        port = int(server.url.rsplit(":", 1)[1])
        streams = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_tls_trusting_test_ca()
            )
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


async def test_an_event_stream_frees_the_tls_write_buffer_once_its_head_arrives() -> None:
    # The server's TLS 1.3 session tickets made OpenSSL set up a 16 KiB write buffer;
    # an event stream never writes again, so the client makes one empty write.
    context = client_tls_trusting_test_ca()
    context.sslobject_class = RecordingSSLObject
    RecordingSSLObject.writes = []
    release = asyncio.Event()
    async with (
        serve(event_stream(release), ssl_context=server_tls()) as server,
        tls_client(server, context) as cp,
        cp.connect_sse("n1") as stream,
    ):
        first = await stream.read_chunk(5)
        release.set()
    assert RecordingSSLObject.writes[0] > 0  # the request
    assert RecordingSSLObject.writes[1:] == [0]
    assert b"id: 1" in first


# --- handshake queue ------------------------------------------------------------


async def test_tls_set_ups_to_one_server_wait_for_a_free_slot(handshake_limit: None) -> None:
    set_tls_handshake_limit(2)
    async with silent_tcp_server() as stalled, pinging(f"https://{stalled.address}", 4):
        await stalled.wait_for_accepted(2)
        await asyncio.sleep(0.2)  # room for a connection that should not come
        accepted_while_stalled = stalled.accepted
    assert accepted_while_stalled == 2


async def test_a_stalled_server_does_not_hold_up_set_ups_to_another(
    handshake_limit: None,
) -> None:
    set_tls_handshake_limit(1)
    async with (
        silent_tcp_server() as stalled,
        serve(ssl_context=server_tls()) as healthy,
        tls_client(healthy) as healthy_client,
        pinging(f"https://{stalled.address}", 1) as stuck,
    ):
        await stalled.wait_for_accepted(1)
        await asyncio.wait_for(healthy_client.ping(), 10)
        assert not stuck[0].done()
    assert healthy.last.raw_path == "/v1/ping"


async def test_waiting_for_a_slot_counts_against_the_connect_timeout(
    handshake_limit: None,
) -> None:
    set_tls_handshake_limit(1)
    async with silent_tcp_server() as stalled, pinging(f"https://{stalled.address}", 1):
        await stalled.wait_for_accepted(1)
        async with ControlPlane(
            Config(base_url=f"https://{stalled.address}", connect_timeout=0.2, request_timeout=30),
            "1.2.3",
            ssl_context=client_tls_trusting_test_ca(),
        ) as waiter:
            with pytest.raises(APITimeoutError):
                await asyncio.wait_for(waiter.ping(), 10)
        accepted = stalled.accepted
    assert accepted == 1  # the waiter never got to connect


async def test_a_limit_of_zero_lets_every_set_up_through_at_once(handshake_limit: None) -> None:
    set_tls_handshake_limit(0)
    async with silent_tcp_server() as stalled, pinging(f"https://{stalled.address}", 4):
        await asyncio.wait_for(stalled.wait_for_accepted(4), 10)
    assert stalled.accepted == 4


def test_a_negative_handshake_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        set_tls_handshake_limit(-1)
