"""End to end: local server -> socket -> parse -> decode -> verify -> dispatch.

100,000 signed events from a server in another process (so client and server do
not share a core), consumed by an SSEManager with one counting handler, once with
NoOpVerifier and once with Ed25519Verifier. Printed beside the parse-only and
verify-only rates of the same events measured in this run, so the cost of each
stage is visible.

    python bench/bench_stream.py [--events N]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from multiprocessing.connection import Connection

from aiohttp import web
from nacl.signing import SigningKey

from plexd.api import (
    Config,
    ControlPlane,
    Ed25519Verifier,
    EventVerifier,
    NoOpVerifier,
    SignedEnvelope,
    envelope_json,
    parse_envelope,
    sign_envelope,
)
from plexd.api._manager import SSEManager
from plexd.api._sse import SSEParser

SEED = bytes(range(32))
NODE = "bench-node"
CHUNK = 64 * 1024
# What the issue measured for Go's own client (plexd internal/api, go1.27, this machine).
GO_WITH_VERIFY = 24_800
GO_WITHOUT_VERIFY = 570_000


def make_stream(count: int) -> bytes:
    """``count`` events shaped like the real ones: ~300-byte signed envelopes."""
    parts = []
    for n in range(1, count + 1):
        payload = {
            "peer_id": f"peer-{n:06d}",
            "mesh_ip": "10.42.0.7",
            "endpoint": "203.0.113.9:51820",
        }
        envelope = sign_envelope(SEED, "peer_added", f"evt-{n}", payload)
        parts.append(b"id: %d\nevent: peer_added\ndata: %s\n\n" % (n, envelope_json(envelope)))
    return b"".join(parts)


def serve(count: int, conn: Connection) -> None:
    """The server process: build the stream once, then send it to every client."""
    body = make_stream(count)

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for start in range(0, len(body), 256 * 1024):
            await response.write(body[start : start + 256 * 1024])
        await asyncio.sleep(3600)
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get(f"/v1/nodes/{NODE}/events", events)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send((runner.addresses[0][1], body))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await runner.cleanup()

    asyncio.run(main())


async def consume(url: str, count: int, verifier: EventVerifier) -> tuple[float, float]:
    """Wall seconds and process CPU seconds to receive ``count`` events."""
    received = 0
    async with ControlPlane(Config(base_url=url), "bench") as client:
        manager = SSEManager(client, verifier)

        def handler(envelope: SignedEnvelope) -> None:
            nonlocal received
            received += 1
            if received == count:
                manager.shutdown()

        manager.register_handler("peer_added", handler)
        cpu, wall = time.process_time(), time.perf_counter()
        await manager.start(NODE)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert received == count, received
    return wall, cpu


def parse_only(body: bytes) -> tuple[int, float]:
    parser = SSEParser()
    start = time.perf_counter()
    events = 0
    for offset in range(0, len(body), CHUNK):
        events += len(parser.feed(body[offset : offset + CHUNK]))
    return events, time.perf_counter() - start


def verify_only(body: bytes, sample: int) -> float:
    """Seconds per event for parse_envelope + Ed25519 verify (no I/O, no SSE)."""
    datas = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")][:sample]
    verifier = Ed25519Verifier(SigningKey(SEED).verify_key.encode())

    async def run() -> float:
        start = time.perf_counter()
        for data in datas:
            await verifier.verify(parse_envelope(data))
        return time.perf_counter() - start

    return asyncio.run(run()) / len(datas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    count = args.events
    ours, theirs = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(count, theirs), daemon=True)
    server.start()
    port, body = ours.recv()
    url = f"http://127.0.0.1:{port}"
    try:
        results = {}
        for name, verifier in (("NoOpVerifier", NoOpVerifier()), ("Ed25519Verifier", None)):
            if verifier is None:
                verifier = Ed25519Verifier(SigningKey(SEED).verify_key.encode())
            results[name] = asyncio.run(consume(url, count, verifier))
    finally:
        ours.send("stop")
        server.join(5)
    parsed, parse_seconds = parse_only(body)
    per_verify = verify_only(body, min(count, 20_000))
    mb = len(body) / 1e6
    print(f"bench_stream: {count:,} signed events, {mb:.1f} MB, server in another process")
    print(f"{'stage':<44}{'events/s':>12}{'CPU s':>8}{'vs Go':>8}")
    for name, (wall, cpu) in results.items():
        rate = count / wall
        go = GO_WITHOUT_VERIFY if name == "NoOpVerifier" else GO_WITH_VERIFY
        print(f"{'end to end, ' + name:<44}{rate:>12,.0f}{cpu:>8.2f}{rate / go:>7.2f}x")
    print(f"{'parse only (SSEParser.feed, 64 KiB chunks)':<44}{parsed / parse_seconds:>12,.0f}")
    print(f"{'verify only (parse_envelope + Ed25519)':<44}{1 / per_verify:>12,.0f}")
    print(
        f"Go reference (issue): {GO_WITH_VERIFY:,} ev/s verified, {GO_WITHOUT_VERIFY:,} unverified"
    )
    print(f"targets: >= 20,000 ev/s verified, >= 170,000 unverified (cpu count {os.cpu_count()})")


if __name__ == "__main__":
    main()
