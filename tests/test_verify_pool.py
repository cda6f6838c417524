"""Verification on worker threads (issue 16): the split checks decide exactly as the
inline ones, the pool's threads never outlive their last user, and events stay
exactly-once and in order with the pool on, under cuts, shutdowns and cancellation."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import nacl.signing
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from plexd.api import (
    Config,
    ControlPlane,
    Ed25519Verifier,
    EventDispatcher,
    SignedEnvelope,
    SSEManager,
    SSEStream,
    envelope_json,
    sign_envelope,
)
from plexd.api._pool import VERIFY_POOL, WorkerPool, default_threads
from plexd.api._verify import UNCHECKED, check_signatures
from plexd.api.errors import ArgumentError, VerificationError

SEED = bytes(range(32))
SEED_NEW = bytes(range(32, 64))
PUBLIC = bytes(nacl.signing.SigningKey(SEED).verify_key)
PUBLIC_NEW = bytes(nacl.signing.SigningKey(SEED_NEW).verify_key)
NODE = "node-1"
T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("plexd-verify")]


# --- the split checks decide as verify_sync ----------------------------------------------


def split_verdict(verifier: Ed25519Verifier, envelope: SignedEnvelope) -> str | None:
    message = verifier.signed_message(envelope)
    keys = verifier.keys
    outcomes = bytearray(1)
    check_signatures([message], keys, outcomes, 0, 1)
    try:
        verifier.finish_check(envelope, outcomes[0], keys)
    except VerificationError as exc:
        return str(exc)
    return None


def inline_verdict(verifier: Ed25519Verifier, envelope: SignedEnvelope) -> str | None:
    try:
        verifier.verify_sync(envelope)
    except VerificationError as exc:
        return str(exc)
    return None


def mutate(envelope: SignedEnvelope, how: str) -> None:
    if how == "no signature":
        envelope.signature = ""
    elif how == "no nonce":
        envelope.nonce = ""
    elif how == "bad base64":
        envelope.signature = "!" + envelope.signature[1:]
    elif how == "short signature":
        envelope.signature = base64.b64encode(b"x" * 63).decode()
    elif how == "unpadded signature":
        envelope.signature = envelope.signature.rstrip("=")
    elif how == "flipped signature":
        raw = bytearray(base64.b64decode(envelope.signature))
        raw[5] ^= 1
        envelope.signature = base64.b64encode(bytes(raw)).decode()
    elif how == "changed payload":
        envelope.payload = envelope.payload.__class__(b'{"n":-1}')


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["old", "new", "other"]),
            st.sampled_from(
                [
                    "",
                    "no signature",
                    "no nonce",
                    "bad base64",
                    "short signature",
                    "unpadded signature",
                    "flipped signature",
                    "changed payload",
                ]
            ),
            st.integers(min_value=-400, max_value=400),  # issued_at offset, seconds
            st.integers(min_value=0, max_value=5),  # nonce: repeats are replays
            st.booleans(),  # payload that takes the general canonical path
        ),
        min_size=1,
        max_size=12,
    ),
    previous=st.sampled_from(["none", "live", "expired"]),
    now_shift=st.integers(min_value=0, max_value=2),
)
def test_the_split_checks_decide_exactly_as_verify_sync(
    events: list[tuple[str, str, int, int, bool]], previous: str, now_shift: int
) -> None:
    seeds = {"old": SEED, "new": SEED_NEW, "other": bytes(range(64, 96))}
    clock_now = [T0]

    def make() -> Ed25519Verifier:
        verifier = Ed25519Verifier(PUBLIC_NEW, clock=lambda: clock_now[0])
        if previous != "none":
            until = T0 + timedelta(seconds=1 if previous == "live" else -1)
            verifier.set_keys(PUBLIC_NEW, PUBLIC, until)
        return verifier

    split, inline = make(), make()
    for index, (signer, how, offset, nonce, prose) in enumerate(events):
        clock_now[0] = T0 + timedelta(seconds=now_shift)
        payload = {"note": "two words"} if prose else {"n": index}
        envelope = sign_envelope(
            seeds[signer],
            "peer_added",
            f"evt-{index}",
            payload,
            issued_at=T0 + timedelta(seconds=offset),
            nonce=f"nonce-{nonce}",
        )
        mutate(envelope, how)
        assert split_verdict(split, envelope) == inline_verdict(inline, envelope)
    assert len(split.nonces) == len(inline.nonces)


def test_a_message_the_split_cannot_take_is_verified_whole_when_its_turn_comes() -> None:
    verifier = Ed25519Verifier(PUBLIC, clock=lambda: T0)
    envelope = sign_envelope(SEED, "peer_added", "evt-1", {"n": 1}, issued_at=T0)
    envelope.nonce = ""
    assert verifier.signed_message(envelope) is None
    with pytest.raises(VerificationError, match="missing nonce"):
        verifier.finish_check(envelope, UNCHECKED, verifier.keys)


def test_keys_rotated_after_the_check_are_checked_again() -> None:
    # A thread checked the event with the keys of before a rotation that dropped them.
    verifier = Ed25519Verifier(PUBLIC, clock=lambda: T0)
    envelope = sign_envelope(SEED, "peer_added", "evt-1", {"n": 1}, issued_at=T0)
    keys = verifier.keys
    outcomes = bytearray(1)
    check_signatures([verifier.signed_message(envelope)], keys, outcomes, 0, 1)
    verifier.set_keys(PUBLIC_NEW)
    with pytest.raises(VerificationError, match="does not verify with the current key"):
        verifier.finish_check(envelope, outcomes[0], keys)


# --- the pool ---------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.release = threading.Event()

    def run(self) -> None:
        self.names.append(threading.current_thread().name)
        self.release.wait(5)


def test_the_last_release_joins_every_thread_and_a_new_acquire_starts_fresh() -> None:
    pool = WorkerPool("test-pool")
    pool.acquire(2)
    pool.acquire(3)
    assert pool.threads == 3
    started = [t for t in threading.enumerate() if t.name.startswith("test-pool")]
    assert len(started) == 3
    job = Recorder()
    pool.submit(job)
    pool.release()
    assert all(t.is_alive() for t in started)  # one user is left
    job.release.set()
    pool.release()
    assert not any(t.is_alive() for t in started)
    assert pool.threads == 0 and pool.users == 0
    # A later user gets threads of its own (the old stop markers cannot reach them).
    pool.acquire(1)
    later = Recorder()
    later.release.set()
    pool.submit(later)
    pool.release()
    assert later.names and later.names[0].startswith("test-pool")
    assert not [t for t in threading.enumerate() if t.name.startswith("test-pool")]


def test_the_default_follows_the_cpus_and_is_capped() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert default_threads() == min(cpus - 1, 8)


@pytest.mark.parametrize("value", [-1, 65, True, 1.5, "2"])
def test_verify_threads_refuses_nonsense(value: object) -> None:
    with pytest.raises(ArgumentError):
        SSEManager(None, verify_threads=value)  # type: ignore[arg-type]


# --- end to end, against a server that replays after Last-Event-ID --------------------------


def signed_event(n: int, seed: bytes = SEED, event_type: str = "peer_added") -> bytes:
    envelope = sign_envelope(seed, event_type, f"evt-{n}", {"n": n, "pad": "x" * 40})
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (n, event_type.encode(), envelope_json(envelope))


class Server:
    def __init__(self) -> None:
        self.log: list[bytes] = []
        self.cuts: list[int] = []
        self.url = ""
        self.connections = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.connections += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        after = int(request.headers.get("Last-Event-ID") or 0)
        body = b"".join(self.log[after:])
        if self.cuts:
            await response.write(body[: self.cuts.pop(0)])
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write(body)
        await asyncio.sleep(3600)
        return response


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    server = Server()
    app = web.Application()
    app.router.add_get(f"/v1/nodes/{NODE}/events", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(Config(base_url=server.url, sse_idle_timeout=5), "test") as cp:
        yield cp


def manager_for(
    client: ControlPlane, threads: int, verifier: Ed25519Verifier | None = None
) -> SSEManager:
    manager = SSEManager(client, verifier or Ed25519Verifier(PUBLIC), verify_threads=threads)
    manager.set_reconnect_intervals(0.001, 0.01)
    return manager


class Handled:
    """Records event ids (and the pool's size while handling); stops after ``stop_at``."""

    def __init__(self, manager: SSEManager, stop_at: int) -> None:
        self.ids: list[str] = []
        self.pool_sizes: set[int] = set()
        self.manager = manager
        self.stop_at = stop_at

    def __call__(self, envelope: SignedEnvelope) -> None:
        self.ids.append(envelope.event_id)
        self.pool_sizes.add(VERIFY_POOL.threads)
        if len(self.ids) >= self.stop_at:
            self.manager.shutdown()


@pytest.mark.parametrize("threads", [0, 1, 2])
async def test_every_event_once_and_in_order_across_random_cuts(
    server: Server, client: ControlPlane, threads: int
) -> None:
    total = 1500
    server.log = [signed_event(n) for n in range(1, total + 1)]
    size = sum(map(len, server.log))
    rng = random.Random(16 + threads)
    server.cuts = [rng.randrange(1, size // 20) for _ in range(30)]
    manager = manager_for(client, threads)
    handled = Handled(manager, total)
    manager.register_handler("peer_added", handled)
    await asyncio.wait_for(manager.start(NODE), 60)
    assert handled.ids == [f"evt-{n}" for n in range(1, total + 1)]
    assert server.connections == 31
    assert handled.pool_sizes == ({0} if threads == 0 else {threads})
    assert not pool_threads()


@pytest.mark.parametrize("stop_at", [1, 7, 250])
@pytest.mark.parametrize("threads", [0, 2])
async def test_shutdown_while_events_are_being_verified_keeps_the_rest_for_replay(
    server: Server, client: ControlPlane, stop_at: int, threads: int
) -> None:
    total = 400
    server.log = [signed_event(n) for n in range(1, total + 1)]  # one burst
    verifier = Ed25519Verifier(PUBLIC)
    manager = manager_for(client, threads, verifier)
    handled = Handled(manager, stop_at)
    manager.register_handler("peer_added", handled)
    await asyncio.wait_for(manager.start(NODE), 10)
    assert handled.ids == [f"evt-{n}" for n in range(1, stop_at + 1)]
    assert manager.last_event_id == str(stop_at)
    # Only dispatched events spent their nonce: the replay of the rest is accepted.
    assert len(verifier.nonces) == stop_at
    assert not pool_threads()
    again = manager_for(client, threads, verifier)
    again.last_event_id = manager.last_event_id
    handled.manager, handled.stop_at = again, total
    again.register_handler("peer_added", handled)
    await asyncio.wait_for(again.start(NODE), 10)
    assert handled.ids == [f"evt-{n}" for n in range(1, total + 1)]
    assert not pool_threads()


@pytest.mark.parametrize("threads", [0, 2])
async def test_cancelling_while_events_are_being_verified(
    server: Server, client: ControlPlane, threads: int
) -> None:
    total = 400
    server.log = [signed_event(n) for n in range(1, total + 1)]
    verifier = Ed25519Verifier(PUBLIC)
    manager = manager_for(client, threads, verifier)
    ids: list[str] = []
    tenth = asyncio.Event()
    block = True

    async def handler(envelope: SignedEnvelope) -> None:
        ids.append(envelope.event_id)
        if block and len(ids) == 10:
            tenth.set()
            await asyncio.sleep(3600)
        if len(ids) == total + 1:  # event 10 twice: its handler never finished the first time
            manager.shutdown()

    manager.register_handler("peer_added", handler)
    task = asyncio.create_task(manager.start(NODE))
    await asyncio.wait_for(tenth.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not pool_threads()
    assert manager.last_event_id == "9"  # the tenth never finished
    # Only finished events spent their nonce (not those verified ahead, nor the tenth,
    # whose handler was interrupted): the whole replay from event 10 is accepted.
    assert len(verifier.nonces) == 9
    block = False
    manager = manager_for(client, threads, verifier)
    manager.last_event_id = "9"
    manager.register_handler("peer_added", handler)
    await asyncio.wait_for(manager.start(NODE), 10)
    assert ids == [f"evt-{n}" for n in range(1, 11)] + [f"evt-{n}" for n in range(10, total + 1)]


async def test_a_rotation_mid_chunk_applies_to_the_events_after_it(
    server: Server, client: ControlPlane
) -> None:
    # The rotation drops the old key: an event after it, signed with the old key and
    # already checked by a thread with the keys of before, must still be refused.
    new_b64 = base64.b64encode(PUBLIC_NEW).decode()
    rotation = sign_envelope(SEED, "signing_key_rotated", "evt-rot", {"current": new_b64})
    server.log = [
        signed_event(1),
        b"id: 2\nevent: signing_key_rotated\ndata: " + envelope_json(rotation) + b"\n\n",
        *[signed_event(n) for n in range(3, 40)],  # old key: refused
        signed_event(40, SEED_NEW),
    ]
    manager = manager_for(client, 2)
    handled = Handled(manager, 2)
    manager.register_handler("peer_added", handled)
    await asyncio.wait_for(manager.start(NODE), 10)
    assert handled.ids == ["evt-1", "evt-40"]


async def test_a_stream_connected_by_hand_releases_its_threads(
    server: Server, client: ControlPlane
) -> None:
    server.log = [signed_event(n) for n in range(1, 50)]
    server.cuts = [sum(map(len, server.log))]  # everything, then the connection drops
    dispatcher = EventDispatcher()
    seen: list[str] = []
    dispatcher.register("peer_added", lambda envelope: seen.append(envelope.event_id))
    stream = SSEStream(client, Ed25519Verifier(PUBLIC), dispatcher, 5, verify_threads=2)
    with pytest.raises(Exception):  # noqa: B017 - the drop, whatever it maps to
        await stream.connect(NODE)
    assert seen == [f"evt-{n}" for n in range(1, 50)]
    assert stream.last_event_id == "49"
    assert not pool_threads()


async def test_a_user_verifier_runs_on_the_loop_in_order_sync_or_async(
    server: Server, client: ControlPlane
) -> None:
    server.log = [signed_event(n) for n in range(1, 30)]
    loop_thread = threading.current_thread()
    calls: list[tuple[str, threading.Thread]] = []

    class SyncVerifier:
        def verify(self, envelope: SignedEnvelope) -> None:
            calls.append((envelope.event_id, threading.current_thread()))
            if envelope.event_id == "evt-3":
                raise VerificationError("no")

    class Subclassed(Ed25519Verifier):
        async def verify(self, envelope: SignedEnvelope) -> None:
            calls.append((envelope.event_id, threading.current_thread()))
            await super().verify(envelope)

    for verifier in (SyncVerifier(), Subclassed(PUBLIC)):
        calls.clear()
        manager = SSEManager(client, verifier, verify_threads=2)  # type: ignore[arg-type]
        handled = Handled(manager, 28 if isinstance(verifier, SyncVerifier) else 29)
        manager.register_handler("peer_added", handled)
        await asyncio.wait_for(manager.start(NODE), 10)
        assert [event_id for event_id, _ in calls] == [f"evt-{n}" for n in range(1, 30)]
        assert {thread for _, thread in calls} == {loop_thread}
        assert "evt-3" not in handled.ids or isinstance(verifier, Subclassed)
        assert handled.pool_sizes == {0}  # no thread was started for them


async def test_a_failure_on_a_thread_leaves_the_events_to_the_loop(
    server: Server,
    client: ControlPlane,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A bug on a verification thread must neither hang the stream nor let an event through
    # unchecked: the events are verified whole on the loop when their turn comes.
    from plexd.api import _stream

    loop_thread = threading.current_thread()
    real = _stream.check_signatures

    def failing(*args: object) -> None:
        if threading.current_thread() is not loop_thread:
            raise RuntimeError("boom")
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(_stream, "check_signatures", failing)
    forged = sign_envelope(bytes(range(64, 96)), "peer_added", "evt-forged", {"n": 0})
    server.log = [signed_event(n) for n in range(1, 200)]
    server.log.insert(100, b"id: 100\nevent: peer_added\ndata: " + envelope_json(forged) + b"\n\n")
    manager = manager_for(client, 2)
    handled = Handled(manager, 199)
    manager.register_handler("peer_added", handled)
    await asyncio.wait_for(manager.start(NODE), 10)
    assert handled.ids == [f"evt-{n}" for n in range(1, 200)]
    assert not pool_threads()


async def test_many_managers_share_the_pool_each_exactly_once_in_order(server: Server) -> None:
    server.log = [signed_event(n) for n in range(1, 300)]
    clients = [ControlPlane(Config(base_url=server.url), f"t{i}") for i in range(6)]
    managers = [manager_for(client, 2) for client in clients]
    handled = [Handled(manager, 299) for manager in managers]
    for manager, handler in zip(managers, handled, strict=True):
        manager.register_handler("peer_added", handler)
    await asyncio.wait_for(asyncio.gather(*(m.start(NODE) for m in managers)), 30)
    for client in clients:
        await client.aclose()
    for handler in handled:
        assert handler.ids == [f"evt-{n}" for n in range(1, 300)]
    assert VERIFY_POOL.users == 0
    assert not pool_threads()


def test_a_thread_that_cannot_start_leaves_no_thread_and_no_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = WorkerPool("test-failing")
    real_start = threading.Thread.start
    started: list[threading.Thread] = []

    def start(thread: threading.Thread) -> None:
        if started:
            raise RuntimeError("can't start new thread")
        real_start(thread)
        started.append(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(RuntimeError):
        pool.acquire(3)
    assert pool.users == 0 and pool.threads == 0
    assert not started[0].is_alive()


@pytest.mark.parametrize("threads", [1, 2])
async def test_shutdowns_at_random_moments_lose_and_repeat_nothing(
    server: Server, client: ControlPlane, threads: int
) -> None:
    # shutdown() from another task lands anywhere: while a thread verifies, while the
    # loop verifies a job itself, between events. Whatever was handled is never
    # handled again, and the next manager resumes right after it.
    total = 6000
    server.log = [signed_event(n) for n in range(1, total + 1)]
    verifier = Ed25519Verifier(PUBLIC)
    rng = random.Random(1600 + threads)
    handled: list[str] = []
    last = ""
    for _ in range(12):
        manager = manager_for(client, threads, verifier)
        manager.last_event_id = last
        manager.register_handler("peer_added", lambda envelope: handled.append(envelope.event_id))
        task = asyncio.create_task(manager.start(NODE))
        await asyncio.sleep(rng.uniform(0.0, 0.03))
        manager.shutdown()
        await asyncio.wait_for(task, 10)
        last = manager.last_event_id
        assert last == (handled[-1].removeprefix("evt-") if handled else "")
        assert not pool_threads()
    final = manager_for(client, threads, verifier)
    final.last_event_id = last
    final.register_handler("peer_added", Handled(final, total - len(handled)))
    final.register_handler("peer_added", lambda envelope: handled.append(envelope.event_id))
    if len(handled) < total:
        await asyncio.wait_for(final.start(NODE), 30)
    assert handled == [f"evt-{n}" for n in range(1, total + 1)]
    assert len(verifier.nonces) == total


@pytest.mark.parametrize("threads", [0, 2])
async def test_a_dispatcher_that_changes_dispatch_is_the_one_called(
    server: Server, client: ControlPlane, threads: int
) -> None:
    # Plain handlers run without a coroutine per event (dispatch_now), except where a
    # subclass of EventDispatcher says how events are dispatched.
    server.log = [signed_event(n) for n in range(1, 20)]
    server.cuts = [sum(map(len, server.log))]
    seen: list[str] = []

    class Recording(EventDispatcher):
        async def dispatch(self, envelope: SignedEnvelope) -> None:
            seen.append("via " + envelope.event_id)
            await super().dispatch(envelope)

    dispatcher = Recording()
    dispatcher.register("peer_added", lambda envelope: seen.append(envelope.event_id))
    stream = SSEStream(client, Ed25519Verifier(PUBLIC), dispatcher, 5, verify_threads=threads)
    with pytest.raises(Exception):  # noqa: B017 - the drop, whatever it maps to
        await stream.connect(NODE)
    assert seen == [text for n in range(1, 20) for text in (f"via evt-{n}", f"evt-{n}")]


FORK = """
import os, threading, warnings
from plexd.api._pool import VERIFY_POOL

class Job:
    names = []
    def run(self):
        self.names.append(threading.current_thread().name)

def pool_threads():
    return [t for t in threading.enumerate() if t.name.startswith("plexd-verify")]

VERIFY_POOL.acquire(1)  # the parent holds the pool: a thread runs, one user
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads (3.12+)
    pid = os.fork()
if pid == 0:
    code = 1
    try:
        if VERIFY_POOL.threads == 0 and VERIFY_POOL.users == 0:
            VERIFY_POOL.acquire(1)
            job = Job()
            VERIFY_POOL.submit(job)
            VERIFY_POOL.release()
            VERIFY_POOL.release()  # the parent's user, inherited
            ran = job.names and job.names[0].startswith("plexd-verify")
            code = 0 if ran and VERIFY_POOL.users == 0 and not pool_threads() else 2
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
parent = len(pool_threads())
VERIFY_POOL.release()
print("child", os.waitstatus_to_exitcode(status), "parent", parent, len(pool_threads()))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_from_an_empty_pool() -> None:
    # A child forked while the parent's pool runs gets threads of its own (the parent's
    # were not copied, and their lock may have been held), and may release a user it
    # inherited without breaking the count; the parent's pool is untouched.
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORK)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["child", "0", "parent", "1", "0"]
