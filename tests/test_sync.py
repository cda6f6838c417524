"""plexd.api.sync against the emulator, used from plain threads that run no event loop
of their own (threads started by the tests, see in_thread): results and errors in
the calling thread, handlers in the thread that called run, one background loop thread
for the whole process, and no thread left behind."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hashlib
import inspect
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import plexd.api
from plexd.api import (
    ArtifactDownload,
    ChecksumError,
    Config,
    ConnectionState,
    Ed25519Verifier,
    HeartbeatRequest,
    HeartbeatResponse,
    SignedEnvelope,
    SSEEvent,
    StateResponse,
    sync,
)
from plexd.api.errors import (
    ArgumentError,
    ArgumentTypeError,
    ClientClosedError,
    EventLoopError,
    ForbiddenError,
    PlexdError,
    UnauthorizedError,
)
from plexd.emulator import Emulator

TIMEOUT = 20


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == sync.LOOP_THREAD_NAME]


@pytest.fixture(autouse=True)
def no_loop_thread_left() -> Iterator[None]:
    assert loop_threads() == []
    yield
    # Every object of a test is closed by its end: the loop thread is gone too.
    assert loop_threads() == []


def client_of(emulator: Emulator, token: str = "") -> sync.ControlPlane:
    client = sync.ControlPlane(Config(base_url=emulator.url), "1.2.3")
    client.set_auth_token(token)
    return client


async def in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a new daemon thread with no event loop, bounded in time. Not the
    loop's executor: a thread stuck in a failing test would hold the loop's close, and
    the whole run, forever; a daemon thread is left behind and the test fails."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(outcome: Callable[[], object]) -> None:
        if not done.done():
            outcome()

    def body() -> None:
        outcome: Callable[[], object]
        try:
            outcome = functools.partial(done.set_result, fn())
        except BaseException as error:  # handed to the test, which re-raises it
            outcome = functools.partial(done.set_exception, error)
        with contextlib.suppress(RuntimeError):  # the test gave up and its loop closed
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=body, name="test-node", daemon=True).start()
    return await asyncio.wait_for(done, TIMEOUT)


# --- ControlPlane ---------------------------------------------------------------------


async def test_calls_block_and_return_the_async_apis_results(control_plane: Emulator) -> None:
    node_id, token = control_plane.register_node("web-1")

    def node() -> tuple[Any, ...]:
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()  # a plain thread: no loop of its own
        with client_of(control_plane, token) as cp:
            cp.ping()
            answer = cp.heartbeat(node_id, HeartbeatRequest(node_id=node_id))
            state = cp.fetch_state(node_id)
            raw = cp.get_json(f"/v1/nodes/{node_id}/state")
            typed = cp.get_json(f"/v1/nodes/{node_id}/state", result_type=StateResponse)
            return answer, state, raw, typed

    answer, state, raw, typed = await in_thread(node)
    assert isinstance(answer, HeartbeatResponse)
    assert isinstance(state, StateResponse)
    assert isinstance(raw, dict) and "peers" in raw
    assert typed == state
    assert control_plane.counts(node_id)["heartbeats"] == 1


async def test_errors_are_the_async_apis_errors_raised_in_the_calling_thread(
    control_plane: Emulator,
) -> None:
    _, token = control_plane.register_node("web-1")
    other, _ = control_plane.register_node("web-2")

    def node() -> tuple[BaseException, list[str]]:
        with client_of(control_plane, token) as cp:
            with pytest.raises(ForbiddenError) as caught:
                cp.fetch_state(other)
            frames = [frame.function for frame in inspect.getinnerframes(caught.tb)]
            return caught.value, frames

    error, frames = await in_thread(node)
    assert isinstance(error, PlexdError) and error.status_code == 403
    # Raised here, in the caller's frames, with the loop thread's traceback kept.
    assert frames[0] == "node"
    assert "fetch_state" in frames


async def test_a_closed_client_refuses_calls_and_the_loop_thread_stops(
    control_plane: Emulator,
) -> None:
    node_id, token = control_plane.register_node("web-1")

    def node() -> tuple[int, int]:
        cp = client_of(control_plane, token)
        cp.fetch_state(node_id)
        running = len(loop_threads())
        with cp:
            pass
        cp.close()  # twice is fine
        with pytest.raises(ClientClosedError):
            cp.fetch_state(node_id)
        with pytest.raises(ClientClosedError), cp:
            pass
        return running, len(loop_threads())

    assert await in_thread(node) == (1, 0)


async def test_threads_share_one_loop_thread(control_plane: Emulator) -> None:
    node_id, token = control_plane.register_node("web-1")
    shared = client_of(control_plane, token)
    seen: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def worker() -> None:
        try:
            with client_of(control_plane, token) as own:
                barrier.wait(TIMEOUT)
                for _ in range(5):
                    own.heartbeat(node_id, HeartbeatRequest(node_id=node_id))
                    shared.fetch_state(node_id)
                seen.append(len(loop_threads()))
        except BaseException as exc:  # reported below
            errors.append(exc)

    def run_all() -> None:
        threads = [threading.Thread(target=worker) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)

    try:
        await in_thread(run_all)
    finally:
        await in_thread(shared.close)
    assert errors == []
    assert seen == [1] * 6
    assert control_plane.counts(node_id)["heartbeats"] == 30


async def test_a_client_collected_without_close_releases_the_loop(
    control_plane: Emulator,
) -> None:
    node_id, token = control_plane.register_node("web-1")

    def node() -> int:
        cp = client_of(control_plane, token)
        cp.fetch_state(node_id)
        del cp
        gc.collect()
        return len(loop_threads())

    assert await in_thread(node) == 0


async def test_connect_sse_and_fetch_artifact_are_blocking_with_blocks(
    control_plane: Emulator,
) -> None:
    node_id, token = control_plane.register_node("web-1")
    control_plane.publish(node_id, "peer_added", {"id": "p1"})

    def node() -> tuple[int, bytes, bytes, int | None]:
        with client_of(control_plane, token) as cp:
            with cp.connect_sse(node_id, "0") as stream:
                status = stream.status
                received = b""
                for chunk in stream.iter_chunks():
                    received += chunk
                    if b"peer_added" in received:
                        break
            with cp.fetch_artifact("1.2.3", "linux", "amd64") as artifact:
                body = b"".join(artifact.iter_chunks())
                return status, received, body, artifact.content_length

    status, received, body, length = await in_thread(node)
    assert status == 200
    assert b"event: peer_added" in received
    assert body == control_plane.artifact("1.2.3", "linux", "amd64")
    assert length == len(body)


async def test_fetch_artifact_with_dest_downloads_checked_from_a_plain_thread(
    control_plane: Emulator, tmp_path: Any
) -> None:
    _, token = control_plane.register_node("web-1")
    dest = tmp_path / "plexd"
    threads: set[str] = set()

    def node() -> ArtifactDownload:
        with client_of(control_plane, token) as cp:
            with pytest.raises(ArgumentError):
                cp.fetch_artifact("1.2.3", "linux", "amd64", sha256="0" * 64)
            with pytest.raises(ChecksumError):
                cp.fetch_artifact("1.2.3", "linux", "amd64", dest=dest, sha256="0" * 64)
            return cp.fetch_artifact(
                "1.2.3", "linux", "amd64", dest=dest,
                progress=lambda done, total: threads.add(threading.current_thread().name),
            )  # fmt: skip

    done = await in_thread(node)
    blob = control_plane.artifact("1.2.3", "linux", "amd64")
    assert done == ArtifactDownload(dest, len(blob), hashlib.sha256(blob).hexdigest(), 0)
    assert dest.read_bytes() == blob
    assert threads == {sync.LOOP_THREAD_NAME}


FORK = """
import os, sys
from plexd.api import Config
from plexd.api.errors import ClientClosedError
from plexd.api import sync

