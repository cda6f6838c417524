"""SSEStream and SSEManager end to end against local aiohttp servers, verification on."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from nacl.signing import SigningKey

from plexd.api import (
    Config,
    ConnectionState,
    ControlPlane,
    Ed25519Verifier,
    EventDispatcher,
    SignedEnvelope,
    SSEManager,
    SSEStream,
    envelope_json,
    sign_envelope,
)
from plexd.api.errors import (
    ArgumentError,
    ClientClosedError,
    ForbiddenError,
    PlexdError,
    UnauthorizedError,
)

SEED = bytes(range(32))
PUBLIC_KEY = SigningKey(SEED).verify_key.encode()
NODE = "node-1"
EVENTS_PATH = f"/v1/nodes/{NODE}/events"


def signed_event(n: int, event_type: str = "peer_added") -> bytes:
    envelope = sign_envelope(SEED, event_type, f"evt-{n}", {"n": n, "pad": "x" * 40})
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (n, event_type.encode(), envelope_json(envelope))


Behaviour = Callable[[web.Request, "EventServer"], Awaitable[web.StreamResponse]]


@dataclass
class EventServer:
    """A control plane's events endpoint: a log of SSE events replayed after Last-Event-ID.

    Each request is answered by the next behaviour of ``script`` (then ``default``).
    """

    log: list[bytes] = field(default_factory=list)
    script: list[Behaviour] = field(default_factory=list)
    default: Behaviour | None = None
    last_event_ids: list[str | None] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.last_event_ids.append(request.headers.get("Last-Event-ID"))
        behaviour = self.script.pop(0) if self.script else self.default or serve_log()
        return await behaviour(request, self)

    def pending(self, request: web.Request) -> bytes:
        after = int(request.headers.get("Last-Event-ID") or 0)
        return b"".join(self.log[after:])


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    return response


def serve_log(cut_at: int | None = None, then_wait: float = 3600) -> Behaviour:
    """Send the events after Last-Event-ID; with ``cut_at``, abort after that many bytes."""

    async def behaviour(request: web.Request, server: EventServer) -> web.StreamResponse:
        response = await open_stream(request)
        body = server.pending(request)
        if cut_at is not None:
            await response.write(body[:cut_at])
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write(body)
        await asyncio.sleep(then_wait)
        return response

    return behaviour


def answer(status: int) -> Behaviour:
    async def behaviour(request: web.Request, server: EventServer) -> web.StreamResponse:
        return web.Response(status=status, text="no")

    return behaviour


@pytest.fixture
async def event_server() -> AsyncIterator[EventServer]:
    server = EventServer()
    app = web.Application()
    app.router.add_get(EVENTS_PATH, server.handle)

    async def state(request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get(f"/v1/nodes/{NODE}/state", state)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


@pytest.fixture
async def client(event_server: EventServer) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(Config(base_url=event_server.url, sse_idle_timeout=5), "test") as cp:
        yield cp


def fast_manager(client: ControlPlane, **kwargs: object) -> SSEManager:
    manager = SSEManager(client, Ed25519Verifier(PUBLIC_KEY), **kwargs)  # type: ignore[arg-type]
    manager.set_reconnect_intervals(0.001, 0.01)
    return manager


class Collector:
    """A handler that records event ids and stops the manager after ``expected`` events."""

    def __init__(self, manager: SSEManager, expected: int) -> None:
        self.ids: list[str] = []
        self.manager = manager
        self.expected = expected

    def __call__(self, envelope: SignedEnvelope) -> None:
        self.ids.append(envelope.event_id)
        if len(self.ids) >= self.expected:
            self.manager.shutdown()


# --- the never-lose-an-event guarantee ----------------------------------------------


async def test_every_event_once_and_in_order_across_50_random_cuts(
    event_server: EventServer, client: ControlPlane
) -> None:
    total = 2000
    event_server.log = [signed_event(n) for n in range(1, total + 1)]
    size = sum(map(len, event_server.log))
    rng = random.Random(20261130)
    # Cuts at random byte offsets: mid-line, mid-event, mid-UTF-8, anywhere.
    event_server.script = [serve_log(cut_at=rng.randrange(1, size // 40)) for _ in range(50)]
    manager = fast_manager(client)
    collector = Collector(manager, total)
    manager.register_handler("peer_added", collector)
    await asyncio.wait_for(manager.start(NODE), 60)
    assert collector.ids == [f"evt-{n}" for n in range(1, total + 1)]
    assert len(event_server.last_event_ids) == 51
    assert manager.last_event_id == str(total)
    # every reconnect resumed exactly after the last handled event
    assert all(value is not None for value in event_server.last_event_ids[1:])


async def test_last_event_id_survives_restarts_of_the_manager(
    event_server: EventServer, client: ControlPlane
) -> None:
    event_server.log = [signed_event(n) for n in range(1, 4)]
    manager = fast_manager(client)
    collector = Collector(manager, 3)
    manager.register_handler("peer_added", collector)
    await asyncio.wait_for(manager.start(NODE), 10)
    assert manager.last_event_id == "3"


# --- idle timeout -------------------------------------------------------------------


async def test_stalled_server_triggers_the_idle_timeout_and_a_reconnect(
    event_server: EventServer, caplog: pytest.LogCaptureFixture
) -> None:
    event_server.log = [signed_event(1)]

    async def stall(request: web.Request, server: EventServer) -> web.StreamResponse:
        response = await open_stream(request)
        await asyncio.sleep(3600)
        return response

    event_server.script = [stall]
    config = Config(base_url=event_server.url, sse_idle_timeout=0.3)
    async with ControlPlane(config, "test") as cp:
        manager = fast_manager(cp)
        manager.register_handler("peer_added", Collector(manager, 1))
        await asyncio.wait_for(manager.start(NODE), 10)
    assert len(event_server.last_event_ids) == 2
    assert "SSEIdleTimeoutError" in caplog.text


async def test_keep_alive_comments_reset_the_idle_timer(event_server: EventServer) -> None:
    event_server.log = [signed_event(1)]

    async def slow_keepalives(request: web.Request, server: EventServer) -> web.StreamResponse:
        response = await open_stream(request)
        for _ in range(8):  # 0.8 s of keep-alives against a 0.3 s idle timeout
            await response.write(b":\n")
            await asyncio.sleep(0.1)
        await response.write(server.pending(request))
        await asyncio.sleep(3600)
        return response

    event_server.script = [slow_keepalives]
    config = Config(base_url=event_server.url, sse_idle_timeout=0.3)
    async with ControlPlane(config, "test") as cp:
        manager = fast_manager(cp)
        manager.register_handler("peer_added", Collector(manager, 1))
        await asyncio.wait_for(manager.start(NODE), 10)
    assert len(event_server.last_event_ids) == 1


# --- skipping bad events without disconnecting ---------------------------------------


async def test_malformed_and_unverifiable_events_are_skipped_without_disconnect(
    event_server: EventServer, client: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    forged = sign_envelope(bytes(32), "peer_added", "evt-forged", {"evil": True})
    event_server.log = [
        signed_event(1),
        b"id: 2\ndata: {not json\n\n",
        b'id: 3\ndata: {"event_type":"peer_added"}\n\n',
        b"id: 4\ndata: " + envelope_json(forged) + b"\n\n",
        signed_event(5),
    ]
    manager = fast_manager(client)
    collector = Collector(manager, 2)
    manager.register_handler("peer_added", collector)
    with caplog.at_level(logging.WARNING, logger="plexd.api"):
        await asyncio.wait_for(manager.start(NODE), 10)
    assert collector.ids == ["evt-1", "evt-5"]
    assert len(event_server.last_event_ids) == 1
    assert manager.last_event_id == "5"
    skipped = [r for r in caplog.records if "skipping" in r.getMessage()]
    assert [getattr(r, "sse_id", None) for r in skipped] == ["2", "3", "4"]


async def test_a_forged_event_cannot_forge_a_log_line(
    event_server: EventServer, client: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    # Not signed by the control plane: its type and id are anyone's words.
    forged = sign_envelope(bytes(32), "peer\nCRITICAL forged", "e\x1b[2J", {"evil": True})
    event_server.log = [b"id: 1\ndata: " + envelope_json(forged) + b"\n\n", signed_event(2)]
    manager = fast_manager(client)
    manager.register_handler("peer_added", Collector(manager, 1))
    with caplog.at_level(logging.DEBUG, logger="plexd.api"):
        await asyncio.wait_for(manager.start(NODE), 10)
    assert any("unverifiable" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        assert record.getMessage().isprintable(), record.getMessage()


async def test_oversized_event_is_logged_and_skipped(
    event_server: EventServer, client: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    event_server.log = [
        signed_event(1),
        b"id: 2\ndata: " + b"y" * 5000 + b"\n\n",
        signed_event(3),
    ]
    ids: list[str] = []
    stream = SSEStream(
        client, Ed25519Verifier(PUBLIC_KEY), EventDispatcher(), 5, max_event_size=4096
    )
    stream._dispatcher.register("peer_added", lambda env: ids.append(env.event_id))
    event_server.script = [serve_log(then_wait=0)]
    with caplog.at_level(logging.ERROR, logger="plexd.api"):
        await asyncio.wait_for(stream.connect(NODE), 10)
    assert ids == ["evt-1", "evt-3"]
    assert stream.last_event_id == "3"
    assert any("larger than 4096" in r.getMessage() for r in caplog.records)


async def test_stream_sends_last_event_id_on_the_next_connect(
    event_server: EventServer, client: ControlPlane
) -> None:
    event_server.log = [signed_event(n) for n in range(1, 4)]
    event_server.script = [serve_log(then_wait=0), serve_log(then_wait=0)]
    stream = SSEStream(client, Ed25519Verifier(PUBLIC_KEY), EventDispatcher(), 5)
    await stream.connect(NODE)
    assert stream.last_event_id == "3"
    event_server.log.append(signed_event(4))
    await stream.connect(NODE)
    assert event_server.last_event_ids == [None, "3"]
    assert stream.last_event_id == "4"


async def test_handler_time_does_not_count_as_idle(
    event_server: EventServer,
) -> None:
    event_server.log = [signed_event(1), signed_event(2)]
    config = Config(base_url=event_server.url, sse_idle_timeout=0.2)
    async with ControlPlane(config, "test") as cp:
        manager = fast_manager(cp)
        collector = Collector(manager, 2)

        async def slow(envelope: SignedEnvelope) -> None:
            await asyncio.sleep(0.5)
            collector(envelope)

        manager.register_handler("peer_added", slow)
        await asyncio.wait_for(manager.start(NODE), 10)
    assert collector.ids == ["evt-1", "evt-2"]


# --- stopping -----------------------------------------------------------------------


async def test_unauthorized_calls_the_callback_and_raises(
    event_server: EventServer, client: ControlPlane
) -> None:
    event_server.default = answer(401)
    manager = fast_manager(client)
    calls: list[str] = []
    manager.set_on_auth_failure(lambda: calls.append("auth"))
    with pytest.raises(UnauthorizedError):
        await asyncio.wait_for(manager.start(NODE), 5)
    assert calls == ["auth"]
    assert manager.state is ConnectionState.DISCONNECTED


async def test_forbidden_raises_at_once(event_server: EventServer, client: ControlPlane) -> None:
    event_server.default = answer(403)
    with pytest.raises(ForbiddenError):
        await asyncio.wait_for(fast_manager(client).start(NODE), 5)
    assert len(event_server.last_event_ids) == 1


async def test_server_errors_and_wrong_content_type_are_retried(
    event_server: EventServer, client: ControlPlane
) -> None:
    async def plain(request: web.Request, server: EventServer) -> web.StreamResponse:
        return web.Response(text="hello")

    event_server.log = [signed_event(1)]
    event_server.script = [answer(500), answer(503), plain]
    manager = fast_manager(client)
    manager.register_handler("peer_added", Collector(manager, 1))
    await asyncio.wait_for(manager.start(NODE), 10)
    assert len(event_server.last_event_ids) == 4


class StateLog(list[ConnectionState]):
    """Records state changes; ``reached(state)`` waits until a state was entered."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def __call__(self, state: ConnectionState) -> None:
        self.append(state)
        self._changed.set()

    async def reached(self, state: ConnectionState) -> None:
        async def wait() -> None:
            while state not in self:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), 5)


