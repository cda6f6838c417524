"""Emulator, state layer (no aiohttp): everything the control plane knows, and its rules.

:class:`EmulatorState` owns the nodes and their tokens, the bootstrap tokens, the
signing keyring, the faults, every node's event log and publishing into it, the
record of calls and the artifacts. It never sees an HTTP request: the node API and
the admin API (:mod:`.node_api`, :mod:`.admin`) read and change it, and
:class:`~plexd.emulator.Emulator` is this state with a server in front of it.

Everything is driven from one event loop: call the methods from that loop's thread.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from nacl.signing import SigningKey

from plexd import api

from . import faults as f
from .calls import RecordedCall
from .nodes import (
    DEFAULT_ARTIFACT_SIZE,
    Node,
    SigningKeyring,
    artifact_blob,
    check_transition,
    encrypt_secret,
    mesh_ip,
    new_node_secret_key,
    new_token,
)
from .stream import EventLog, StreamConnection

# WIRE.md: "The server sends a `:` comment line as keep-alive (about every 25 s)".
DEFAULT_KEEPALIVE_INTERVAL = 25.0
# How long a signing_key_rotated transition lasts unless told otherwise (seconds).
DEFAULT_TRANSITION = 300.0
# The memory bounds (the oldest go first when one is reached): events kept per node for
# replay, calls kept in the record, bytes of request bodies kept with them (counted as
# received JSON), bytes of artifact blobs kept.
DEFAULT_MAX_EVENTS = 10_000
DEFAULT_MAX_CALLS = 10_000
DEFAULT_MAX_RECORDED_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_ARTIFACT_BYTES = 64 * 1024 * 1024

_log = logging.getLogger("plexd.emulator")


@dataclass(frozen=True)
class PublishedEvent:
    """An event in a node's log: its SSE ``id`` and the signed envelope sent as ``data``."""

    node_id: str
    id: int
    envelope: api.SignedEnvelope


def check_event_type(event_type: str) -> None:
    """Raise ValueError for an event type an SSE ``event:`` line cannot carry."""
    if "\n" in event_type or "\r" in event_type:
        raise ValueError("event_type must not contain a line break")


def _payload_json(payload: Any) -> bytes:
    """The JSON text of an event payload: bytes and ``msgspec.Raw`` are taken as JSON text
    as they are; anything else (dicts, lists, wire types, None) is encoded."""
    if isinstance(payload, msgspec.Raw):
        return bytes(payload)
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    return msgspec.json.encode(payload)


def _next_version(previous: api.DataEntry | api.SecretResponse | None) -> int:
    return previous.version + 1 if previous else 1


