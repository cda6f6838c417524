"""Loopback servers for the client tests, as fixtures: real servers on 127.0.0.1, ephemeral
ports, stopped when the test ends.

- ``loopback``: ``server = await loopback(handler, ssl_context=None)`` runs an aiohttp
  ``handler`` for every method and path (an empty JSON object by default) and records what
  it received: the raw request line path (not decoded), the headers, and the body exactly
  as sent on the wire (the server does not decompress it). ``server.client(**config)`` is a
  ControlPlane (version 1.2.3) of it.
- ``serve_loopback``: the same server as an async context manager, for a server that must
  stop before the test ends or run on another event loop.
- ``tls_contexts``: ``.server()`` and ``.client()`` make SSL contexts of one test CA
  (trustme); its leaf certificates are valid for 127.0.0.1.
- ``silent_server``: accepts TCP connections and never writes a byte.
- ``raw_server``: ``address = await raw_server(response)`` answers every request with
  ``response`` verbatim.
- ``full_backlog``: the address of a listener whose accept queue is full.
- ``proxy``: a :class:`ForwardProxy` (plain HTTP and CONNECT) that records each request.

Tests annotate these fixtures ``Any``: their shapes are the classes below.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import trustme
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from plexd.api import Config, ControlPlane

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Config fields that make a test client's retries quick: the rules stay, the waits shrink.
TINY_RETRY_WAITS: dict[str, Any] = {"retry_base_delay": 0.001, "retry_max_delay": 0.004}


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

    def client(self, **config: Any) -> ControlPlane:
        """A ControlPlane (version 1.2.3) of this server; ``config`` as in Config.

        Retries wait at most a few milliseconds unless ``config`` says otherwise (a
        Retry-After the server sends is still honoured).
        """
        config = {**TINY_RETRY_WAITS, **config}
        return ControlPlane(Config(base_url=self.url, **config), "1.2.3")


async def empty_ok(request: web.Request) -> web.StreamResponse:
    """Answer every request with an empty JSON object."""
    return web.json_response({})


@contextlib.asynccontextmanager
async def serve(
    handler: Handler = empty_ok, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    """Run ``handler`` for every request on 127.0.0.1, once the request's body is read and
    recorded; yields the :class:`Server`."""
    received: list[Received] = []

    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read()
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


@pytest.fixture
async def loopback() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """``await loopback(handler=empty_ok, *, ssl_context=None)`` starts a :class:`Server`;
    every server started stops when the test ends, the last started first."""
    async with contextlib.AsyncExitStack() as servers:

        async def start(
            handler: Handler = empty_ok, *, ssl_context: ssl.SSLContext | None = None
        ) -> Server:
            return await servers.enter_async_context(serve(handler, ssl_context=ssl_context))

        yield start


@pytest.fixture
def serve_loopback() -> Callable[..., contextlib.AbstractAsyncContextManager[Server]]:
    """``async with serve_loopback(handler=empty_ok, *, ssl_context=None) as server``: a
    :class:`Server` that runs for the block only."""
    return serve


# --- TLS ------------------------------------------------------------------


class TLSContexts:
    """SSL contexts of one test CA; every call makes a new context."""

    def __init__(self) -> None:
        self._authority = trustme.CA()

    def server(self) -> ssl.SSLContext:
        """A server context with a 127.0.0.1 certificate signed by the test CA."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._authority.issue_cert("127.0.0.1").configure_cert(context)
        return context

    def client(self) -> ssl.SSLContext:
        """A verifying client context that trusts the test CA (and nothing else)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._authority.configure_trust(context)
        return context


@pytest.fixture(scope="session")
def tls_contexts() -> TLSContexts:
    """The test CA's contexts (one CA for the whole session: making it is slow)."""
    return TLSContexts()


# --- servers that misbehave below HTTP -------------------------------------


class SilentTCPServer:
    """Accepts TCP connections and never writes a byte (a TLS handshake never completes);
    counts the connections it accepted. ``address`` is ``host:port``."""

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


@pytest.fixture
async def silent_server() -> AsyncIterator[SilentTCPServer]:
    """A running :class:`SilentTCPServer` on 127.0.0.1."""
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


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[bytes], Awaitable[str]]]:
    """``address = await raw_server(response)`` starts a server that reads a request's head,
    writes ``response`` verbatim and closes; ``address`` is ``host:port``. The servers stop
    when the test ends."""
    async with contextlib.AsyncExitStack() as servers:

        async def start(response: bytes) -> str:
            return await servers.enter_async_context(raw_response_server(response))

        yield start


@pytest.fixture
def full_backlog() -> Iterator[str]:
    """``host:port`` of a listening socket whose accept queue is full, so a new SYN is
    dropped and a connect attempt hangs (Linux drops SYNs to a listener with a full queue)."""
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


# --- a forward proxy ------------------------------------------------------------------------


class ForwardProxy:
    """An HTTP forward proxy on 127.0.0.1: absolute-form requests are passed on as they
    are, CONNECT opens a tunnel. ``seen`` holds each request's head as received."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            self.seen.append(head.decode("latin-1"))
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                url = URL(target)
                up_reader, up_writer = await asyncio.open_connection(url.host, url.port)
                up_writer.write(head)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        writer.close()

    @property
    def requests(self) -> list[str]:
        """The request line of each request the proxy received."""
        return [head.split("\r\n", 1)[0] for head in self.seen]


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    forward = ForwardProxy()
    server = await asyncio.start_server(forward.handle, "127.0.0.1", 0)
    forward.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield forward
    finally:
        server.close()
        await server.wait_closed()