@pytest.mark.parametrize(
    "target",
    [ConnectionState.CONNECTING, ConnectionState.CONNECTED, ConnectionState.BACKOFF],
)
async def test_shutdown_from_each_state_returns_promptly(
    event_server: EventServer, client: ControlPlane, target: ConnectionState
) -> None:
    async def hang(request: web.Request, server: EventServer) -> web.StreamResponse:
        await asyncio.sleep(3600)  # never answers: the client stays CONNECTING
        return web.Response()

    event_server.default = {
        ConnectionState.CONNECTING: hang,
        ConnectionState.CONNECTED: serve_log(),
        ConnectionState.BACKOFF: answer(503),
    }[target]
    states = StateLog()
    manager = SSEManager(client, on_state_change=states)
    manager.set_reconnect_intervals(30, 60)  # a long backoff, cut short by shutdown
    task = asyncio.create_task(manager.start(NODE))
    await states.reached(target)
    loop = asyncio.get_running_loop()
    started = loop.time()
    manager.shutdown()
    assert await asyncio.wait_for(task, 1) is None
    assert loop.time() - started < 0.5
    assert manager.state is ConnectionState.DISCONNECTED


async def test_shutdown_while_polling_returns_promptly(
    event_server: EventServer, client: ControlPlane
) -> None:
    event_server.default = answer(503)
    polled = asyncio.Event()

    async def poll() -> None:
        polled.set()
        await asyncio.sleep(3600)

    manager = SSEManager(client)
    manager.set_reconnect_intervals(0.001, 0.001)
    manager.set_polling_fallback(0.0, 60)
    manager.set_poll_func(poll)
    task = asyncio.create_task(manager.start(NODE))
    await asyncio.wait_for(polled.wait(), 5)
    assert manager.state is ConnectionState.POLLING
    manager.shutdown()
    assert await asyncio.wait_for(task, 1) is None


