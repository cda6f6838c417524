"""A fleet in one process: 200 SSEManagers on one event loop, one local server.

Each node has its own ControlPlane, Ed25519Verifier and SSEManager, and its own log
of signed events on a lean aiohttp server in another process; every node connects
at once and receives its whole log (the replay after an outage). Measured: total
verified events/s and the process's CPU, with the signatures checked on the event
loop (``verify_threads=0``) and on the verification threads (the default), in
interleaved rounds; beside them, a bare single-thread libsodium verify loop over
the same signed messages. "CPU s" is the process's CPU time, "loop s" the event
loop thread's (the rest is the verification threads'); "CPU use" is CPU s over wall
s (200% = both cores of a 2-CPU machine). At the end of every round each node must
have handled each of its events exactly once, in its order.

Where the time goes: with the GIL, a verification thread that finished a verify
waits for the interpreter while the loop runs Python, so the wall time is about the
loop's Python (the loop-only variant's CPU less the bare loop's) plus the verifying
shared by the loop and the threads; the benchmark prints that estimate beside the
measured time. ``--gil-waits`` adds a round that times every verify on the threads:
what a call took beyond its CPU time is the wait for the GIL after it.

    python bench/bench_fleet.py [--nodes N] [--events-per-node N] [--rounds N] [--gil-waits]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from aiohttp import web

from _signed import PUBLIC, SEED, Timing, interleaved_rounds, signed_message
from plexd.api import (
    Config,
    ControlPlane,
    Ed25519Verifier,
    SignedEnvelope,
    _verify,
    envelope_json,
    parse_envelope,
    sign_envelope,
)
from plexd.api._manager import SSEManager
from plexd.api._pool import DEFAULT_VERIFY_THREADS


def node_log(node: int, count: int) -> bytes:
    parts = []
    for n in range(1, count + 1):
        payload = {"peer_id": f"p-{n:06d}", "mesh_ip": "10.42.0.7", "endpoint": "203.0.113.9:51820"}
        envelope = sign_envelope(SEED, "peer_added", f"node{node}-evt-{n}", payload)
        parts.append(b"id: %d\nevent: peer_added\ndata: %s\n\n" % (n, envelope_json(envelope)))
    return b"".join(parts)


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(nodes: int, count: int, conn: Connection) -> None:
    raise_fd_limit()
    logs = {f"node-{i}": node_log(i, count) for i in range(nodes)}

    async def events(request: web.Request) -> web.StreamResponse:
        body = logs[request.match_info["node"]]
        after = int(request.headers.get("Last-Event-ID") or 0)
        if after:  # a reconnect: resume after the last handled event
            body = b"".join(body.split(b"\n\n")[after:])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for start in range(0, len(body), 64 * 1024):
            await response.write(body[start : start + 64 * 1024])
        await asyncio.sleep(3600)
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/v1/nodes/{node}/events", events)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        conn.send((runner.addresses[0][1], logs["node-0"]))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await runner.cleanup()

    asyncio.run(main())


async def fleet(url: str, nodes: int, count: int, threads: int) -> tuple[float, float, float]:
    """Wall, process CPU and event loop thread CPU seconds until every node handled its
    ``count`` events; checks that each did so exactly once and in order."""
    handled: dict[str, list[str]] = {}
    clients = [ControlPlane(Config(base_url=url), f"token-{i}") for i in range(nodes)]
    managers = []
    for i, client in enumerate(clients):
        node = f"node-{i}"
        manager = SSEManager(client, Ed25519Verifier(PUBLIC), verify_threads=threads)
        ids = handled[node] = []

        def handler(
            envelope: SignedEnvelope, ids: list[str] = ids, manager: SSEManager = manager
        ) -> None:
            ids.append(envelope.event_id)
            if len(ids) == count:
                manager.shutdown()

        manager.register_handler("peer_added", handler)
        managers.append((node, manager))
    cpu, wall, loop_cpu = time.process_time(), time.perf_counter(), time.thread_time()
    await asyncio.gather(*(manager.start(node) for node, manager in managers))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    loop_cpu = time.thread_time() - loop_cpu
    for client in clients:
        await client.aclose()
    for i in range(nodes):
        expected = [f"node{i}-evt-{n}" for n in range(1, count + 1)]
        assert handled[f"node-{i}"] == expected, f"node-{i}: not exactly once, in order"
    return wall, cpu, loop_cpu


def gil_waits(url: str, nodes: int, count: int, threads: int) -> tuple[float, list[float]]:
    """One round with every verify on a pool thread timed: the round's wall seconds, and
    per verify its wall time less its CPU time (the wait for the GIL after the call)."""
    waits: list[float] = []
    original = _verify._ed25519_valid
    loop_thread = threading.get_ident()

    def timed(signed: bytes, key: bytes) -> bool:
        if threading.get_ident() == loop_thread:
            return original(signed, key)
        wall, cpu = time.perf_counter(), time.thread_time()
        valid = original(signed, key)
        # The two clocks differ by a fraction of a microsecond: no wait is below zero.
        waits.append(max(0.0, (time.perf_counter() - wall) - (time.thread_time() - cpu)))
        return valid

    _verify._ed25519_valid = timed
    try:
        wall, _, _ = asyncio.run(fleet(url, nodes, count, threads))
    finally:
        _verify._ed25519_valid = original
    return wall, waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--events-per-node", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--gil-waits", action="store_true", help="one more round, timing the threads' verifies"
    )
    args = parser.parse_args()
    nodes, count = args.nodes, args.events_per_node
    total = nodes * count
    raise_fd_limit()
    ours, theirs = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(nodes, count, theirs), daemon=True)
    server.start()
    port, sample = ours.recv()
    url = f"http://127.0.0.1:{port}"
    datas = [line[6:] for line in sample.split(b"\n") if line.startswith(b"data: ")]
    envelopes = [parse_envelope(data) for data in datas]
    one_node = [signed_message(e) for e in envelopes]
    messages = (one_node * nodes)[:total]
    threads = DEFAULT_VERIFY_THREADS
    pooled_name = f"{threads} thread(s) + the loop"
    variants = {"on the event loop": 0, pooled_name: threads}

    def run(setting: int) -> Callable[[], Timing]:
        return lambda: asyncio.run(fleet(url, nodes, count, setting))

    try:
        runs = {name: run(setting) for name, setting in variants.items()}
        best, rounds = interleaved_rounds(args.rounds, runs, messages, total)
        waited = gil_waits(url, nodes, count, threads) if args.gil_waits and threads else None
    finally:
        ours.send("stop")
        server.join(5)
    bare_rate = total / best["bare"][0]
    inline_rate = total / best["on the event loop"][0]
    print(
        f"bench_fleet: {nodes} SSEManagers on one loop, {count} signed events each "
        f"({total:,} in all), server in another process; best of {args.rounds} interleaved "
        f"rounds; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'variant':<40}{'events/s':>10}{'CPU s':>8}{'loop s':>8}{'wall s':>8}{'CPU use':>9}"
        f"{'vs bare':>9}{'vs loop':>9}"
    )
    for name in variants:
        wall, cpu, loop_cpu = best[name]
        rate = total / wall
        print(
            f"{'fleet, ' + name:<40}{rate:>10,.0f}{cpu:>8.2f}{loop_cpu:>8.2f}{wall:>8.2f}"
            f"{cpu / wall:>8.0%}{rate / bare_rate:>8.2f}x{rate / inline_rate:>8.2f}x"
        )
    print(f"{'bare libsodium verify loop, 1 thread':<40}{bare_rate:>10,.0f}")
    print("every round (events/s): " + "; ".join(
        f"{name}: " + ", ".join(f"{rate:,.0f}" for rate in rates) for name, rates in rounds.items()
    ))  # fmt: skip
    print("exactly once and in order on every node, in every round: checked")
    bare_seconds = best["bare"][0]
    python_seconds = best["on the event loop"][2] - bare_seconds
    estimate = python_seconds + bare_seconds / (threads + 1)
    print(
        f"where the time goes: the loop's Python {python_seconds:.2f} s "
        f"({python_seconds / total * 1e6:.1f} us an event: the loop-only variant's loop s "
        f"less the bare loop's {bare_seconds:.2f} s); threads wait for the GIL while it runs, "
        f"so wall ~ Python + bare / {threads + 1} = {estimate:.2f} s "
        f"(measured {best[pooled_name][0]:.2f} s)"
    )
    if waited is not None:
        wall, waits = waited
        waits.sort()
        p50, p90, p99 = (waits[len(waits) * q // 100] * 1e6 for q in (50, 90, 99))
        print(
            f"GIL waits (one more round, {wall:.2f} s): {len(waits):,} verifies on the "
            f"threads waited {sum(waits):.2f} s in all for the GIL after the call; "
            f"p50 {p50:.0f} us, p90 {p90:.0f} us, p99 {p99:.0f} us"
        )
    print("target: the fleet >= 1.3x the bare loop")


if __name__ == "__main__":
    main()
