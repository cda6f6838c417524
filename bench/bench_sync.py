"""Heartbeat calls per second through plexd.api.sync beside the asyncio API, same run.

The emulator runs in another process on loopback (so it shares neither an event loop
nor a core with the client). The same heartbeats are made one at a time and
``--threads`` at a time: through the asyncio ``ControlPlane`` (one ``asyncio.run``,
concurrent tasks) and through ``plexd.api.sync.ControlPlane`` from plain threads
(one shared client, the background loop thread doing the I/O). Rounds alternate
between the two; the best round of each is shown side by side, with the sync API's
overhead: the time it adds per call (or event) at the measured rates. Then the same
``--events`` events (published before, replayed from the start) go through an
``SSEManager`` with one counting handler: the asyncio one, and the sync one, whose
handler runs in the thread that called ``run``.

    python bench/bench_sync.py [--calls N] [--rounds R] [--threads T] [--events E]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection

from plexd.api import (
    Config,
    ControlPlane,
    HeartbeatRequest,
    MeshInfo,
    SignedEnvelope,
    SSEManager,
    sync,
)

VERSION = "bench"


def serve(conn: Connection, events: int) -> None:
    """The emulator process: register a node, publish ``events`` events to it, report
    url/node/token, run until killed."""
    from plexd.emulator import Emulator

    async def main() -> None:
        # The log keeps every event, so each round replays them all from the start.
        async with Emulator(max_events=max(events, 1)) as emulator:
            node_id, token = emulator.register_node("bench-node")
            emulator.publish_many(node_id, (("peer_added", {"n": n}) for n in range(events)))
            conn.send((emulator.url, node_id, token))
            await asyncio.Event().wait()

    asyncio.run(main())


def heartbeat_request(node_id: str) -> HeartbeatRequest:
    return HeartbeatRequest(
        node_id=node_id,
        timestamp=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        status="healthy",
        uptime="72h0m0s",
        binary_checksum="sha256:" + "ab" * 32,
        mesh=MeshInfo(interface="plexd0", peer_count=12, listen_port=51820),
    )


def async_rate(url: str, node_id: str, token: str, calls: int, concurrency: int) -> float:
    """Heartbeats per second through the asyncio client, ``concurrency`` tasks."""
    request = heartbeat_request(node_id)
    per_worker = calls // concurrency

    async def main() -> float:
        async with ControlPlane(Config(base_url=url), VERSION) as client:
            client.set_auth_token(token)
            await client.heartbeat(node_id, request)  # connect outside the timing

            async def worker() -> None:
                for _ in range(per_worker):
                    await client.heartbeat(node_id, request)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return per_worker * concurrency / (time.perf_counter() - start)

    return asyncio.run(main())


def sync_rate(url: str, node_id: str, token: str, calls: int, concurrency: int) -> float:
    """Heartbeats per second through the sync client, ``concurrency`` plain threads."""
    request = heartbeat_request(node_id)
    per_worker = calls // concurrency
    with sync.ControlPlane(Config(base_url=url), VERSION) as client:
        client.set_auth_token(token)
        client.heartbeat(node_id, request)

        def worker() -> None:
            for _ in range(per_worker):
                client.heartbeat(node_id, request)

        if concurrency == 1:
            start = time.perf_counter()
            worker()
        else:
            threads = [threading.Thread(target=worker) for _ in range(concurrency)]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        return per_worker * concurrency / (time.perf_counter() - start)


Measure = Callable[[str, str, str, int, int], float]


def counting(events: int, stop: Callable[[], None]) -> Callable[[SignedEnvelope], None]:
    """A handler that counts the events and calls ``stop`` at the ``events``-th."""
    seen = 0

    def count(envelope: SignedEnvelope) -> None:
        nonlocal seen
        seen += 1
        if seen == events:
            stop()

    return count


def async_events(url: str, node_id: str, token: str, events: int) -> float:
    """Events per second through the asyncio SSEManager, one counting handler."""

    async def main() -> float:
        async with ControlPlane(Config(base_url=url), VERSION) as client:
            client.set_auth_token(token)
            manager = SSEManager(client)
            manager.last_event_id = "0"  # replay from the start: published before
            manager.register_default_handler(counting(events, manager.shutdown))
            start = time.perf_counter()
            await manager.start(node_id)
            return events / (time.perf_counter() - start)

    return asyncio.run(main())


def sync_events(url: str, node_id: str, token: str, events: int) -> float:
    """Events per second through the sync SSEManager, the handler in this thread."""
    with sync.ControlPlane(Config(base_url=url), VERSION) as client:
        client.set_auth_token(token)
        manager = sync.SSEManager(client)
        manager.last_event_id = "0"  # replay from the start: published before
        manager.register_default_handler(counting(events, manager.shutdown))
        start = time.perf_counter()
        manager.run(node_id)
        return events / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()

    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(child, args.events), daemon=True)
    server.start()
    try:
        url, node_id, token = parent.recv()
        print(
            f"heartbeats against the emulator on loopback, {args.calls} calls per round, "
            f"best of {args.rounds} alternating rounds"
        )
        print(f"{'':>22} {'async':>12} {'sync':>12} {'sync/async':>11} {'overhead':>12}")
        for concurrency in (1, args.threads):
            best: dict[str, float] = {"async": 0.0, "sync": 0.0}
            measures: dict[str, Measure] = {"async": async_rate, "sync": sync_rate}
            for _ in range(args.rounds):
                for name, measure in measures.items():
                    rate = measure(url, node_id, token, args.calls, concurrency)
                    best[name] = max(best[name], rate)
            ratio = best["sync"] / best["async"]
            overhead_us = (1 / best["sync"] - 1 / best["async"]) * 1e6
            label = "one at a time" if concurrency == 1 else f"{concurrency} at a time"
            print(
                f"{label:>22} {best['async']:>8.0f}/s {best['sync']:>8.0f}/s "
                f"{ratio:>10.2f} {overhead_us:>+9.0f} us"
            )
        best_events = {"async": 0.0, "sync": 0.0}
        for _ in range(args.rounds):
            best_events["async"] = max(
                best_events["async"], async_events(url, node_id, token, args.events)
            )
            best_events["sync"] = max(
                best_events["sync"], sync_events(url, node_id, token, args.events)
            )
        ratio = best_events["sync"] / best_events["async"]
        overhead_us = (1 / best_events["sync"] - 1 / best_events["async"]) * 1e6
        print(
            f"{'SSEManager events':>22} {best_events['async']:>8.0f}/s "
            f"{best_events['sync']:>8.0f}/s {ratio:>10.2f} {overhead_us:>+9.0f} us"
        )
    finally:
        server.kill()
        server.join()


if __name__ == "__main__":
    main()