async def test_default_poll_fetches_state(event_server: EventServer, client: ControlPlane) -> None:
    event_server.default = answer(503)
    states = StateLog()
    manager = SSEManager(client, on_state_change=states)
    manager.set_reconnect_intervals(0.001, 0.001)
    manager.set_polling_fallback(0.0, 0.01)
    task = asyncio.create_task(manager.start(NODE))
    await states.reached(ConnectionState.POLLING)
    await asyncio.sleep(0.1)
    manager.shutdown()
    await asyncio.wait_for(task, 1)
    assert states.count(ConnectionState.POLLING) >= 2


async def test_shutdown_during_a_handler_keeps_the_event_for_replay(
    event_server: EventServer, client: ControlPlane
) -> None:
    event_server.log = [signed_event(1), signed_event(2)]
    manager = fast_manager(client)
    entered = asyncio.Event()

    async def blocking(envelope: SignedEnvelope) -> None:
        if envelope.event_id == "evt-2":
            entered.set()
            await asyncio.sleep(3600)

    manager.register_handler("peer_added", blocking)
    task = asyncio.create_task(manager.start(NODE))
    await asyncio.wait_for(entered.wait(), 5)
    manager.shutdown()
    assert await asyncio.wait_for(task, 1) is None
    assert manager.last_event_id == "1"  # event 2 was not finished: it will be replayed


