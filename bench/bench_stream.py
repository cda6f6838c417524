"""End to end: local server -> socket -> parse -> decode -> verify -> dispatch.

100,000 signed events from a server in another process (so client and server do
not share a core), consumed by an SSEManager with one counting handler: with
NoOpVerifier, with Ed25519Verifier on the event loop (``verify_threads=0``) and
with Ed25519Verifier on the verification threads (the default). Beside them, in
the same run: a bare single-thread libsodium verify loop over the same signed
messages (prepared in advance, the loop does nothing else), and the parse-only
rate. "CPU s" is the process's CPU time, "loop s" the event loop thread's (the
rest is the verification threads'). The variants run in rounds, interleaved, so
that load from elsewhere on the machine hits each alike; the best round of each
is reported.

Then the latency of one event on a quiet stream (one event every 5 ms, from the
server's write to the handler), p50 and p99, on the loop vs on the threads, in
interleaved rounds too.

    python bench/bench_stream.py [--events N] [--rounds N] [--quiet-events N]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from aiohttp import web

from _signed import PUBLIC, SEED, Timing, interleaved_rounds, signed_message
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
from plexd.api._pool import DEFAULT_VERIFY_THREADS
from plexd.api._sse import SSEParser

NODE = "bench-node"
QUIET = "quiet-node"
QUIET_EVERY = 0.005
CHUNK = 64 * 1024
# What the issue measured for Go's own client (plexd internal/api, go1.27, this machine).
GO_WITH_VERIFY = 24_800
GO_WITHOUT_VERIFY = 570_000


def make_event(n: int) -> bytes:
    """One event shaped like the real ones: a ~300-byte signed envelope."""
    payload = {"peer_id": f"peer-{n:06d}", "mesh_ip": "10.42.0.7", "endpoint": "203.0.113.9:51820"}
    envelope = sign_envelope(SEED, "peer_added", f"evt-{n}", payload)
    return b"id: %d\nevent: peer_added\ndata: %s\n\n" % (n, envelope_json(envelope))


def serve(count: int, quiet_count: int, conn: Connection) -> None:
    """The server process: the burst of ``count`` events for every client of NODE, and
    one event every QUIET_EVERY seconds for a client of QUIET (send times go back
    through ``conn``)."""
    body = b"".join(make_event(n) for n in range(1, count + 1))

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for start in range(0, len(body), 256 * 1024):
            await response.write(body[start : start + 256 * 1024])
        await asyncio.sleep(3600)
        return response

    async def quiet(request: web.Request) -> web.StreamResponse:
        quiet_events = [make_event(n) for n in range(1, quiet_count + 1)]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(0.2)
        sent = []
        for event in quiet_events:
            await asyncio.sleep(QUIET_EVERY)
            sent.append(time.perf_counter_ns())  # CLOCK_MONOTONIC: shared by processes
            await response.write(event)
        conn.send(sent)
        await asyncio.sleep(3600)
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get(f"/v1/nodes/{NODE}/events", events)
        app.router.add_get(f"/v1/nodes/{QUIET}/events", quiet)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send((runner.addresses[0][1], body))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await runner.cleanup()

    asyncio.run(main())


async def consume(
    url: str, node: str, count: int, verifier: EventVerifier, threads: int
) -> tuple[float, float, float, list[int]]:
    """Wall seconds, process CPU seconds, the event loop thread's CPU seconds and the
    receive times of ``count`` events."""
    received: list[int] = []
    async with ControlPlane(Config(base_url=url), "bench") as client:
        manager = SSEManager(client, verifier, verify_threads=threads)

        def handler(envelope: SignedEnvelope) -> None:
            received.append(time.perf_counter_ns())
            if len(received) == count:
                manager.shutdown()

        manager.register_handler("peer_added", handler)
        cpu, wall, loop_cpu = time.process_time(), time.perf_counter(), time.thread_time()
        await manager.start(node)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        loop_cpu = time.thread_time() - loop_cpu
    assert len(received) == count, len(received)
    return wall, cpu, loop_cpu, received


def signed_messages(body: bytes) -> list[bytes]:
    """Signature + signed message of every event, as libsodium's open takes them."""
    datas = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    messages = []
    for data in datas:
        messages.append(signed_message(parse_envelope(data)))
    return messages


