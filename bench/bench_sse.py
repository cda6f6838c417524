"""Server-sent events benchmark: our SSEParser side by side with other Python SSE parsers.

Run with ``python bench/bench_sse.py``. Each section is one function listed in SECTIONS;
main() runs them in order

Sections:

- parsers: 100,000 events shaped like the control plane's (``id: N``, ``event: message``,
  one ``data:`` line holding a ~300-byte SignedEnvelope JSON), fed in 64 KiB chunks from
  memory to each library's own parser, in the same run.
- long event: one event whose single data line is 4 MiB / 16 MiB, fed 1 KiB at a time
  (linear time: 16 MiB should take about 4x the 4 MiB time), and a 20 MiB line against
  the default 16 MiB bound (dropped without buffering it).
- end to end: EventSource consuming the 100,000-event stream from a local server in
  another process over loopback, beside launchdarkly-eventsource and httpx-sse consuming
  the same stream from the same server in the same run.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from plexd.api import SSEParser

EVENT_COUNT = 100_000
CHUNK_SIZE = 64 * 1024
LONG_EVENT_CHUNK_SIZE = 1024
MIB = 1024 * 1024
# Best of this many runs per parser: the machine may be shared, the minimum is the figure.
REPEATS = 7

# --------------------------------------------------------------------------- the stream


def envelope_json(index: int) -> str:
    """A SignedEnvelope as the control plane writes it (WIRE.md), about 300 bytes."""
    digest = hashlib.sha512(str(index).encode()).digest()
    envelope = {
        "event_type": "peer_added",
        "event_id": f"evt-{index:012d}",
        "issued_at": "2025-01-15T10:30:00.123456789Z",
        "nonce": digest[:16].hex(),
        "payload": {"peer_id": f"node-{index % 997:04d}", "endpoint": "203.0.113.7:51820"},
        "signature": base64.b64encode(digest).decode(),
    }
    return json.dumps(envelope, separators=(",", ":"))


def make_stream(count: int) -> bytes:
    return "".join(
        f"id: {i}\nevent: message\ndata: {envelope_json(i)}\n\n" for i in range(count)
    ).encode()


def chunked(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


# --------------------------------------------------------------------------- drivers
# Each takes the chunks and returns (number of events, data of the last event), driving
# the library's own parser on an in-memory byte iterator, as its client does on a socket.
# Every driver touches each event once (count it, read its data), as a consumer would.


def drive_plexd(chunks: list[bytes]) -> tuple[int, str]:
    parser = SSEParser()
    count = 0
    last = ""
    for chunk in chunks:
        for event in parser.feed(chunk):
            count += 1
            last = event.data
    return count, last


def drive_httpx_sse(chunks: list[bytes]) -> tuple[int, str]:
    # What EventSource.iter_sse does over httpx's Response.iter_text().
    from httpx_sse._decoders import SSEDecoder, SSELineDecoder

    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    line_decoder = SSELineDecoder()
    decoder = SSEDecoder()
    count = 0
    last = ""
    for chunk in chunks:
        for line in line_decoder.decode(text_decoder.decode(chunk)):
            event = decoder.decode(line.rstrip("\n"))
            if event is not None:
                count += 1
                last = event.data
    return count, last


def drive_sseclient(chunks: list[bytes]) -> tuple[int, str]:
    import sseclient

    count = 0
    last = ""
    for event in sseclient.SSEClient(iter(chunks)).events():
        count += 1
        last = event.data
    return count, last


def drive_launchdarkly(chunks: list[bytes]) -> tuple[int, str]:
    # What SSEClient does with the HTTP body: _BufferedLineReader then _SSEReader.
    from ld_eventsource.actions import Event
    from ld_eventsource.reader import _BufferedLineReader, _SSEReader

    reader = _SSEReader(_BufferedLineReader.lines_from(iter(chunks)))
    count = 0
    last = ""
    for item in reader.events_and_comments():
        if isinstance(item, Event):
            count += 1
            last = item.data
    return count, last


PARSERS: list[tuple[str, Callable[[list[bytes]], tuple[int, str]]]] = [
    ("plexd-api SSEParser", drive_plexd),
    ("launchdarkly-eventsource", drive_launchdarkly),
    ("httpx-sse", drive_httpx_sse),
    ("sseclient-py", drive_sseclient),
]


def best_times(runs: dict[str, Callable[[], object]], repeats: int = REPEATS) -> dict[str, float]:
    """The best time of each run; the runs take turns, so a burst of load from another
    process on the machine slows one round of all of them rather than one of them."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