async def test_cancelling_start_propagates(event_server: EventServer, client: ControlPlane) -> None:
    event_server.default = serve_log()
    states = StateLog()
    manager = SSEManager(client, on_state_change=states)
    task = asyncio.create_task(manager.start(NODE))
    await states.reached(ConnectionState.CONNECTED)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_manager_follows_signing_key_rotation(
    event_server: EventServer, client: ControlPlane
) -> None:
    new_seed = bytes(range(1, 33))
    new_public = base64.b64encode(SigningKey(new_seed).verify_key.encode()).decode()
    old_public = base64.b64encode(PUBLIC_KEY).decode()
    rotation = sign_envelope(
        SEED,
        "signing_key_rotated",
        "evt-rot",
        {
            "current": new_public,
            "previous": old_public,
            "transition_expires": "2099-01-01T00:00:00Z",
        },
    )
    after = sign_envelope(new_seed, "peer_added", "evt-new", {"n": 2})
    event_server.log = [
        signed_event(1),
        b"id: 2\nevent: signing_key_rotated\ndata: " + envelope_json(rotation) + b"\n\n",
        b"id: 3\nevent: peer_added\ndata: " + envelope_json(after) + b"\n\n",
        signed_event(4),  # the previous key is still valid during the transition
    ]
    manager = fast_manager(client)
    collector = Collector(manager, 3)
    manager.register_handler("peer_added", collector)
    await asyncio.wait_for(manager.start(NODE), 10)
    assert collector.ids == ["evt-1", "evt-new", "evt-4"]