cp = sync.ControlPlane(Config(base_url=sys.argv[1]), "1.0")
cp.ping()
pid = os.fork()
if pid == 0:
    try:
        cp.ping()
    except ClientClosedError:
        with sync.ControlPlane(Config(base_url=sys.argv[1]), "1.0") as fresh:
            fresh.ping()
        os._exit(0)
    os._exit(1)
_, status = os.waitpid(pid, 0)
cp.ping()
cp.close()
print("child", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
async def test_after_a_fork_the_childs_old_clients_are_closed_not_hanging(
    control_plane: Emulator,
) -> None:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(FORK), control_plane.url],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    result = await asyncio.to_thread(run)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "child 0"


def test_signatures_are_those_of_the_async_api() -> None:
    for name in ("heartbeat", "fetch_artifact", "connect_sse", "get_json", "report_metrics"):
        blocking = inspect.signature(getattr(sync.ControlPlane, name))
        original = inspect.signature(getattr(plexd.api.ControlPlane, name))
        assert blocking.parameters == original.parameters
    constructor = inspect.signature(sync.ControlPlane)
    assert constructor.parameters == inspect.signature(plexd.api.ControlPlane).parameters
    assert list(inspect.signature(sync.SSEManager).parameters)[:3] == [
        "client",
        "verifier",
        "logger",
    ]
    assert "refresh_keys" in inspect.signature(sync.SSEManager).parameters


