"""Loopback servers for the client tests: real aiohttp.web apps on 127.0.0.1, ephemeral ports.

`serve(handler)` runs one handler for every method and path and records what it received:
the raw request line path (not decoded), the headers, and the body exactly as sent on the
wire (the server does not decompress it). The TLS helpers use trustme certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import cache
from typing import Any

import trustme
from aiohttp import web
from multidict import CIMultiDictProxy

from plexd.api import Config, ControlPlane

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    method: str
    raw_path: str
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclasses.dataclass
class Server:
    """A running loopback server."""

    url: str
    runner: web.AppRunner
    received: list[Received]

    @property
    def open_connections(self) -> int:
        """How many client connections the server still holds open."""
        server = self.runner.server
        assert server is not None
        return len(server.connections)

    @property
    def last(self) -> Received:
        """The most recent request."""
        return self.received[-1]


def client_for(target: Server | str, **config: Any) -> ControlPlane:
    """A ControlPlane (version 1.2.3) for a test server or a base URL; ``config`` as in Config."""
    url = target.url if isinstance(target, Server) else target
    return ControlPlane(Config(base_url=url, **config), "1.2.3")


async def empty_ok(request: web.Request) -> web.StreamResponse:
    """Answer every request with an empty JSON object."""
    return web.json_response({})


@contextlib.asynccontextmanager
async def serve(
    handler: Handler = empty_ok,
    *,
    ssl_context: ssl.SSLContext | None = None,
    read_body: bool = True,
) -> AsyncIterator[Server]:
    """Run ``handler`` for every request on 127.0.0.1; yields the :class:`Server`.

    With ``read_body`` the server reads the whole request body before calling the
    handler and records it; without, the handler reads it (or not) itself.
    """
    received: list[Received] = []

    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read() if read_body else b""
        received.append(Received(request.method, request.raw_path, request.headers, body))
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, auto_decompress=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context is not None else "http"
    try:
        yield Server(f"{scheme}://127.0.0.1:{port}", runner, received)
    finally:
        await runner.cleanup()


# --- TLS ------------------------------------------------------------------


@cache
def certificate_authority() -> trustme.CA:
    """The test CA; its leaf certificate is valid for 127.0.0.1."""
    return trustme.CA()


def server_tls() -> ssl.SSLContext:
    """A server context with a 127.0.0.1 certificate signed by the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority().issue_cert("127.0.0.1").configure_cert(context)
    return context


def client_tls_trusting_test_ca() -> ssl.SSLContext:
    """A verifying client context that trusts the test CA (and nothing else)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    certificate_authority().configure_trust(context)
    return context


# --- servers that misbehave below HTTP -------------------------------------


class SilentTCPServer:
    """Accepts TCP connections and never writes a byte (a TLS handshake never completes);
    counts the connections it accepted."""

    def __init__(self) -> None:
        self.address = ""
        self.accepted = 0
        self._accepted_changed = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []

    async def wait_for_accepted(self, count: int) -> None:
        """Return once ``count`` connections were accepted."""
        while self.accepted < count:
            self._accepted_changed.clear()
            await self._accepted_changed.wait()

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._accepted_changed.set()
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass


@contextlib.asynccontextmanager
async def silent_tcp_server() -> AsyncIterator[SilentTCPServer]:
    """A running :class:`SilentTCPServer` on 127.0.0.1 (``address`` is ``host:port``)."""
    silent = SilentTCPServer()
    server = await asyncio.start_server(silent._hold, "127.0.0.1", 0)
    silent.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield silent
    finally:
        for writer in silent._writers:
            writer.close()
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def raw_response_server(response: bytes) -> AsyncIterator[str]:
    """Reads a request's head, writes ``response`` verbatim, then closes. Yields ``host:port``."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@contextlib.contextmanager
def full_backlog_listener() -> Iterator[str]:
    """A listening socket whose accept queue is full, so a new SYN is dropped and a
    connect attempt hangs (Linux drops SYNs to a listener with a full queue).

    Yields ``host:port``.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        # A backlog of 0 still queues one connection; a few more fill it for sure.
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            with contextlib.suppress(BlockingIOError):
                filler.connect(address)
        yield f"{address[0]}:{address[1]}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
