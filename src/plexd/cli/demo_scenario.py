"""CLI, demo layer: the demo's scenario, its steps against an emulator and what each
step expects. :mod:`.demo` runs them and reports.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from plexd.api import (
    Config,
    ControlPlane,
    Ed25519Verifier,
    EventType,
    HeartbeatRequest,
    Peer,
    PlexdError,
    RegisterRequest,
    RegisterResponse,
    SignedEnvelope,
    SSEManager,
    UnauthorizedError,
    __version__,
    decode_raw,
    decrypt_secret,
)
from plexd.emulator import Emulator, RecordedCall

T = TypeVar("T")

# Bounds every wait of the scenario, so that a broken library fails the demo instead of
# hanging it (a healthy run takes well under a second per step).
STEP_TIMEOUT = 10.0
# Backoff of the demo's event connection: short, so that reconnecting is quick to watch.
RECONNECT_BASE = 0.05
RECONNECT_MAX = 0.5
# How many reconnect attempts the server refuses (503) after dropping the stream.
REFUSED_RECONNECTS = 2
# Idle timeout of the demo's stream; the emulator's keep-alives are far more frequent.
IDLE_TIMEOUT = 30.0
# The secret the control plane holds for the node (the demo shows its size, not its value).
SECRET_KEY = "db-password"
SECRET_VALUE = b"correct horse battery staple"

_PEER_KEY = base64.b64encode(bytes(range(32))).decode("ascii")
_NEW_PEER_KEY = base64.b64encode(bytes(range(32, 64))).decode("ascii")

# A plausible payload for each event type but signing_key_rotated, which the emulator's
# key rotation sends (with the new keys as its payload).
PAYLOADS: dict[EventType, Any] = {
    EventType.PEER_ADDED: {
        "id": "peer-7",
        "public_key": _PEER_KEY,
        "mesh_ip": "10.99.0.7",
        "endpoint": "203.0.113.7:51820",
        "allowed_ips": ["10.99.0.7/32"],
    },
    EventType.PEER_REMOVED: {"peer_id": "peer-3"},
    EventType.PEER_KEY_ROTATED: {"peer_id": "peer-7", "public_key": _NEW_PEER_KEY},
    EventType.PEER_ENDPOINT_CHANGED: {"peer_id": "peer-7", "endpoint": "198.51.100.7:51820"},
    EventType.POLICY_UPDATED: {
        "id": "policy-web",
        "rules": [
            {
                "src": "10.99.0.0/16",
                "dst": "10.99.0.1",
                "port": 443,
                "protocol": "tcp",
                "action": "allow",
            },
        ],
    },
    EventType.ACTION_REQUEST: {
        "execution_id": "exec-1",
        "action": "restart-service",
        "parameters": {"unit": "nginx.service"},
    },
    EventType.SESSION_REVOKED: {"session_id": "sess-42"},
    EventType.SSH_SESSION_SETUP: {"session_id": "sess-43", "user_id": "user-1"},
    EventType.ROTATE_KEYS: {"reason": "scheduled"},
    EventType.NODE_STATE_UPDATED: {"version": 2},
    EventType.NODE_SECRETS_UPDATED: {"keys": ["db-password"]},
}


class DemoFailed(Exception):
    """An expectation of the scenario did not hold; the message says which."""


def expect(condition: bool, failure: str) -> None:
    """Raise :class:`DemoFailed` with ``failure`` unless ``condition`` holds."""
    if not condition:
        raise DemoFailed(failure)


@dataclass
class DemoReport:
    """What a demo run found: one line per step, and the event counts of the summary."""

    lines: list[str] = field(default_factory=list)
    failure: str = ""
    published: int = 0
    delivered: int = 0
    rejected: int = 0
    event_types: set[str] = field(default_factory=set)
    connections: int = 0
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """Whether every step ran and met its expectations."""
        return not self.failure and bool(self.lines)


async def _within(awaitable: Awaitable[T], what: str) -> T:
    """``await awaitable``, failing the demo when it takes longer than STEP_TIMEOUT."""
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            return await awaitable
    except TimeoutError:
        raise DemoFailed(f"timed out after {STEP_TIMEOUT:g} s waiting for {what}") from None


class Scenario:
    """The demo's steps; each returns its ``[ok]`` line or raises :class:`DemoFailed`."""

    def __init__(self, emulator: Emulator, logger: logging.Logger) -> None:
        self.emulator = emulator
        self.logger = logger
        self.client = ControlPlane(
            Config(base_url=emulator.url, sse_idle_timeout=IDLE_TIMEOUT), __version__, logger
        )
        self.node_id = ""
        self.registration: RegisterResponse | None = None
        self.verifier: Ed25519Verifier | None = None
        self.manager: SSEManager | None = None
        self.manager_task: asyncio.Task[None] | None = None
        self.published_ids: list[str] = []
        self.rejected_ids: list[str] = []
        self.received: list[SignedEnvelope] = []
        self._arrived = asyncio.Event()

    # --- plumbing -------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the event connection (if it runs) and close the client."""
        try:
            await self._stop_manager()
        finally:
            await self.client.aclose()

    async def _stop_manager(self) -> None:
        task, self.manager_task = self.manager_task, None
        if task is None or self.manager is None:
            return
        self.manager.shutdown()
        with contextlib.suppress(PlexdError):
            await _within(task, "the event connection to shut down")

    async def _on_event(self, envelope: SignedEnvelope) -> None:
        # A signing_key_rotated event has already updated the verifier: SSEManager
        # follows rotations itself, before handlers run.
        self.received.append(envelope)
        self._arrived.set()

    async def _wait_until(self, done: Callable[[], bool], what: str) -> None:
        """Wait until ``done()`` holds, re-checked whenever an event arrives."""

        async def arrivals() -> None:
            while not done():
                self._check_manager_running()
                self._arrived.clear()
                await self._arrived.wait()

        await _within(arrivals(), what)

    def _check_manager_running(self) -> None:
        task = self.manager_task
        if task is None or not task.done():
            return
        error = None if task.cancelled() else task.exception()
        raise DemoFailed(f"the event connection stopped: {error or 'cancelled'}")

    def _received_ids(self) -> list[str]:
        return [envelope.event_id for envelope in self.received]

    async def _wait_for_events(self, event_ids: Sequence[str], what: str) -> None:
        wanted = set(event_ids)
        await self._wait_until(lambda: wanted <= set(self._received_ids()), what)

    def _publish(self, items: Iterable[tuple[str, Any]]) -> list[str]:
        """Publish events to the node; returns their ids."""
        published = [str(event.id) for event in self.emulator.publish_many(self.node_id, items)]
        self.published_ids.extend(published)
        return published

    def _event_requests(self, since: int = 0) -> list[RecordedCall]:
        return [
            call
            for call in self.emulator.calls[since:]
            if call.method == "GET" and call.path.endswith("/events")
        ]

    def _duplicates(self) -> list[str]:
        ids = self._received_ids()
        return sorted({event_id for event_id in ids if ids.count(event_id) > 1}, key=int)

    def _check_no_duplicates(self) -> None:
        duplicated = self._duplicates()
        expect(not duplicated, f"events delivered more than once: {', '.join(duplicated)}")

    # --- the steps ----------------------------------------------------------------------

    async def register(self) -> str:
        public_key = base64.b64encode(os.urandom(32)).decode("ascii")
        registration = await self.client.register(
            RegisterRequest(
                token=self.emulator.bootstrap_token,
                public_key=public_key,
                hostname="demo-node",
                metadata={"role": "demo"},
            )
        )
        expect(bool(registration.node_id), "registration returned no node_id")
        expect(bool(registration.node_secret_key), "registration returned no node token")
        expect(
            registration.signing_public_key == self.emulator.signing_public_key,
            "registration handed out a signing key that is not the control plane's",
        )
        self.registration = registration
        self.node_id = registration.node_id
        self.client.set_auth_token(registration.node_secret_key)
        self.verifier = Ed25519Verifier.from_register_response(registration, logger=self.logger)
        return (
            f"registered {self.node_id} (mesh IP {registration.mesh_ip}); "
            f"signing key {registration.signing_public_key[:12]}... from the registration"
        )

    async def heartbeat(self) -> str:
        answer = await self.client.heartbeat(
            self.node_id,
            HeartbeatRequest(
                node_id=self.node_id,
                timestamp=datetime.now(UTC),
                status="healthy",
                uptime="3s",
                binary_checksum="sha256:demo",
            ),
        )
        heartbeats = self.emulator.counts(self.node_id)["heartbeats"]
        expect(heartbeats == 1, f"the control plane recorded {heartbeats} heartbeats, not 1")
        return (
            f"heartbeat accepted (reconcile={str(answer.reconcile).lower()}, "
            f"rotate_keys={str(answer.rotate_keys).lower()})"
        )

    async def fetch_state(self) -> str:
        assert self.registration is not None
        state = await self.client.fetch_state(self.node_id)
        keys = state.signing_keys
        expect(keys is not None, "the state carries no signing_keys")
        assert keys is not None
        expect(
            keys.current == self.registration.signing_public_key,
            "the state's signing key differs from the registration's",
        )
        return (
            f"state fetched: {len(state.peers)} peers, {len(state.policies)} policies; "
            "its signing key matches the registration's"
        )

    async def decrypt_secret(self) -> str:
        assert self.registration is not None
        self.emulator.put_secret(self.node_id, SECRET_KEY, SECRET_VALUE)
        secret = await self.client.fetch_secret(self.node_id, SECRET_KEY)
        # AES-256-GCM, keyed with the node_secret_key the registration handed out.
        value = decrypt_secret(self.registration.node_secret_key, secret)
        expect(value == SECRET_VALUE, "the decrypted secret differs from what was stored")
        return (
            f"secret {SECRET_KEY} (version {secret.version}) fetched and decrypted with the "
            f"node's secret key (AES-256-GCM): {len(value)} bytes, as stored"
        )

    async def stream(self) -> str:
        manager = self.manager = SSEManager(self.client, self.verifier, self.logger)
        manager.set_reconnect_intervals(RECONNECT_BASE, RECONNECT_MAX)
        for event_type in EventType:
            manager.register_handler(event_type, self._on_event)
        self.manager_task = asyncio.create_task(manager.start(self.node_id))
        self.manager_task.add_done_callback(lambda _: self._arrived.set())
        await _within(self.emulator.wait_for_streams(self.node_id), "the event stream to open")
        published = self._publish((event_type, payload) for event_type, payload in PAYLOADS.items())
        await self._wait_for_events(published, f"the first {len(published)} events")
        expect(self._received_ids() == published, "the events arrived out of order")
        return (
            f"streamed and verified {len(published)} events, one of each type but "
            "signing_key_rotated (it comes with the key rotation below)"
        )

    async def peer_joins(self) -> str:
        peer = ControlPlane(Config(base_url=self.emulator.url), __version__, self.logger)
        async with peer:
            joined = await peer.register(
                RegisterRequest(
                    token=self.emulator.bootstrap_token,
                    public_key=base64.b64encode(os.urandom(32)).decode("ascii"),
                    hostname="demo-peer",
                )
            )
        # Nobody publishes this one: the control plane announces a new node by itself.

        def announced() -> SignedEnvelope | None:
            for envelope in self.received:
                if envelope.event_type == EventType.PEER_ADDED and (
                    decode_raw(envelope.payload, Peer).id == joined.node_id
                ):
                    return envelope
            return None

        await self._wait_until(lambda: announced() is not None, "the new peer's peer_added")
        event = announced()
        assert event is not None
        self.published_ids.append(event.event_id)
        state = await self.client.fetch_state(self.node_id)
        expect(
            joined.node_id in [p.id for p in state.peers],
            "the node's state does not list the new peer",
        )
        return (
            f"peer {joined.node_id} (demo-peer, mesh IP {joined.mesh_ip}) registered; the "
            f"control plane pushed peer_added (event {event.event_id}, verified) to "
            f"{self.node_id} by itself, and its state lists the peer"
        )

    async def replay_after_disconnect(self) -> str:
        last_before = self._received_ids()[-1]
        mark = len(self.emulator.calls)
        self.emulator.set_faults(
            self.node_id, status=503, status_scope="events", status_count=REFUSED_RECONNECTS
        )
        closed = self.emulator.disconnect_streams(self.node_id)
        expect(closed == 1, f"expected 1 open stream to drop, found {closed}")
        # Published in the same step of the event loop as the drop: none of them can
        # travel on the old connection, so they can only arrive by replay.
        missed = self._publish(
            [
                (EventType.PEER_ENDPOINT_CHANGED, {"peer_id": "peer-7", "endpoint": "192.0.2.7:1"}),
                (EventType.POLICY_UPDATED, PAYLOADS[EventType.POLICY_UPDATED]),
                (EventType.NODE_STATE_UPDATED, {"version": 3}),
                (EventType.PEER_REMOVED, {"peer_id": "peer-9"}),
                (EventType.NODE_SECRETS_UPDATED, {"keys": ["api-key"]}),
            ]
        )
        await self._wait_for_events(missed, "the events published while disconnected")
        self._check_no_duplicates()
        expect(
            self._received_ids()[-len(missed) :] == missed,
            "the replayed events arrived out of order",
        )
        attempts = self._event_requests(mark)
        refused = [call for call in attempts if call.status == 503]
        resumed = [call for call in attempts if call.status == 200]
        expect(
            len(refused) == REFUSED_RECONNECTS,
            f"expected {REFUSED_RECONNECTS} refused reconnects, saw {len(refused)}",
        )
        expect(len(resumed) == 1, f"expected 1 successful reconnect, saw {len(resumed)}")
        sent = resumed[0].headers.get("Last-Event-ID")
        expect(sent == last_before, f"reconnected with Last-Event-ID {sent!r}, not {last_before}")
        return (
            f"server dropped the stream and refused {len(refused)} reconnects (503, backoff); "
            f"resumed with Last-Event-ID: {sent}; the {len(missed)} events published "
            "meanwhile arrived once each, in order"
        )

    async def rotate_signing_key(self) -> str:
        old_key = self.emulator.signing_public_key
        # No transition: the old key is retired at once, so the events that follow verify
        # only if the verifier switched to the new key.
        keys = self.emulator.rotate_signing_key(transition=0)
        expect(keys.current != old_key, "the emulator kept its signing key")
        rotated = self.emulator.events(self.node_id)[-1]
        expect(
            rotated.event_type == EventType.SIGNING_KEY_ROTATED,
            "the rotation sent no signing_key_rotated event",
        )
        self.published_ids.append(rotated.event_id)
        after = self._publish(
            [
                (EventType.PEER_ADDED, PAYLOADS[EventType.PEER_ADDED]),
                (EventType.ACTION_REQUEST, PAYLOADS[EventType.ACTION_REQUEST]),
                (EventType.ROTATE_KEYS, PAYLOADS[EventType.ROTATE_KEYS]),
            ]
        )
        await self._wait_for_events(
            [rotated.event_id, *after], "the rotation event and the events signed with the new key"
        )
        state = await self.client.fetch_state(self.node_id)
        expect(
            state.signing_keys is not None and state.signing_keys.current == keys.current,
            "the state does not show the new signing key",
        )
        return (
            f"signing key rotated to {keys.current[:12]}... (old key retired at once); the "
            f"verifier took it from the signing_key_rotated event; {len(after)} events "
            "signed with the new key verified"
        )

    async def reject_tampered_event(self) -> str:
        assert self.manager is not None
        mark = len(self.emulator.calls)
        self.emulator.set_faults(self.node_id, corrupt_signatures=1)
        tampered, intact = self._publish(
            [
                (EventType.POLICY_UPDATED, PAYLOADS[EventType.POLICY_UPDATED]),
                (EventType.SESSION_REVOKED, PAYLOADS[EventType.SESSION_REVOKED]),
            ]
        )
        await self._wait_for_events([intact], "the event after the tampered one")
        expect(tampered not in self._received_ids(), "the tampered event was accepted")
        self.rejected_ids.append(tampered)
        expect(
            self.manager.last_event_id == intact,
            f"last_event_id is {self.manager.last_event_id!r}, not {intact}",
        )
        expect(not self._event_requests(mark), "the stream reconnected instead of going on")
        return (
            f"event {tampered} with a corrupted signature was rejected, logged and "
            f"skipped; the stream went on (event {intact} verified, no reconnect)"
        )

    async def deregister(self) -> str:
        await self._stop_manager()
        await self.client.deregister(self.node_id)
        try:
            await self.client.fetch_state(self.node_id)
        except UnauthorizedError:
            pass
        else:
            raise DemoFailed("the node's token still works after deregistration")
        expect(self.node_id not in self.emulator.nodes, "the node is still registered")
        return f"deregistered {self.node_id}; its token is refused from now on (HTTP 401)"

    def steps(self) -> list[Callable[[], Awaitable[str]]]:
        return [
            self.register,
            self.heartbeat,
            self.fetch_state,
            self.decrypt_secret,
            self.stream,
            self.peer_joins,
            self.replay_after_disconnect,
            self.rotate_signing_key,
            self.reject_tampered_event,
            self.deregister,
        ]

    def fill(self, report: DemoReport) -> None:
        report.published = len(self.published_ids)
        report.rejected = len(self.rejected_ids)
        report.delivered = len(self.received)
        report.event_types = {envelope.event_type for envelope in self.received}
        report.connections = sum(1 for call in self._event_requests() if call.status == 200)

    def account(self) -> tuple[list[str], list[str]]:
        """The published events that never arrived (nor were rejected), and the duplicates."""
        settled = set(self._received_ids()) | set(self.rejected_ids)
        lost = [event_id for event_id in self.published_ids if event_id not in settled]
        return lost, self._duplicates()