class EmulatorState:
    """The in-memory control plane: nodes, tokens, signing keys, faults, event logs.

    ``tokens`` are the bootstrap tokens registration accepts (reusable; one random
    token when none are given: see :attr:`bootstrap_token`). ``keepalive_interval`` is
    the seconds between ``:`` comments on idle streams; ``retry_ms`` makes every stream
    start with ``retry: <ms>``. ``signing_seed`` (32 bytes) fixes the first signing key;
    ``artifact_size`` is the size of the generated artifacts. ``peer_events`` (default
    on) pushes ``peer_added``, ``peer_removed``, ``peer_key_rotated`` and
    ``peer_endpoint_changed`` to the other nodes as nodes come, go and change; turn it off
    for thousands of nodes (n nodes registering sign n²/2 events).

    Memory is bounded, the oldest going first: ``max_events`` events per node are kept
    for replay; :attr:`calls` keeps the last ``max_calls`` requests, and fewer when their
    bodies exceed ``max_recorded_bytes`` in all; :attr:`artifacts` keeps
    ``max_artifact_bytes`` of blobs (the most recent one always).

    State is plain data on the object: :attr:`nodes` (id → :class:`Node`, whose
    lists hold what each node reported), :attr:`calls` (node-API requests, in
    order), :attr:`artifacts`. Node ids are ``node-1``, ``node-2``, … in
    registration order.
    """

    def __init__(
        self,
        *,
        tokens: Iterable[str] | None = None,
        keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL,
        retry_ms: int | None = None,
        signing_seed: bytes | None = None,
        artifact_size: int = DEFAULT_ARTIFACT_SIZE,
        peer_events: bool = True,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_calls: int = DEFAULT_MAX_CALLS,
        max_recorded_bytes: int = DEFAULT_MAX_RECORDED_BYTES,
        max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
    ) -> None:
        if not keepalive_interval > 0:
            raise ValueError("keepalive_interval must be positive")
        if retry_ms is not None and retry_ms < 0:
            raise ValueError("retry_ms must not be negative")
        for name, bound in (("max_events", max_events), ("max_calls", max_calls)):
            if bound < 1:
                raise ValueError(f"{name} must be at least 1")
        if max_recorded_bytes < 0 or max_artifact_bytes < 0 or artifact_size < 0:
            raise ValueError("byte bounds and artifact_size must not be negative")
        self.bootstrap_tokens: list[str] = list(tokens) if tokens else [new_token()]
        self.keepalive_interval = keepalive_interval
        self.retry_ms = retry_ms
        self.artifact_size = artifact_size
        self.peer_events = peer_events
        self.max_events = max_events
        self.max_calls = max_calls
        self.max_recorded_bytes = max_recorded_bytes
        self.max_artifact_bytes = max_artifact_bytes
        self.nodes: dict[str, Node] = {}
        self.calls: list[RecordedCall] = []
        self.artifacts: dict[tuple[str, str, str], bytes] = {}
        self._recorded_bytes = 0
        self._keys = SigningKeyring(signing_seed)
        self._by_token: dict[str, Node] = {}
        self._faults: dict[str, f.Faults] = {}
        self._registered = 0
        self._streams_event = asyncio.Event()

    # --- nodes and tokens -----------------------------------------------------------------

    @property
    def bootstrap_token(self) -> str:
        """The first bootstrap token (the generated one when none were given)."""
        return self.bootstrap_tokens[0]

    def is_bootstrap_token(self, token: str) -> bool:
        """Whether registration accepts ``token``."""
        given = token.encode()
        return any(hmac.compare_digest(given, known.encode()) for known in self.bootstrap_tokens)

    def node_for_token(self, token: str | None) -> Node | None:
        """The node whose bearer token ``token`` is; None for none or an unknown one."""
        return self._by_token.get(token) if token else None

    def create_node(
        self,
        *,
        hostname: str = "node",
        public_key: str = "",
        metadata: Mapping[str, str] | None = None,
        capabilities: api.CapabilitiesPayload | None = None,
    ) -> Node:
        """Register a node directly (no HTTP); its id is ``node-<n>`` in registration order."""
        self._registered += 1
        sequence = self._registered
        node = Node(
            id=f"node-{sequence}",
            token=new_node_secret_key(),
            mesh_ip=mesh_ip(sequence),
            hostname=hostname,
            public_key=public_key or base64.b64encode(os.urandom(32)).decode("ascii"),
            metadata=dict(metadata or {}),
            capabilities=capabilities,
            events=EventLog(self.max_events),
        )
        self._announce(node, api.EventType.PEER_ADDED, node.as_peer())
        self.nodes[node.id] = node
        self._by_token[node.token] = node
        _log.info("node registered", extra={"node_id": node.id})
        return node

    def register_node(
        self,
        hostname: str = "node",
        *,
        public_key: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[str, str]:
        """Register a node without HTTP; returns ``(node_id, token)`` for the client."""
        node = self.create_node(hostname=hostname, public_key=public_key, metadata=metadata)
        return node.id, node.token

    def remove_node(self, node_id: str) -> None:
        """Deregister a node: its token stops working and its streams end."""
        node = self.nodes.pop(node_id)
        self._by_token.pop(node.token, None)
        node.events.close_streams()
        self._announce(node, api.EventType.PEER_REMOVED, {"peer_id": node.id})
        _log.info("node deregistered", extra={"node_id": node_id})

    def rotate_node_key(self, node_id: str, public_key: str) -> Node:
        """Take a node's new WireGuard public key, as ``POST /v1/keys/rotate`` does: its
        pending ``rotate_keys`` is satisfied and the other nodes get ``peer_key_rotated``."""
        node = self.node(node_id)
        node.public_key = public_key
        node.rotate_keys = False
        self._announce(node, api.EventType.PEER_KEY_ROTATED, node.as_peer())
        return node

    def set_endpoint(self, node_id: str, report: api.EndpointReport) -> Node:
        """Take a node's endpoint report; a new public endpoint is pushed to the other
        nodes as ``peer_endpoint_changed``."""
        node = self.node(node_id)
        before = node.endpoint.public_endpoint if node.endpoint else ""
        node.endpoint = report
        if report.public_endpoint != before:
            self._announce(node, api.EventType.PEER_ENDPOINT_CHANGED, node.as_peer())
        return node

    def _announce(self, node: Node, event_type: api.EventType, payload: Any) -> None:
        """Publish a peer event about ``node`` to every other registered node."""
        if not self.peer_events:
            return
        for other in self.nodes.values():
            if other is not node:
                self.publish(other.id, event_type, payload)

    def node(self, node_id: str) -> Node:
        """The state of a registered node (raises KeyError for an unknown id)."""
        try:
            return self.nodes[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r}") from None

    def peers_of(self, node: Node) -> list[api.Peer]:
        """The other registered nodes as ``node`` sees them, then the peers seeded for it."""
        peers = [other.as_peer() for other in self.nodes.values() if other is not node]
        peers.extend(node.peers.values())
        return peers

    def counts(self, node_id: str) -> dict[str, int]:
        """How many heartbeats, metrics, logs, audit entries, … the node sent."""
        return self.node(node_id).counts()

    # --- state a test sets up ------------------------------------------------------------

    def put_data(
        self, node_id: str, key: str, payload: Any, *, content_type: str = "application/json"
    ) -> api.DataEntry:
        """Add or replace a data entry of the node (its version goes up by one)."""
        node = self.node(node_id)
        entry = api.DataEntry(
            key=key,
            content_type=content_type,
            payload=msgspec.Raw(_payload_json(payload)),
            version=_next_version(node.data.get(key)),
            updated_at=datetime.now(UTC),
        )
        node.data[key] = entry
        return entry

    def put_secret(self, node_id: str, key: str, value: bytes | str) -> api.SecretResponse:
        """Add or replace a secret of the node (its version goes up by one).

        ``value`` (str: its UTF-8 bytes) is stored encrypted with the node's secret key,
        as the node decrypts it: ``plexd.api.decrypt_secret(node_secret_key, secret)``.
        Needs the ``cryptography`` package (``ConfigError`` without it).
        """
        node = self.node(node_id)
        plaintext = value.encode() if isinstance(value, str) else bytes(value)
        secret = encrypt_secret(node.token, key, plaintext, _next_version(node.secrets.get(key)))
        node.secrets[key] = secret
        return secret

    def add_peer(self, node_id: str, peer: api.Peer) -> api.Peer:
        """Seed a peer the node sees (in its state, registration and key-rotation answers)
        besides the other registered nodes; the node gets ``peer_added`` (when
        ``peer_events`` is on). A peer with the same id is replaced."""
        node = self.node(node_id)
        node.peers[peer.id] = peer
        if self.peer_events:
            self.publish(node_id, api.EventType.PEER_ADDED, peer)
        return peer

    def put_policy(self, node_id: str, policy: api.Policy) -> api.Policy:
        """Add or replace (by id) a policy of the node's state."""
        node = self.node(node_id)
        node.policies = [p for p in node.policies if p.id != policy.id] + [policy]
        return policy

    def set_metadata(self, node_id: str, metadata: Mapping[str, str]) -> dict[str, str]:
        """Merge ``metadata`` into the node's; returns the whole of it."""
        node = self.node(node_id)
        node.metadata.update(metadata)
        return node.metadata

    def artifact(self, version: str, os: str, arch: str) -> bytes:
        """The blob served for an artifact (generated once; set ``artifacts[...]`` to override).

        Blobs are kept up to ``max_artifact_bytes`` in all, the oldest going first.
        """
        key = (version, os, arch)
        blob = self.artifacts.get(key)
        if blob is None:
            blob = self.artifacts[key] = artifact_blob(version, os, arch, self.artifact_size)
            self._trim_artifacts()
        return blob

    def _trim_artifacts(self) -> None:
        total = sum(len(blob) for blob in self.artifacts.values())
        while total > self.max_artifact_bytes and len(self.artifacts) > 1:
            oldest = next(iter(self.artifacts))
            total -= len(self.artifacts.pop(oldest))

    # --- the call record ------------------------------------------------------------------

    def record_call(self, record: RecordedCall) -> None:
        """Add a request to :attr:`calls` (the oldest go when ``max_calls`` is reached)."""
        self.calls.append(record)
        self._trim_calls()

    def record_body(self, record: RecordedCall, body: bytes, decoded: Any) -> None:
        """Keep a request's decoded body with its record; ``body`` (the JSON received)
        counts against ``max_recorded_bytes``. A body larger than the bound is not kept."""
        if len(body) > self.max_recorded_bytes:
            return
        record.body = decoded
        record.body_size = len(body)
        self._recorded_bytes += len(body)
        self._trim_calls()

    def _trim_calls(self) -> None:
        calls = self.calls
        if self._recorded_bytes > self.max_recorded_bytes:
            # A test may have cleared or sliced the list itself: count again before dropping.
            self._recorded_bytes = sum(call.body_size for call in calls)
        drop = 0
        while drop < len(calls) and (
            len(calls) - drop > self.max_calls or self._recorded_bytes > self.max_recorded_bytes
        ):
            self._recorded_bytes -= calls[drop].body_size
            drop += 1
        if drop:
            del calls[:drop]

    # --- signing and publishing -------------------------------------------------------------

    @property
    def signing_public_key(self) -> str:
        """The current signing key's public half, base64 (what registration hands out)."""
        return self.signing_keys.current

    @property
    def signing_keys(self) -> api.SigningKeys:
        """The signing keys as ``StateResponse.signing_keys`` shows them now."""
        return self._keys.signing_keys()

    @property
    def signing_key(self) -> SigningKey:
        """The current private signing key (for tests that sign envelopes themselves)."""
        return self._keys.current

    def publish(
        self,
        node_id: str,
        event_type: str,
        payload: Any = None,
        *,
        issued_at: datetime | str | None = None,
        nonce: str | None = None,
    ) -> PublishedEvent:
        """Sign an event, add it to the node's log and send it to its open streams now.

        ``payload`` is any JSON-encodable value (maps written with sorted keys, as Go
        does), a wire type, or JSON text as bytes / ``msgspec.Raw`` (compacted; invalid
        JSON raises ``EnvelopeError``). ``issued_at`` and ``nonce`` default to now and a
        random nonce (set them to test staleness and replay checks).
        """
        node = self.node(node_id)
        check_event_type(event_type)
        event_id = node.events.next_id
        envelope = api.sign_envelope(
            self._keys.current, str(event_type), str(event_id), payload,
            issued_at=issued_at, nonce=nonce,
        )  # fmt: skip
        node.events.append((envelope,))
        return PublishedEvent(node_id, event_id, envelope)

    def publish_many(self, node_id: str, events: Iterable[tuple[str, Any]]) -> list[PublishedEvent]:
        """Publish ``(event_type, payload)`` pairs in order, waking the streams once.

        All or nothing: a bad event type raises before any event is added.
        """
        node = self.node(node_id)
        key = self._keys.current
        first = node.events.next_id
        published: list[PublishedEvent] = []
        for offset, (event_type, payload) in enumerate(events):
            check_event_type(event_type)
            event_id = first + offset
            envelope = api.sign_envelope(key, str(event_type), str(event_id), payload)
            published.append(PublishedEvent(node_id, event_id, envelope))
        node.events.append(event.envelope for event in published)
        return published

    def events(self, node_id: str) -> list[api.SignedEnvelope]:
        """The envelopes the node's log holds, in order (the last ``max_events``
        published; their ``event_id`` is their SSE id)."""
        return list(self.node(node_id).events.envelopes)

    def rotate_signing_key(
        self, transition: float = DEFAULT_TRANSITION, *, seed: bytes | None = None
    ) -> api.SigningKeys:
        """Switch to a new signing key; the old one stays valid ``transition`` seconds.

        Every node gets a ``signing_key_rotated`` event whose payload is the new
        SigningKeys. That event is signed with the OLD key, so a client that only
        knows the old key can verify it; every later event is signed with the new key.
        """
        check_transition(transition)
        old = self._keys.rotate(transition, seed)
        keys = self._keys.signing_keys()
        for node in self.nodes.values():
            event_id = node.events.next_id
            envelope = api.sign_envelope(
                old, api.EventType.SIGNING_KEY_ROTATED.value, str(event_id), keys
            )
            node.events.append((envelope,))
        _log.info("signing key rotated", extra={"transition": transition})
        return keys

    # --- streams ------------------------------------------------------------------------

    def take_stream_plan(self, node_id: str) -> f.StreamPlan:
        """The cut/stall plan of a new stream connection of the node (consumes the fault)."""
        return f.take_stream_plan(self.applicable_faults(node_id))

    def new_stream(
        self,
        node: Node,
        last_event_id: str | None,
        write: Callable[[bytes], Awaitable[None]],
        plan: f.StreamPlan,
    ) -> StreamConnection:
        """A connection streaming the node's log through ``write``, cut or stalled as
        ``plan`` says; it looks the event faults up on every batch.

        Without a cursor (``last_event_id`` None) it sends new events only; with one, the
        events after it. A cursor the log does not hold (dropped by ``max_events``, never
        issued, not a number) replays every event the log still has, and is logged.
        """
        log = node.events
        resume = log.resume_point(last_event_id)
        if not resume.held:
            _log.warning(
                "cursor not in the event log: replaying the %d events it holds",
                len(log),
                extra={
                    "node_id": node.id,
                    "last_event_id": ascii((last_event_id or "")[:64]),
                    "first_id": log.first_id,
                },
            )
        return StreamConnection(
            log,
            resume.next_id,
            write,
            lambda: self.applicable_faults(node.id),
            keepalive_interval=self.keepalive_interval,
            retry_ms=self.retry_ms,
            plan=plan,
        )

    @contextmanager
    def open_stream(self, stream: StreamConnection) -> Iterator[None]:
        """Count ``stream`` among its node's open streams while the block runs."""
        streams = stream.log.streams
        streams.add(stream)
        self._streams_changed()
        try:
            yield
        finally:
            streams.discard(stream)
            self._streams_changed()

    def stream_count(self, node_id: str) -> int:
        """How many event streams of the node are open now."""
        node = self.nodes.get(node_id)
        return len(node.events.streams) if node else 0

    async def wait_for_streams(self, node_id: str, count: int = 1) -> None:
        """Wait until the node has at least ``count`` open streams (bound it with
        ``asyncio.timeout``)."""
        while self.stream_count(node_id) < count:
            await self._streams_event.wait()

    def _streams_changed(self) -> None:
        # Wakes wait_for_streams: each waiter re-checks its count.
        event, self._streams_event = self._streams_event, asyncio.Event()
        event.set()

    def disconnect_streams(self, node_id: str) -> int:
        """End the node's open streams cleanly; returns how many there were."""
        return self.node(node_id).events.close_streams()

    def close_all_streams(self) -> None:
        """End every open stream of every node cleanly."""
        for node in self.nodes.values():
            node.events.close_streams()

    # --- faults ---------------------------------------------------------------------------

    def faults(self, node_id: str = f.ALL_NODES) -> f.Faults:
        """The live fault settings of a node (``"*"``: of every node); change them freely."""
        faults = self._faults.get(node_id)
        if faults is None:
            faults = self._faults[node_id] = f.Faults()
        return faults

    def set_faults(self, node_id: str, **changes: Any) -> f.Faults:
        """Change some fault fields of a node, validated (``msgspec.ValidationError`` if bad)."""
        faults = self.faults(node_id)
        merged = msgspec.convert({**f.faults_to_builtins(faults), **changes}, f.Faults)
        for name in merged.__struct_fields__:
            setattr(faults, name, getattr(merged, name))
        _log.info("faults set", extra={"node_id": node_id, "faults": sorted(changes)})
        return faults

    def clear_faults(self, node_id: str = f.ALL_NODES) -> f.Faults:
        """Switch every fault of a node off."""
        faults = self.faults(node_id)
        healthy = f.Faults()
        for name in healthy.__struct_fields__:
            setattr(faults, name, getattr(healthy, name))
        return faults

    def applicable_faults(self, node_id: str | None) -> list[f.Faults]:
        """The faults that apply to a request for ``node_id``: its own, then every node's."""
        found = []
        if node_id is not None and (own := self._faults.get(node_id)) is not None:
            found.append(own)
        if (everyone := self._faults.get(f.ALL_NODES)) is not None:
            found.append(everyone)
        return found