async def test_shutdown_from_a_sync_handler_stops_before_the_next_event(
    event_server: EventServer, client: ControlPlane
) -> None:
    event_server.log = [signed_event(n) for n in range(1, 6)]  # all in one chunk
    manager = fast_manager(client)
    seen: list[str] = []

    def handler(envelope: SignedEnvelope) -> None:
        seen.append(envelope.event_id)
        manager.shutdown()

    manager.register_handler("peer_added", handler)
    await asyncio.wait_for(manager.start(NODE), 5)
    assert seen == ["evt-1"]
    assert manager.last_event_id == "1"  # events 2..5 are replayed on the next start


async def test_shutdown_from_the_last_handler_of_a_batch_does_not_wait_for_bytes(
    event_server: EventServer, client: ControlPlane
) -> None:
    event_server.log = [signed_event(1)]  # then the server stays silent
    manager = fast_manager(client)
    manager.register_handler("peer_added", lambda envelope: manager.shutdown())
    await asyncio.wait_for(manager.start(NODE), 1)
    assert manager.last_event_id == "1"
    await asyncio.sleep(0.05)  # no stray cancellation reaches the caller afterwards


# --- issue 11: classification, Retry-After, hostile retry:, settings ----------------


async def test_start_on_a_closed_client_raises_at_once(event_server: EventServer) -> None:
    # Every PlexdError was transient: a closed client backed off forever (1, 2, 4 ... 60 s).
    async with ControlPlane(Config(base_url=event_server.url), "test") as cp:
        pass
    manager = SSEManager(cp)
    with pytest.raises(ClientClosedError):
        await asyncio.wait_for(manager.start(NODE), 5)
    assert manager.state is ConnectionState.DISCONNECTED
    assert event_server.last_event_ids == []


class BrokenVerifier:
    """A verifier a user wrote, with a bug: every verify raises KeyError."""

    async def verify(self, envelope: SignedEnvelope) -> None:
        raise KeyError("missing key in the user's table")