# --------------------------------------------------------------------------- sections


def bench_parsers() -> None:
    """Events per second of each parser on the same bytes, and the ratio to the fastest peer."""
    body = make_stream(EVENT_COUNT)
    chunks = chunked(body, CHUNK_SIZE)
    expected = (EVENT_COUNT, envelope_json(EVENT_COUNT - 1))
    print(
        f"parsers: {EVENT_COUNT:,} events, {len(body) / EVENT_COUNT:.0f} bytes each "
        f"({len(body) / MIB:.1f} MiB), {CHUNK_SIZE // 1024} KiB chunks, best of {REPEATS}"
    )
    for name, drive in PARSERS:
        result = drive(chunks)
        if result != expected:
            raise SystemExit(f"{name} parsed {result[0]} events, or the wrong data")
    seconds = best_times({name: partial(drive, chunks) for name, drive in PARSERS})
    rates = {name: EVENT_COUNT / seconds[name] for name, _ in PARSERS}
    for name, _ in PARSERS:
        print(
            f"  {name:26s} {rates[name]:>12,.0f} events/s  "
            f"{len(body) / seconds[name] / MIB:>7.1f} MiB/s  {seconds[name] * 1000:>7.1f} ms"
        )
    ours = rates[PARSERS[0][0]]
    fastest_peer, peer_rate = max(
        ((name, rate) for name, rate in rates.items() if name != PARSERS[0][0]),
        key=lambda item: item[1],
    )
    print(f"  ratio to the fastest peer ({fastest_peer}): {ours / peer_rate:.2f}x")