def parse_only(body: bytes) -> tuple[int, float]:
    parser = SSEParser()
    start = time.perf_counter()
    events = 0
    for offset in range(0, len(body), CHUNK):
        events += len(parser.feed(body[offset : offset + CHUNK]))
    return events, time.perf_counter() - start


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quiet-events", type=int, default=200)
    args = parser.parse_args()
    count, quiet_count = args.events, args.quiet_events
    ours, theirs = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(count, quiet_count, theirs), daemon=True)
    server.start()
    port, body = ours.recv()
    url = f"http://127.0.0.1:{port}"
    messages = signed_messages(body)
    pooled = DEFAULT_VERIFY_THREADS

    def run(verifier: Callable[[], EventVerifier], threads: int) -> Callable[[], Timing]:
        return lambda: asyncio.run(consume(url, NODE, count, verifier(), threads))[:3]

    def ed25519() -> EventVerifier:
        return Ed25519Verifier(PUBLIC)

    variants = {
        "NoOpVerifier": run(NoOpVerifier, 0),
        "Ed25519, on the event loop": run(ed25519, 0),
        f"Ed25519, {pooled} thread(s) + the loop": run(ed25519, pooled),
    }
    latency: dict[str, list[float]] = {"on the event loop": [], "on the threads": []}
    try:
        best, all_rates = interleaved_rounds(args.rounds, variants, messages, count)
        for _ in range(args.rounds):
            for name, threads in (("on the event loop", 0), ("on the threads", pooled)):
                _, _, _, received = asyncio.run(
                    consume(url, QUIET, quiet_count, Ed25519Verifier(PUBLIC), threads)
                )
                sent = ours.recv()
                # The first events warm up the connection and the threads: not counted.
                latency[name] += [(r - s) / 1e6 for s, r in zip(sent, received, strict=True)][20:]
    finally:
        ours.send("stop")
        server.join(5)
    parsed, parse_seconds = parse_only(body)
    bare_rate = count / best["bare"][0]
    mb = len(body) / 1e6
    print(
        f"bench_stream: {count:,} signed events, {mb:.1f} MB, server in another process; "
        f"best of {args.rounds} interleaved rounds; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'variant':<48}{'events/s':>10}{'CPU s':>8}{'loop s':>8}{'wall s':>8}"
        f"{'vs bare':>9}{'vs Go':>8}"
    )
    for name in [*variants, "bare"]:
        wall, cpu, loop_cpu = best[name]
        rate = count / wall
        go = GO_WITHOUT_VERIFY if name == "NoOpVerifier" else GO_WITH_VERIFY
        label = "bare libsodium verify loop, 1 thread" if name == "bare" else "end to end, " + name
        print(
            f"{label:<48}{rate:>10,.0f}{cpu:>8.2f}{loop_cpu:>8.2f}{wall:>8.2f}"
            f"{rate / bare_rate:>8.2f}x{rate / go:>7.2f}x"
        )
    print(f"{'parse only (SSEParser.feed, 64 KiB chunks)':<48}{parsed / parse_seconds:>10,.0f}")
    print("every round (events/s): " + "; ".join(
        f"{name}: " + ", ".join(f"{rate:,.0f}" for rate in rates)
        for name, rates in all_rates.items()
    ))  # fmt: skip
    print(f"quiet stream, one event every {QUIET_EVERY * 1000:g} ms, server write -> handler:")
    for name, values in latency.items():
        print(
            f"  {name:<20} p50 {statistics.median(values):.3f} ms  "
            f"p99 {percentile(values, 0.99):.3f} ms  ({len(values)} events)"
        )
    p50 = statistics.median(latency["on the threads"]) - statistics.median(
        latency["on the event loop"]
    )
    p99 = percentile(latency["on the threads"], 0.99) - percentile(
        latency["on the event loop"], 0.99
    )
    print(f"  threads minus loop: p50 {p50:+.3f} ms, p99 {p99:+.3f} ms (target: <= +0.2 ms)")
    print(
        f"targets: verified end to end >= 1.3x the bare loop; Go (issue): {GO_WITH_VERIFY:,} "
        f"ev/s verified, {GO_WITHOUT_VERIFY:,} unverified"
    )


if __name__ == "__main__":
    main()
