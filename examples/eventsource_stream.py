"""EventSource on any server-sent-events URL: print the first COUNT events (default 5)
of a public stream, reconnecting and resuming with Last-Event-ID across drops.

    python examples/eventsource_stream.py https://stream.wikimedia.org/v2/stream/recentchange 5
"""

from __future__ import annotations

import asyncio
import sys

from plexd.api import EventSource, SSEEvent


async def main(url: str, count: int) -> None:
    seen: list[SSEEvent] = []
    async with EventSource(
        url,
        read_timeout=60,  # reconnect when the server goes silent this long
        on_error=lambda error: print(f"reconnecting after: {error}", file=sys.stderr),
    ) as source:
        async for event in source:  # across reconnects, until we stop
            print(f"{event.type} id={event.id!r}: {event.data[:120]}")
            seen.append(event)
            if len(seen) == count:
                break  # leaving the block closes the connection
    print(f"{len(seen)} events; the next connection would resume after {source.last_event_id!r}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} URL [COUNT]")
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5))
