"""Months in seconds: SSEManager against a scripted real loopback server, 30+ virtual days.

The manager runs for real (ControlPlane, aiohttp, SSE parsing, Ed25519 verification,
dispatch) against a real aiohttp server on 127.0.0.1; only its clock, sleep and jitter
are virtual. The server answers each request as a seeded weather script says: event
streams (signed events and forged or malformed ones) that stay up for hours of virtual
time then close or are cut, quiet streams, `retry:` lines, 429/503 with every kind of
Retry-After, 500s, cuts, wrong content types, flapping. Every request the server saw,
every wait and every poll goes into one trace, replayed through the model of
test_reconnect_months (the exact wait after each attempt, Retry-After deadlines,
polling on time, never a 0 wait); the resume cursor is checked at every request and
every signed event must reach the handler exactly once, in order.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from nacl.signing import SigningKey

from _virtual_time import DAY, DAYS, HOUR, Model, Outcome, Setup, Trace
from plexd.api import (
    MAX_RETRY_AFTER,
    Config,
    ConnectionState,
    ControlPlane,
    Ed25519Verifier,
    SignedEnvelope,
    SSEManager,
    envelope_json,
    sign_envelope,
)
from plexd.api.errors import (
    APIConnectionError,
    NotFoundError,
    RateLimitError,
    ServerError,
    SSEProtocolError,
)

SEED_KEY = bytes(range(32))
FORGING_KEY = bytes(32)
PUBLIC_KEY = SigningKey(SEED_KEY).verify_key.encode()
NODE = "node-1"
# The manager's waits and polls are virtual; only the loopback I/O takes real time.
REAL_TIME_GUARD = 60

# Retry-After header values and the wait they ask for (API.md: a past date is 0,
# unparsable is none, the wait is capped at an hour).
RETRY_AFTER_HEADERS: list[tuple[str | None, float]] = [
    (None, 0.0),
    ("0", 0.0),
    ("-5", 0.0),
    ("soon", 0.0),
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ("2", 2.0),
    ("45", 45.0),
    ("120", 120.0),
    ("1000000000000", MAX_RETRY_AFTER),
    ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER),
    ("9" * 400, MAX_RETRY_AFTER),
]
RETRY_LINES = [0, 1, 99, 250, 1000, 5000, 10**12]


@dataclass
class Log:
    """The server's event log: event n has SSE id n; some are forged or malformed."""

    events: list[bytes] = field(default_factory=list)
    signed: list[int] = field(default_factory=list)

    def append(self, rng: random.Random) -> None:
        n = len(self.events) + 1
        roll = rng.random()
        if roll < 0.8:
            envelope = sign_envelope(SEED_KEY, "peer_added", f"evt-{n}", {"n": n})
            data = envelope_json(envelope)
            self.signed.append(n)
        elif roll < 0.9:
            data = envelope_json(sign_envelope(FORGING_KEY, "peer_added", f"evt-{n}", {}))
        else:
            data = b'{"not": "an envelope"'
        self.events.append(b"id: %d\nevent: peer_added\ndata: %s\n\n" % (n, data))


Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ScriptedServer:
    """The control plane: answers each events request as the weather says, records
    everything into the trace, and checks the resume cursor of every request."""

    def __init__(self, seed: int, trace: Trace, ending: str) -> None:
        self.rng = random.Random(seed)
        self.trace = trace
        self.ending = ending
        self.log = Log()
        self.handled = 0  # the last event id the manager has certainly handled
        self.problems: list[str] = []
        self.manager: SSEManager | None = None
        self.finished = False
        self.phases = self.weather()
        self.requests = 0
        self.polls = 0

    # --- the weather ---

    def weather(self) -> list[tuple[float, Callable[[], Behaviour]]]:
        kinds: list[tuple[Callable[[], Behaviour], float, float]] = [
            (self.healthy, 6 * HOUR, 2 * DAY),
            (self.outage, 600, 3 * HOUR),
            (self.rate_limited, 300, 2 * HOUR),
            (self.flapping, 600, 3 * HOUR),
        ]
        phases, t = [], 0.0
        while t < DAYS * DAY:
            # Shuffled rounds: every kind of weather comes back again and again.
            for choose, shortest, longest in self.rng.sample(kinds, len(kinds)):
                t += self.rng.uniform(shortest, longest)
                phases.append((t, choose))
        return phases

    def next_behaviour(self) -> Behaviour:
        if self.trace.now >= DAYS * DAY:
            self.finished = True
            return self.final()
        for ends_at, choose in self.phases:
            if self.trace.now < ends_at:
                return choose()
        return self.healthy()

    def healthy(self) -> Behaviour:
        roll = self.rng.random()
        if roll < 0.7:
            stay = self.rng.uniform(600, 2 * DAY)
            retry = self.rng.choice(RETRY_LINES) if self.rng.random() < 0.15 else None
            return self.stream(self.rng.randint(1, 12), stay, retry, cut=self.rng.random() < 0.3)
        if roll < 0.9:
            return self.quiet(self.rng.uniform(60, 6 * HOUR))
        return self.flapping()

    def outage(self) -> Behaviour:
        return self.rng.choice(
            [self.cut_at_once, self.status(500), self.status(502), self.status(408), self.html]
        )

    def rate_limited(self) -> Behaviour:
        header, honoured = self.rng.choice(RETRY_AFTER_HEADERS)
        return self.status(self.rng.choice([429, 503]), header, honoured)

    def flapping(self) -> Behaviour:
        if self.rng.random() < 0.6:
            retry = self.rng.choice(RETRY_LINES) if self.rng.random() < 0.3 else None
            return self.stream(0, self.rng.uniform(0, 5), retry, cut=False)
        return self.quiet(self.rng.uniform(0, 59))

    # --- the answers ---

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        entries = self.trace.entries
        if entries and entries[-1][0] == "end":
            # The engine has not decided yet (it draws a jitter first): this is aiohttp
            # sending the request again on a fresh connection after a cut, in the same attempt.
            entries.pop()
        else:
            self.trace.add("start")
        self.check_cursor(request)
        behaviour = self.next_behaviour()
        return await behaviour(request)

    async def state(self, request: web.Request) -> web.StreamResponse:
        self.polls += 1
        self.trace.add("poll")
        self.trace.add("polled")
        return web.json_response({})

    def check_cursor(self, request: web.Request) -> None:
        sent = request.headers.get("Last-Event-ID")
        expected = str(self.handled) if self.handled else None
        if sent != expected:
            self.problems.append(f"request {self.requests}: Last-Event-ID {sent!r} != {expected}")

    def end(self, outcome: Outcome) -> None:
        self.trace.add("end", outcome)

    def status(self, code: int, header: str | None = None, honoured: float = 0.0) -> Behaviour:
        async def answer(request: web.Request) -> web.StreamResponse:
            headers = {} if header is None else {"Retry-After": header}
            error_type = RateLimitError if code == 429 else ServerError
            self.end(Outcome(error=error_type(code, "", retry_after=honoured)))
            return web.Response(status=code, text="busy", headers=headers)

        return answer

    async def html(self, request: web.Request) -> web.StreamResponse:
        self.end(Outcome(error=SSEProtocolError("text/html")))
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    async def cut_at_once(self, request: web.Request) -> web.StreamResponse:
        self.end(Outcome(error=APIConnectionError("cut")))
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    def quiet(self, stay: float) -> Behaviour:
        async def answer(request: web.Request) -> web.StreamResponse:
            response = await open_stream(request)
            await response.write(b": keep-alive\n\n")
            await self.connected_manager()
            self.trace.now += stay  # the stream stays up that long, in virtual time
            self.end(Outcome(connected=True, uptime=stay))
            return response

        return answer

    def stream(self, new: int, stay: float, retry: int | None, *, cut: bool) -> Behaviour:
        async def answer(request: web.Request) -> web.StreamResponse:
            response = await open_stream(request)
            if retry is not None:
                await response.write(b"retry: %d\n\n" % retry)
            for _ in range(new):
                self.log.append(self.rng)
            pending = self.log.events[self.handled :]
            await response.write(b"".join(pending))
            await self.connected_manager()
            if pending:
                # Wait (real time) until the manager handled them all, so that the
                # outcome is known whatever a cut does to bytes in flight.
                await self.handled_by_manager(len(self.log.events))
            self.trace.now += stay
            self.end(Outcome(connected=True, uptime=stay, events=len(pending), retry_ms=retry))
            if cut:
                await response.write(b"id: 999999\ndata: half an ev")
                assert request.transport is not None
                request.transport.abort()
            return response

        return answer

    async def connected_manager(self) -> None:
        # The manager notes the time it connected when the response head arrives: the
        # virtual time the stream stays up must pass after that, not before.
        assert self.manager is not None
        async with asyncio.timeout(5):
            while self.manager.state is not ConnectionState.CONNECTED:  # noqa: ASYNC110
                await asyncio.sleep(0.0005)

    async def handled_by_manager(self, last: int) -> None:
        assert self.manager is not None
        async with asyncio.timeout(5):
            # Skipped (forged, malformed) events reach no handler: watch the cursor.
            while self.manager.last_event_id != str(last):  # noqa: ASYNC110
                await asyncio.sleep(0.0005)
        self.handled = last

    def final(self) -> Behaviour:
        if self.ending == "not-found":
            return self.status(404)

        async def answer(request: web.Request) -> web.StreamResponse:
            # Everything not yet delivered, and a last event whose handler shuts down.
            response = await open_stream(request)
            self.log.append(self.rng)
            while self.log.signed[-1:] != [len(self.log.events)]:
                self.log.append(self.rng)
            await response.write(b"".join(self.log.events[self.handled :]))
            await asyncio.sleep(3600)  # cancelled at cleanup
            return response

        return answer


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    return response


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[ScriptedServer], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(server: ScriptedServer) -> str:
        app = web.Application()
        app.router.add_get(f"/v1/nodes/{NODE}/events", server.handle)
        app.router.add_get(f"/v1/nodes/{NODE}/state", server.state)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