async def test_a_bug_in_a_user_verifier_surfaces_as_a_plexd_error(
    event_server: EventServer,
) -> None:
    event_server.log.append(signed_event(1))
    async with ControlPlane(Config(base_url=event_server.url), "test") as cp:
        manager = SSEManager(cp, BrokenVerifier())
        with pytest.raises(PlexdError) as raised:
            await asyncio.wait_for(manager.start(NODE), 5)
    assert "unexpected KeyError" in str(raised.value)
    assert isinstance(raised.value.__cause__, KeyError)  # the original stays reachable
    assert len(event_server.last_event_ids) == 1  # a bug is not retried


class VirtualTime:
    """The manager's clock and sleep on virtual time; records every wait."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.waits.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def answer_with_retry_after(status: int, retry_after: str) -> Behaviour:
    async def behaviour(request: web.Request, server: EventServer) -> web.StreamResponse:
        return web.Response(status=status, text="busy", headers={"Retry-After": retry_after})

    return behaviour


def virtual_manager(client: ControlPlane, time: VirtualTime) -> SSEManager:
    manager = SSEManager(
        client, Ed25519Verifier(PUBLIC_KEY), clock=time.clock, sleep=time.sleep, jitter=lambda: 1.0
    )
    manager.set_polling_fallback(10**6, 60)
    return manager


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_of_429_and_503_is_honoured(
    event_server: EventServer, client: ControlPlane, status: int
) -> None:
    event_server.log = [signed_event(1)]
    event_server.script = [
        answer_with_retry_after(status, "2"),
        answer_with_retry_after(status, "0"),
        answer_with_retry_after(status, "Thu, 01 Jan 1970 00:00:00 GMT"),  # past: 0
        answer_with_retry_after(status, "-7"),  # unparsable: none
        answer_with_retry_after(status, "1000000000000"),
    ]
    time = VirtualTime()
    manager = virtual_manager(client, time)
    manager.register_handler("peer_added", Collector(manager, 1))
    await asyncio.wait_for(manager.start(NODE), 10)
    # max(backoff, Retry-After): 2 beats 1; then the backoff 2, 4, 8; an hour at most.
    assert time.waits == [2, 2, 4, 8, 3600]
    assert len(event_server.last_event_ids) == 6


async def test_a_server_retry_of_zero_does_not_make_a_hot_loop(
    event_server: EventServer, client: ControlPlane
) -> None:
    async def retry_zero_then_close(
        request: web.Request, server: EventServer
    ) -> web.StreamResponse:
        response = await open_stream(request)
        await response.write(b"retry: 0\n\n")
        return response

    event_server.log = [signed_event(1)]
    event_server.script = [retry_zero_then_close] * 5
    time = VirtualTime()
    manager = virtual_manager(client, time)
    manager.register_handler("peer_added", Collector(manager, 1))
    await asyncio.wait_for(manager.start(NODE), 10)
    # 100 ms counts for 0 from the first wait on (retry: arrives before the close), doubling.
    assert time.waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])


@pytest.mark.parametrize(
    ("base", "maximum"), [(-1, 60), (float("nan"), 60), (1, float("nan")), (10, 5)]
)
def test_set_reconnect_intervals_refuses_nonsense(
    client: ControlPlane, base: float, maximum: float
) -> None:
    manager = SSEManager(client)
    with pytest.raises(ArgumentError):
        manager.set_reconnect_intervals(base, maximum)
    manager.set_reconnect_intervals(0, 0)  # reconnecting at once is the caller's choice


@pytest.mark.parametrize(
    ("after", "interval"), [(-1, 60), (float("nan"), 60), (300, 0), (300, float("inf"))]
)
def test_set_polling_fallback_refuses_nonsense(
    client: ControlPlane, after: float, interval: float
) -> None:
    manager = SSEManager(client)
    with pytest.raises(ArgumentError):
        manager.set_polling_fallback(after, interval)
    manager.set_polling_fallback(0, 0.01)
