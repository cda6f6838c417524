"""Resident memory per idle TLS event stream.

1,000 SSEManagers in one process, all started at once, each with its own
ControlPlane holding an idle TLS stream to a local server (in another process)
that only sends keep-alive comments. Prints the resident memory each stream
costs, beside the same streams opened with plain aiohttp defaults (a
ClientSession per node, default TLS context). The README ("Many nodes in one
process") says what is tuned.

    python bench/bench_memory.py [--streams N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import resource
import ssl
import tempfile
from multiprocessing.connection import Connection

import aiohttp
import trustme
from aiohttp import web

from plexd.api import Config, ControlPlane
from plexd.api._manager import SSEManager
from plexd.api._reconnect import ConnectionState

NODE = "idle-node"
KEEPALIVE_EVERY = 5.0
TARGET_KIB = 64


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def serve(cert_dir: str, tickets: bool, conn: Connection) -> None:
    raise_fd_limit()

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        try:
            await response.prepare(request)
            while True:
                await response.write(b":\n")
                await asyncio.sleep(KEEPALIVE_EVERY)
        except ConnectionError:
            # The client left (the benchmark closes 1,000 streams at once): not an error
            # of the server's, so no traceback from aiohttp for each.
            return response

    async def main() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(os.path.join(cert_dir, "server.pem"))
        if not tickets:
            context.num_tickets = 0
        app = web.Application()
        app.router.add_get(f"/v1/nodes/{NODE}/events", events)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context, backlog=2048)
        await site.start()
        conn.send(runner.addresses[0][1])
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await runner.cleanup()

    asyncio.run(main())


async def plexd_streams(url: str, ca: ssl.SSLContext, count: int) -> float:
    """KiB of RSS per idle stream held by an SSEManager."""
    clients, managers, tasks = [], [], []
    connected = 0
    all_connected = asyncio.Event()

    def state_changed(state: ConnectionState) -> None:
        nonlocal connected
        if state is ConnectionState.CONNECTED:
            connected += 1
            if connected == count:
                all_connected.set()

    gc.collect()
    before = rss_bytes()
    for _ in range(count):
        client = ControlPlane(Config(base_url=url), "bench", ssl_context=ca)
        manager = SSEManager(client, on_state_change=state_changed)
        clients.append(client)
        managers.append(manager)
        tasks.append(asyncio.create_task(manager.start(NODE)))
    await asyncio.wait_for(all_connected.wait(), 120)
    await asyncio.sleep(1)
    gc.collect()
    per_stream = (rss_bytes() - before) / count / 1024
    for manager in managers:
        manager.shutdown()
    await asyncio.gather(*tasks)
    for client in clients:
        await client.aclose()
    return per_stream


async def aiohttp_streams(url: str, ca_file: str, count: int) -> float:
    """KiB of RSS per idle stream opened with aiohttp's defaults, one session per node."""
    sessions, responses = [], []
    gc.collect()
    before = rss_bytes()
    for _ in range(count):
        context = ssl.create_default_context(cafile=ca_file)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        sessions.append(session)
    for session in sessions:
        response = await session.get(f"{url}/v1/nodes/{NODE}/events")
        await response.content.readany()
        responses.append(response)
    await asyncio.sleep(1)
    gc.collect()
    per_stream = (rss_bytes() - before) / count / 1024
    for response in responses:
        response.close()
    for session in sessions:
        await session.close()
    return per_stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument(
        "--no-tickets",
        action="store_true",
        help="the server sends no TLS 1.3 session tickets (each costs the client memory)",
    )
    args = parser.parse_args()
    raise_fd_limit()
    authority = trustme.CA()
    with tempfile.TemporaryDirectory() as cert_dir:
        authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
            os.path.join(cert_dir, "server.pem")
        )
        ca_file = os.path.join(cert_dir, "ca.pem")
        authority.cert_pem.write_to_path(ca_file)
        ours, theirs = multiprocessing.Pipe()
        server = multiprocessing.Process(
            target=serve, args=(cert_dir, not args.no_tickets, theirs), daemon=True
        )
        server.start()
        port = ours.recv()
        url = f"https://127.0.0.1:{port}"
        try:
            ca = ssl.create_default_context(cafile=ca_file)
            plexd = asyncio.run(plexd_streams(url, ca, args.streams))
            baseline = asyncio.run(aiohttp_streams(url, ca_file, args.streams))
        finally:
            ours.send("stop")
            server.join(5)
    tickets = "no session tickets" if args.no_tickets else "TLS 1.3 session tickets on"
    print(f"bench_memory: {args.streams:,} idle TLS event streams in one process ({tickets})")
    print(f"{'client':<48}{'KiB/stream':>12}")
    print(f"{'plexd-api SSEManager (one ControlPlane each)':<48}{plexd:>12.1f}")
    print(f"{'aiohttp defaults (one session + TLS context each)':<48}{baseline:>12.1f}")
    print(f"target: at most {TARGET_KIB} KiB per idle TLS stream")


if __name__ == "__main__":
    main()