def test_arguments_are_checked_by_the_async_api() -> None:
    with pytest.raises(plexd.api.ConfigError):
        sync.ControlPlane(Config(base_url="ftp://nowhere"), "1.0")
    with pytest.raises(TypeError):
        sync.ControlPlane(Config(base_url="http://127.0.0.1:1"), "1.0", bogus=1)  # type: ignore[call-arg]
    asynchronous = plexd.api.ControlPlane(Config(base_url="http://127.0.0.1:1"), "1.0")
    with pytest.raises(ArgumentTypeError):
        sync.SSEManager(asynchronous)  # type: ignore[arg-type]
    assert loop_threads() == []


# --- SSEManager -----------------------------------------------------------------------


class Recorder:
    """What the handlers saw, and in which thread."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.threads: set[int] = set()
        self.states: list[ConnectionState] = []
        self.state_threads: set[int] = set()

    def handler(self, name: str) -> Callable[[SignedEnvelope], None]:
        def handle(envelope: SignedEnvelope) -> None:
            self.threads.add(threading.get_ident())
            self.events.append((name, envelope.event_id))

        return handle

    def state(self, state: ConnectionState) -> None:
        self.state_threads.add(threading.get_ident())
        self.states.append(state)


async def test_run_calls_handlers_in_its_thread_in_stream_order_until_shutdown(
    control_plane: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    node_id, token = control_plane.register_node("web-1")
    control_plane.publish_many(
        node_id, [("peer_added", {"n": 1}), ("newer_type", {"n": 2}), ("peer_added", {"n": 3})]
    )
    record = Recorder()
    box: dict[str, Any] = {}

    def node() -> int:
        with client_of(control_plane, token) as cp:
            manager = sync.SSEManager(
                cp, Ed25519Verifier(control_plane.signing_public_key), on_state_change=record.state
            )
            manager.last_event_id = "0"  # what was published before it connects too
            box["manager"] = manager

            def broken(envelope: SignedEnvelope) -> None:
                raise RuntimeError("handler bug")

            manager.register_handler("peer_added", record.handler("typed"))
            manager.register_handler("peer_added", broken)
            manager.register_default_handler(record.handler("default"))

            def stop_after_three(envelope: SignedEnvelope) -> None:
                if envelope.event_id == "3":
                    manager.shutdown()  # the event still counts as handled

            manager.register_default_handler(stop_after_three)
            manager.run(node_id)
            assert manager.last_event_id == "3"
            return threading.get_ident()

    with caplog.at_level(logging.ERROR, logger="plexd.api"):
        run_thread = await in_thread(node)
    assert record.events == [
        ("typed", "1"),
        ("default", "1"),
        ("default", "2"),
        ("typed", "3"),
        ("default", "3"),
    ]
    assert record.threads == {run_thread}
    assert record.state_threads == {run_thread}
    assert record.states[0] is ConnectionState.CONNECTING
    assert ConnectionState.CONNECTED in record.states
    assert record.states[-1] is ConnectionState.DISCONNECTED
    assert sum("handler bug" in r.getMessage() for r in caplog.records) == 2


async def test_shutdown_from_another_thread_makes_run_return(control_plane: Emulator) -> None:
    node_id, token = control_plane.register_node("web-1")
    cp = client_of(control_plane, token)
    manager = sync.SSEManager(cp)
    manager.last_event_id = "0"  # what was published before it connects too
    try:
        running = asyncio.ensure_future(in_thread(lambda: manager.run(node_id)))
        await asyncio.wait_for(control_plane.wait_for_streams(node_id), TIMEOUT)
        manager.shutdown()  # from the test's own thread, which runs another loop
        await running
        assert manager.state is ConnectionState.DISCONNECTED
    finally:
        await in_thread(cp.close)


async def test_a_handler_may_call_the_sync_client(control_plane: Emulator) -> None:
    node_id, token = control_plane.register_node("web-1")
    control_plane.publish(node_id, "peer_added", {"id": "p1"})
    states: list[StateResponse] = []

    def node() -> None:
        with client_of(control_plane, token) as cp:
            manager = sync.SSEManager(cp, Ed25519Verifier(control_plane.signing_public_key))
            manager.last_event_id = "0"  # what was published before it connects too

            def reconcile(envelope: SignedEnvelope) -> None:
                states.append(cp.fetch_state(node_id))
                manager.shutdown()

            manager.register_handler("peer_added", reconcile)
            manager.run(node_id)

    await in_thread(node)
    assert len(states) == 1 and isinstance(states[0], StateResponse)


async def test_run_raises_a_permanent_failure_after_the_auth_callback_in_its_thread(
    control_plane: Emulator,
) -> None:
    node_id, _ = control_plane.register_node("web-1")
    called_in: list[int] = []

    def node() -> tuple[BaseException, int]:
        with client_of(control_plane, "not-a-token") as cp:
            manager = sync.SSEManager(cp)
            manager.last_event_id = "0"  # what was published before it connects too
            manager.set_on_auth_failure(lambda: called_in.append(threading.get_ident()))
            with pytest.raises(UnauthorizedError) as caught:
                manager.run(node_id)
            return caught.value, threading.get_ident()

    error, run_thread = await in_thread(node)
    assert isinstance(error, UnauthorizedError)
    assert called_in == [run_thread]


async def test_the_poll_function_runs_in_the_run_thread(control_plane: Emulator) -> None:
    node_id, token = control_plane.register_node("web-1")
    control_plane.set_faults(node_id, status=503)
    polled_in: list[int] = []

    def node() -> int:
        with client_of(control_plane, token) as cp:
            manager = sync.SSEManager(cp)
            manager.last_event_id = "0"  # what was published before it connects too
            manager.set_reconnect_intervals(0.01, 0.02)
            manager.set_polling_fallback(0, 0.01)

            def poll() -> None:
                polled_in.append(threading.get_ident())
                cp.fetch_state(node_id)
                if len(polled_in) == 2:
                    manager.shutdown()

            manager.set_poll_func(poll)
            manager.run(node_id)
            return threading.get_ident()

    run_thread = await in_thread(node)
    assert polled_in == [run_thread, run_thread]


async def test_shutdown_before_run_makes_run_return_at_once(control_plane: Emulator) -> None:
    node_id, token = control_plane.register_node("web-1")

    def node() -> None:
        with client_of(control_plane, token) as cp:
            manager = sync.SSEManager(cp)
            manager.last_event_id = "0"  # what was published before it connects too
            manager.shutdown()
            manager.run(node_id)

    await in_thread(node)
    assert control_plane.stream_count(node_id) == 0


async def test_run_on_a_closed_client_raises(control_plane: Emulator) -> None:
    node_id, token = control_plane.register_node("web-1")

    def node() -> None:
        cp = client_of(control_plane, token)
        manager = sync.SSEManager(cp)
        manager.last_event_id = "0"  # what was published before it connects too
        cp.close()
        with pytest.raises(ClientClosedError):
            manager.run(node_id)
        with pytest.raises(ClientClosedError):
            sync.SSEManager(cp)

    await in_thread(node)


async def test_sync_calls_from_the_loop_thread_are_refused(control_plane: Emulator) -> None:
    node_id, token = control_plane.register_node("web-1")
    control_plane.publish(node_id, "peer_added", {"id": "p1"})
    errors: list[BaseException] = []

    def node() -> None:
        with client_of(control_plane, token) as cp:
            manager = sync.SSEManager(cp)
            manager.last_event_id = "0"  # what was published before it connects too

            async def on_the_loop(envelope: SignedEnvelope) -> None:
                try:
                    cp.fetch_state(node_id)
                except PlexdError as exc:
                    errors.append(exc)
                manager.shutdown()

            # A coroutine handler is awaited on the background loop, where blocking on
            # that same loop would deadlock.
            manager.register_handler("peer_added", lambda env: on_the_loop(env))
            manager.run(node_id)

    await in_thread(node)
    assert len(errors) == 1 and isinstance(errors[0], EventLoopError)


# --- EventSource --------------------------------------------------------------------------


@pytest.mark.control_plane_options(keepalive_interval=0.05)
async def test_event_source_is_a_blocking_iterator_with_callbacks_in_its_thread(
    control_plane: Emulator,
) -> None:
    node_id, token = control_plane.register_node("web-1")
    control_plane.publish_many(node_id, [("peer_added", {"n": n}) for n in range(3)])
    comments: list[int] = []

    def node() -> tuple[list[SSEEvent], str, int]:
        url = f"{control_plane.url}/v1/nodes/{node_id}/events"
        events: list[SSEEvent] = []

        def on_comment(text: str) -> None:
            comments.append(threading.get_ident())
            if len(events) == 3:
                source.close()  # from a callback: the iteration ends

        with sync.EventSource(
            url,
            headers={"Authorization": f"Bearer {token}"},
            on_comment=on_comment,
            last_event_id="0",
        ) as source:
            for event in source:
                events.append(event)
            last = source.last_event_id
        assert list(source) == []  # closed: the iteration is over
        with pytest.raises(ClientClosedError), source:
            pass
        with pytest.raises(ClientClosedError):
            source.restart()
        return events, last, threading.get_ident()

    events, last, thread = await in_thread(node)
    assert [event.id for event in events] == ["1", "2", "3"]
    assert events[0].type == "peer_added"
    assert last == "3"
    assert comments and set(comments) == {thread}


async def test_closing_an_event_source_from_another_thread_ends_the_iteration(
    control_plane: Emulator,
) -> None:
    node_id, token = control_plane.register_node("web-1")
    control_plane.publish(node_id, "peer_added", {"n": 1})

    def node() -> list[str]:
        url = f"{control_plane.url}/v1/nodes/{node_id}/events"
        source = sync.EventSource(
            url, headers={"Authorization": f"Bearer {token}"}, last_event_id="0"
        )
        ids = []
        closers = []
        for event in source:
            ids.append(event.id)
            closers.append(threading.Thread(target=source.close))
            closers[-1].start()
        for closer in closers:  # its close() stops the loop thread: done before the test ends
            closer.join(TIMEOUT)
        return ids

    assert await in_thread(node) == ["1"]


async def test_event_source_errors_end_the_iteration_in_the_calling_thread(
    control_plane: Emulator,
) -> None:
    node_id, _ = control_plane.register_node("web-1")
    reported: list[BaseException] = []

    def node() -> BaseException:
        url = f"{control_plane.url}/v1/nodes/{node_id}/events"
        with sync.EventSource(url, on_error=reported.append) as source:
            with pytest.raises(UnauthorizedError) as caught:
                next(source)
            return caught.value

    error = await in_thread(node)
    assert reported == [error]