def feed_long_line(total: int, max_event_size: int) -> tuple[float, int, int]:
    """Feed ``data: <total bytes>`` then a blank line, 1 KiB at a time; return the seconds,
    the events dispatched and the oversize reports."""
    oversizes: list[int] = []
    parser = SSEParser(max_event_size=max_event_size, on_oversize=oversizes.append)
    block = b"x" * LONG_EVENT_CHUNK_SIZE
    dispatched = 0
    start = time.perf_counter()
    parser.feed(b"data: ")
    for _ in range(total // LONG_EVENT_CHUNK_SIZE):
        parser.feed(block)
    dispatched += len(parser.feed(b"\n\n"))
    return time.perf_counter() - start, dispatched, len(oversizes)


def bench_long_event() -> None:
    """One long event fed in 1 KiB chunks: time, and linearity (16 MiB vs 4 MiB)."""
    print(f"long event: one data line fed {LONG_EVENT_CHUNK_SIZE} bytes per chunk")
    sizes = {f"{size_mib} MiB": size_mib * MIB for size_mib in (4, 16)}
    seconds = best_times(
        {name: partial(feed_long_line, total, 2 * total) for name, total in sizes.items()},
        repeats=3,
    )
    for name, total in sizes.items():
        elapsed, dispatched, _ = feed_long_line(total, 2 * total)
        assert dispatched == 1
        print(
            f"  {name:>6} event, dispatched:        {seconds[name] * 1000:>8.1f} ms  "
            f"{total / seconds[name] / MIB:>7.1f} MiB/s"
        )
    print(f"  16 MiB / 4 MiB time: {seconds['16 MiB'] / seconds['4 MiB']:.2f} (4.00 is linear)")
    elapsed, dispatched, oversizes = feed_long_line(20 * MIB, max_event_size=16 * MIB)
    assert dispatched == 0 and oversizes == 1
    print(f"  20 MiB line, default 16 MiB bound, dropped: {elapsed * 1000:>6.1f} ms")


# --------------------------------------------------------------- end to end over loopback

END_TO_END_REPEATS = 3


def serve_stream(body: bytes, conn: Connection) -> None:
    """A server process: every GET /stream gets ``body`` as text/event-stream, then idles."""
    import asyncio

    from aiohttp import web

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for start in range(0, len(body), CHUNK_SIZE):
            await response.write(body[start : start + CHUNK_SIZE])
        await asyncio.sleep(3600)
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/stream", stream)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send(runner.addresses[0][1])
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await runner.cleanup()

    asyncio.run(main())


def consume_eventsource(url: str) -> str:
    import asyncio

    from plexd.api import EventSource

    async def main() -> str:
        count = 0
        async with EventSource(url) as source:
            async for event in source:
                count += 1
                if count == EVENT_COUNT:
                    return event.data
        return ""

    return asyncio.run(main())


def consume_httpx_sse(url: str) -> str:
    import httpx
    from httpx_sse import connect_sse

    count = 0
    with httpx.Client(timeout=None) as client, connect_sse(client, "GET", url) as source:
        for event in source.iter_sse():
            count += 1
            if count == EVENT_COUNT:
                return event.data
    return ""


def consume_launchdarkly(url: str) -> str:
    from ld_eventsource import SSEClient
    from ld_eventsource.config import ConnectStrategy

    count = 0
    client = SSEClient(ConnectStrategy.http(url))
    try:
        for event in client.events:
            count += 1
            if count == EVENT_COUNT:
                return event.data
    finally:
        client.close()
    return ""


CLIENTS: list[tuple[str, Callable[[str], str]]] = [
    ("plexd-api EventSource", consume_eventsource),
    ("launchdarkly-eventsource", consume_launchdarkly),
    ("httpx-sse (httpx)", consume_httpx_sse),
]


def bench_end_to_end() -> None:
    """Each client consumes the same 100,000-event stream from one local server process."""
    import multiprocessing

    body = make_stream(EVENT_COUNT)
    ours, theirs = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve_stream, args=(body, theirs), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ours.recv()}/stream"
    try:
        expected = envelope_json(EVENT_COUNT - 1)
        for name, consume in CLIENTS:
            if consume(url) != expected:
                raise SystemExit(f"{name} did not deliver the stream intact")
        runs = {name: partial(consume, url) for name, consume in CLIENTS}
        seconds = best_times(runs, END_TO_END_REPEATS)
    finally:
        ours.send("stop")
        server.join(5)
    print(
        f"end to end over loopback: {EVENT_COUNT:,} events from a server process, "
        f"best of {END_TO_END_REPEATS}"
    )
    rates = {name: EVENT_COUNT / seconds[name] for name, _ in CLIENTS}
    for name, _ in CLIENTS:
        print(f"  {name:26s} {rates[name]:>12,.0f} events/s  {seconds[name] * 1000:>7.1f} ms")
    ours_rate = rates[CLIENTS[0][0]]
    peer, peer_rate = max(
        ((name, rate) for name, rate in rates.items() if name != CLIENTS[0][0]),
        key=lambda item: item[1],
    )
    print(f"  ratio to the fastest peer ({peer}): {ours_rate / peer_rate:.2f}x")


SECTIONS: list[Callable[[], None]] = [bench_parsers, bench_long_event, bench_end_to_end]


def main(sections: Iterable[Callable[[], None]] = SECTIONS) -> None:
    print(f"Python {sys.version.split()[0]}")
    for section in sections:
        section()
        print()


if __name__ == "__main__":
    main()