class Handler:
    """Records the event ids handed to the handler; shuts down at the final event."""

    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.ids: list[int] = []

    def __call__(self, envelope: SignedEnvelope) -> None:
        n = int(envelope.event_id.removeprefix("evt-"))
        self.ids.append(n)
        manager = self.server.manager
        if self.server.finished and n == len(self.server.log.events) and manager is not None:
            manager.shutdown()


@pytest.mark.parametrize(
    ("seed", "ending"), [(1, "shutdown"), (2, "not-found"), (3, "shutdown"), (4, "shutdown")]
)
async def test_a_month_against_a_scripted_server_follows_the_rules(
    serve: Callable[[ScriptedServer], Awaitable[str]], seed: int, ending: str
) -> None:
    trace = Trace()
    server = ScriptedServer(seed, trace, ending)
    url = await serve(server)
    rng = random.Random(seed)

    async def virtual_sleep(delay: float) -> None:
        trace.add("sleep", delay)
        trace.now += delay
        await asyncio.sleep(0)

    def jitter() -> float:
        value = rng.uniform(0.75, 1.25)
        trace.add("jitter", value)
        return value

    silent = logging.getLogger("plexd.api.test.manager_months")
    silent.disabled = True  # thousands of failures: logging them would be most of the time
    config = Config(base_url=url, sse_idle_timeout=30)
    async with ControlPlane(config, "test", logger=silent) as client:
        manager = SSEManager(
            client,
            Ed25519Verifier(PUBLIC_KEY),
            silent,
            clock=lambda: trace.now,
            sleep=virtual_sleep,
            jitter=jitter,
        )
        server.manager = manager
        handler = Handler(server)
        manager.register_handler("peer_added", handler)
        async with asyncio.timeout(REAL_TIME_GUARD):  # a hang guard only
            if ending == "not-found":
                with pytest.raises(NotFoundError):  # the permanent error, and nothing else
                    await manager.start(NODE)
            else:
                assert await manager.start(NODE) is None
        assert manager.state is ConnectionState.DISCONNECTED

    assert server.finished, "start() ended before the script did"
    assert trace.now >= DAYS * DAY
    assert server.problems == []
    # Every signed event reached the handler exactly once, in order; nothing else did.
    if ending == "shutdown":
        assert handler.ids == server.log.signed
        assert manager.last_event_id == str(len(server.log.events))
    else:
        assert handler.ids == [n for n in server.log.signed if n <= server.handled]
        assert manager.last_event_id == str(server.handled)
    # The rules of API.md at every step (the defaults: 1 s, 60 s, poll after 300 s, every 60 s).
    model = Model(Setup())
    model.check(trace)
    assert server.polls > 10
    assert max(model.waits) >= MAX_RETRY_AFTER  # a Retry-After of 10**12 honoured as an hour
