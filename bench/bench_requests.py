"""Heartbeat round trips through ControlPlane, beside raw aiohttp in the same run.

A local aiohttp.web server in another process (so client and server do not share
an event loop or a core) answers POST /v1/nodes/{id}/heartbeat. The same calls are
made sequentially and 16 at a time, once through ControlPlane.heartbeat (encode,
headers, error mapping, capped body read, typed decode) and once with a plain
aiohttp.ClientSession posting the same JSON bytes with the same headers and reading
the body. Rounds alternate between the two and the best round of each is shown.

    python bench/bench_requests.py [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection

import aiohttp
import msgspec
from aiohttp import web

from plexd.api import Config, ControlPlane, HeartbeatRequest, HeartbeatResponse, MeshInfo

NODE = "bench-node"
TOKEN = "bench-token"
VERSION = "bench"
CONCURRENCY = 16
TARGET_RATIO = 0.85
ANSWER = b'{"reconcile":false,"rotate_keys":false}'

Call = Callable[[], Awaitable[object]]


def serve(conn: Connection) -> None:
    """The server process: answer every heartbeat, report the port, run until killed."""

    async def heartbeat(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/nodes/{node_id}/heartbeat", heartbeat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        conn.send(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(main())


def heartbeat_request() -> HeartbeatRequest:
    return HeartbeatRequest(
        node_id=NODE,
        timestamp=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        status="healthy",
        uptime="72h0m0s",
        binary_checksum="sha256:" + "ab" * 32,
        mesh=MeshInfo(interface="plexd0", peer_count=12, listen_port=51820),
    )


async def rate(call: Call, calls: int, concurrency: int) -> float:
    """Calls per second for ``calls`` calls made ``concurrency`` at a time."""
    per_worker = calls // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return per_worker * concurrency / (time.perf_counter() - start)


async def measure(port: int, calls: int, rounds: int) -> dict[tuple[str, int], float]:
    base = f"http://127.0.0.1:{port}"
    request = heartbeat_request()
    body = msgspec.json.encode(request)  # the bytes ControlPlane sends
    headers = {
        "User-Agent": f"plexd/{VERSION}",
        "Accept": "application/json",
        "Accept-Encoding": "gzip",
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/json",
    }
    url = f"{base}/v1/nodes/{NODE}/heartbeat"
    best: dict[tuple[str, int], float] = {}
    async with ControlPlane(Config(base_url=base), VERSION) as cp, aiohttp.ClientSession() as raw:
        cp.set_auth_token(TOKEN)

        async def ours() -> HeartbeatResponse:
            return await cp.heartbeat(NODE, request)

        async def plain() -> bytes:
            async with raw.post(url, data=body, headers=headers) as response:
                return await response.read()

        assert await ours() == HeartbeatResponse()
        assert await plain() == ANSWER
        clients: dict[str, Call] = {"ours": ours, "raw": plain}
        for concurrency in (1, CONCURRENCY):
            for call in clients.values():  # warm-up: connections, caches
                await rate(call, calls // 10, concurrency)
            for round_number in range(rounds):
                # Alternate who goes first, so neither always runs on a warmer machine.
                order = list(clients.items())[:: 1 if round_number % 2 == 0 else -1]
                for name, call in order:
                    value = await rate(call, calls, concurrency)
                    key = (name, concurrency)
                    best[key] = max(best.get(key, 0.0), value)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per round and mode")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per client")
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=serve, args=(child,), daemon=True)
    server.start()
    try:
        port = parent.recv()
        best = asyncio.run(measure(port, args.calls, args.rounds))
    finally:
        server.terminate()
        server.join()

    print(
        f"heartbeat round trips, server in another process "
        f"({args.calls} calls a round, best of {args.rounds} alternating rounds)"
    )
    print(f"{'mode':<16}{'ours calls/s':>14}{'raw aiohttp calls/s':>22}{'ratio':>8}")
    ratios = []
    for concurrency in (1, CONCURRENCY):
        mode = "sequential" if concurrency == 1 else f"{concurrency} concurrent"
        ours, raw = best[("ours", concurrency)], best[("raw", concurrency)]
        ratios.append(ours / raw)
        print(f"{mode:<16}{ours:>14,.0f}{raw:>22,.0f}{ours / raw:>8.2f}")
    verdict = "met" if min(ratios) >= TARGET_RATIO else "NOT met"
    print(f"target: ours >= {TARGET_RATIO:.2f}x raw aiohttp in both modes: {verdict}")


if __name__ == "__main__":
    main()
