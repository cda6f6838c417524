"""Emulator: a local Plexsphere control plane (aiohttp.web) with in-memory state.

Everything is driven from the event loop the emulator runs on: call its methods
from that loop's thread (from another thread, go through
``loop.call_soon_threadsafe`` or the admin API).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
from aiohttp import web
from nacl.signing import SigningKey

from plexd.api import _types as t
from plexd.api._client import ControlPlane
from plexd.api._config import Config
from plexd.api._verify import sign_envelope

from . import faults as f
from .admin import ADMIN_PREFIX, AdminAPI
from .exchange import (
    MAX_REQUEST_BODY,
    RecordedCall,
    Rejected,
    bearer_token,
    copy_headers,
    is_loopback,
    json_or_none,
    problem_response,
    read_body,
)
from .node_api import EVENTS_ROUTE, NodeAPI
from .state import DEFAULT_ARTIFACT_SIZE, Node, SigningKeyring, artifact_blob, mesh_ip, new_token

# WIRE.md: "The server sends a `:` comment line as keep-alive (about every 25 s)".
DEFAULT_KEEPALIVE_INTERVAL = 25.0
# How long stop() lets requests still in flight finish before cancelling them.
SHUTDOWN_TIMEOUT = 1.0
# How long a signing_key_rotated transition lasts unless told otherwise (seconds).
DEFAULT_TRANSITION = 300.0

_log = logging.getLogger("plexd.emulator")


@dataclass(frozen=True)
class PublishedEvent:
    """An event in a node's log: its SSE ``id`` and the signed envelope sent as ``data``."""

    node_id: str
    id: int
    envelope: t.SignedEnvelope


# Where the middleware keeps a request's call record, for handlers to complete.
_RECORD_KEY = web.RequestKey("plexd_emulator.record", RecordedCall)


def _payload_json(payload: Any) -> bytes:
    """The JSON text of an event payload: bytes and ``msgspec.Raw`` are taken as JSON text
    as they are; anything else (dicts, lists, wire types, None) is encoded."""
    if isinstance(payload, msgspec.Raw):
        return bytes(payload)
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    return msgspec.json.encode(payload)


class Emulator:
    """A local control plane implementing every endpoint of WIRE.md.

    ``tokens`` are the bootstrap tokens registration accepts (reusable; one random
    token when none are given: see :attr:`bootstrap_token`). ``admin_token`` guards the
    admin API under ``/_emulator/`` (None: open to loopback clients only).
    ``tls`` serves HTTPS with a certificate from a CA generated at start, written to
    :attr:`ca_file` (in ``tls_dir``, or a temporary directory removed at stop).
    ``keepalive_interval`` is the seconds between ``:`` comments on idle streams;
    ``retry_ms`` makes every stream start with ``retry: <ms>``. ``signing_seed``
    (32 bytes) fixes the first signing key; ``artifact_size`` is the size of the
    generated artifacts; ``access_log`` logs every request to ``aiohttp.access``.

    State is plain data on the object: :attr:`nodes` (id → :class:`Node`, whose
    lists hold what each node reported), :attr:`calls` (every node-API request, in
    order), :attr:`artifacts`. Node ids are ``node-1``, ``node-2``, … in
    registration order.
    """

    def __init__(
        self,
        *,
        tokens: Iterable[str] | None = None,
        admin_token: str | None = None,
        tls: bool = False,
        tls_dir: str | os.PathLike[str] | None = None,
        keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL,
        retry_ms: int | None = None,
        signing_seed: bytes | None = None,
        artifact_size: int = DEFAULT_ARTIFACT_SIZE,
        access_log: bool = False,
    ) -> None:
        if keepalive_interval <= 0:
            raise ValueError("keepalive_interval must be positive")
        if retry_ms is not None and retry_ms < 0:
            raise ValueError("retry_ms must not be negative")
        self.bootstrap_tokens: list[str] = list(tokens) if tokens else [new_token()]
        self.admin_token = admin_token
        self.tls = tls
        self.keepalive_interval = keepalive_interval
        self.retry_ms = retry_ms
        self.artifact_size = artifact_size
        self.nodes: dict[str, Node] = {}
        self.calls: list[RecordedCall] = []
        self.artifacts: dict[tuple[str, str, str], bytes] = {}
        self.ca_file: Path | None = None
        self.host = ""
        self.port = 0
        self._tls_dir = Path(tls_dir) if tls_dir is not None else None
        self._own_tls_dir: Path | None = None
        self._access_log = access_log
        self._keys = SigningKeyring(signing_seed)
        self._by_token: dict[str, Node] = {}
        self._faults: dict[str, f.Faults] = {}
        self._registered = 0
        self._runner: web.AppRunner | None = None
        self._streams_event = asyncio.Event()

    def __repr__(self) -> str:
        return f"Emulator(url={self.url if self._runner else None!r}, nodes={len(self.nodes)})"

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (port 0: an ephemeral port, see :attr:`port`)."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_REQUEST_BODY)
        NodeAPI(self).add_routes(app)
        AdminAPI(self).add_routes(app)
        runner = web.AppRunner(
            app,
            # A client that leaves cancels its handler: open streams end at once.
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            access_log=logging.getLogger("aiohttp.access") if self._access_log else None,
        )
        await runner.setup()
        try:
            ssl_context = self._make_tls(host) if self.tls else None
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            self._remove_own_tls_dir()
            raise
        self._runner = runner
        self.host = host
        self.port = int(runner.addresses[0][1])
        _log.info("emulator listening", extra={"url": self.url})

    async def stop(self) -> None:
        """End every stream, close the listener and every connection. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for node in self.nodes.values():
            node.events.close_streams()
        await runner.cleanup()
        self._remove_own_tls_dir()

    def _remove_own_tls_dir(self) -> None:
        if self._own_tls_dir is not None:
            shutil.rmtree(self._own_tls_dir, ignore_errors=True)
            self._own_tls_dir = None
            self.ca_file = None

    async def __aenter__(self) -> Emulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _make_tls(self, host: str) -> ssl.SSLContext:
        from .tls import generate_certificates, server_ssl_context

        directory = self._tls_dir
        if directory is None:
            directory = self._own_tls_dir = Path(tempfile.mkdtemp(prefix="plexd-emulator-"))
        hosts = [
            h for h in (host, "localhost", "127.0.0.1", "::1") if h not in ("", "0.0.0.0", "::")
        ]
        files = generate_certificates(directory, hosts)
        self.ca_file = files.ca_file
        return server_ssl_context(files)

    @property
    def url(self) -> str:
        """The base URL clients use (``http://127.0.0.1:<port>`` or ``https://…``)."""
        if self._runner is None:
            raise RuntimeError("the emulator is not running")
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context trusting the emulator's CA (TLS mode only)."""
        from .tls import client_ssl_context

        if self.ca_file is None:
            raise RuntimeError("the emulator is not serving TLS")
        return client_ssl_context(self.ca_file)

    def client(self, token: str = "", *, version: str = "0.0.0-emulator") -> ControlPlane:
        """A :class:`ControlPlane` for this emulator (plain HTTP), with ``token`` set.

        The caller closes it (``async with emulator.client(token) as cp:``).
        """
        client = ControlPlane(Config(base_url=self.url), version)
        client.set_auth_token(token)
        return client

    # --- nodes and authorization ------------------------------------------------------

    @property
    def bootstrap_token(self) -> str:
        """The first bootstrap token (the generated one when none were given)."""
        return self.bootstrap_tokens[0]

    def is_bootstrap_token(self, token: str) -> bool:
        """Whether registration accepts ``token``."""
        given = token.encode()
        return any(hmac.compare_digest(given, known.encode()) for known in self.bootstrap_tokens)

    def create_node(
        self,
        *,
        hostname: str = "node",
        public_key: str = "",
        metadata: Mapping[str, str] | None = None,
        capabilities: t.CapabilitiesPayload | None = None,
    ) -> Node:
        """Register a node directly (no HTTP); its id is ``node-<n>`` in registration order."""
        self._registered += 1
        sequence = self._registered
        node = Node(
            id=f"node-{sequence}",
            token=new_token(),
            mesh_ip=mesh_ip(sequence),
            hostname=hostname,
            public_key=public_key or base64.b64encode(os.urandom(32)).decode("ascii"),
            metadata=dict(metadata or {}),
            capabilities=capabilities,
        )
        self.nodes[node.id] = node
        self._by_token[node.token] = node
        _log.info("node registered", extra={"node_id": node.id, "hostname": hostname})
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
        _log.info("node deregistered", extra={"node_id": node_id})

    def node(self, node_id: str) -> Node:
        """The state of a registered node (raises KeyError for an unknown id)."""
        try:
            return self.nodes[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r}") from None

    def peers_of(self, node: Node) -> list[t.Peer]:
        """The other registered nodes, as ``node`` sees them."""
        return [other.as_peer() for other in self.nodes.values() if other is not node]

    def authenticate(self, request: web.Request) -> Node:
        """The node whose token the request carries; 401 for none or an unknown one."""
        token = bearer_token(request)
        if token is None:
            raise Rejected(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
        node = self._by_token.get(token)
        if node is None:
            raise Rejected(401, "unknown token", {"WWW-Authenticate": "Bearer"})
        return node

    def authorize(self, request: web.Request, node_id: str) -> Node:
        """The node ``node_id`` if the request's token may act on it: 401, then 404, then 403."""
        caller = self.authenticate(request)
        node = self.nodes.get(node_id)
        if node is None:
            raise Rejected(404, "no such node")
        if node is not caller:
            raise Rejected(403, "this token belongs to another node")
        return node

    def counts(self, node_id: str) -> dict[str, int]:
        """How many heartbeats, metrics, logs, audit entries, … the node sent."""
        return self.node(node_id).counts()

    # --- state a test sets up ------------------------------------------------------------

    def put_data(
        self, node_id: str, key: str, payload: Any, *, content_type: str = "application/json"
    ) -> t.DataEntry:
        """Add or replace a data entry of the node (its version goes up by one)."""
        node = self.node(node_id)
        previous = node.data.get(key)
        entry = t.DataEntry(
            key=key,
            content_type=content_type,
            payload=msgspec.Raw(_payload_json(payload)),
            version=previous.version + 1 if previous else 1,
            updated_at=datetime.now(UTC),
        )
        node.data[key] = entry
        return entry

    def put_secret(
        self, node_id: str, key: str, ciphertext: str, nonce: str = ""
    ) -> t.SecretResponse:
        """Add or replace a secret of the node (its version goes up by one)."""
        node = self.node(node_id)
        previous = node.secrets.get(key)
        secret = t.SecretResponse(
            key=key,
            ciphertext=ciphertext,
            nonce=nonce,
            version=previous.version + 1 if previous else 1,
        )
        node.secrets[key] = secret
        return secret

    def artifact(self, version: str, os: str, arch: str) -> bytes:
        """The blob served for an artifact (generated once; set ``artifacts[...]`` to override)."""
        key = (version, os, arch)
        blob = self.artifacts.get(key)
        if blob is None:
            blob = self.artifacts[key] = artifact_blob(version, os, arch, self.artifact_size)
        return blob

    # --- events ---------------------------------------------------------------------------

    @property
    def signing_public_key(self) -> str:
        """The current signing key's public half, base64 (what registration hands out)."""
        return self.signing_keys.current

    @property
    def signing_keys(self) -> t.SigningKeys:
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
        _check_event_type(event_type)
        event_id = node.events.next_id
        envelope = sign_envelope(
            self._keys.current, str(event_type), str(event_id), payload,
            issued_at=issued_at, nonce=nonce,
        )  # fmt: skip
        node.events.append((envelope,))
        return PublishedEvent(node_id, event_id, envelope)

    def publish_many(self, node_id: str, events: Iterable[tuple[str, Any]]) -> list[PublishedEvent]:
        """Publish ``(event_type, payload)`` pairs in order, waking the streams once."""
        node = self.node(node_id)
        key = self._keys.current
        first = node.events.next_id
        published: list[PublishedEvent] = []
        for offset, (event_type, payload) in enumerate(events):
            _check_event_type(event_type)
            event_id = first + offset
            envelope = sign_envelope(key, str(event_type), str(event_id), payload)
            published.append(PublishedEvent(node_id, event_id, envelope))
        node.events.append(event.envelope for event in published)
        return published

    def events(self, node_id: str) -> list[t.SignedEnvelope]:
        """Every envelope published to the node, in order (index i has id i + 1)."""
        return list(self.node(node_id).events.envelopes)

    def rotate_signing_key(
        self, transition: float = DEFAULT_TRANSITION, *, seed: bytes | None = None
    ) -> t.SigningKeys:
        """Switch to a new signing key; the old one stays valid ``transition`` seconds.

        Every node gets a ``signing_key_rotated`` event whose payload is the new
        SigningKeys. That event is signed with the OLD key, so a client that only
        knows the old key can verify it; every later event is signed with the new key.
        """
        old = self._keys.rotate(transition, seed)
        keys = self._keys.signing_keys()
        for node in self.nodes.values():
            event_id = node.events.next_id
            envelope = sign_envelope(
                old, t.EventType.SIGNING_KEY_ROTATED.value, str(event_id), keys
            )
            node.events.append((envelope,))
        _log.info("signing key rotated", extra={"transition": transition})
        return keys

    # --- streams ------------------------------------------------------------------------

    def stream_count(self, node_id: str) -> int:
        """How many event streams of the node are open now."""
        node = self.nodes.get(node_id)
        return len(node.events.streams) if node else 0

    async def wait_for_streams(self, node_id: str, count: int = 1) -> None:
        """Wait until the node has at least ``count`` open streams (bound it with
        ``asyncio.timeout``)."""
        while self.stream_count(node_id) < count:
            await self._streams_event.wait()

    def streams_changed(self) -> None:
        """Wake :meth:`wait_for_streams` callers (a stream opened or closed)."""
        event, self._streams_event = self._streams_event, asyncio.Event()
        event.set()

    def disconnect_streams(self, node_id: str) -> int:
        """End the node's open streams cleanly; returns how many there were."""
        return self.node(node_id).events.close_streams()

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

    def take_stream_plan(self, node_id: str) -> f.StreamPlan:
        """The cut/stall plan of a new stream connection of the node (consumes the fault)."""
        return f.take_stream_plan(self.applicable_faults(node_id))

    # --- request pipeline -----------------------------------------------------------------

    def mark_answered(self, request: web.Request, status: int) -> None:
        """Note the status of a request in its call record (streams do so at once)."""
        record = request.get(_RECORD_KEY)
        if record is not None:
            record.status = status

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if request.path.startswith(ADMIN_PREFIX):
            return await self._admin(request, handler)
        node_id = request.match_info.get("node_id")
        record = RecordedCall(
            method=request.method,
            path=request.rel_url.raw_path,
            node_id=node_id,
            headers=copy_headers(request),
        )
        request[_RECORD_KEY] = record
        self.calls.append(record)
        try:
            record.body = json_or_none(await read_body(request))
            response = self._fault_response(request, node_id) or await handler(request)
        except Rejected as rejected:
            response = problem_response(rejected)
        except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413, …
            record.status = exc.status
            raise
        record.status = response.status
        return response

    def _fault_response(self, request: web.Request, node_id: str | None) -> web.Response | None:
        if node_id is None:
            token = bearer_token(request)
            caller = self._by_token.get(token) if token else None
            node_id = caller.id if caller else None
        is_stream = request.match_info.route.name == EVENTS_ROUTE
        answer = f.take_status(self.applicable_faults(node_id), is_stream)
        if answer is None:
            return None
        headers = {"Retry-After": answer.retry_after} if answer.retry_after is not None else None
        return problem_response(Rejected(answer.status, "injected fault", headers))

    async def _admin(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        try:
            self._check_admin(request)
            return await handler(request)
        except Rejected as rejected:
            return problem_response(rejected)

    def _check_admin(self, request: web.Request) -> None:
        if self.admin_token is None:
            if not is_loopback(request.remote):
                raise Rejected(403, "the admin API without an admin token is for loopback only")
            return
        given = (bearer_token(request) or "").encode()
        if not hmac.compare_digest(given, self.admin_token.encode()):
            raise Rejected(401, "admin token required", {"WWW-Authenticate": "Bearer"})


def _check_event_type(event_type: str) -> None:
    if "\n" in event_type or "\r" in event_type:
        raise ValueError("event_type must not contain a line break")


async def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    tls: bool = False,
    tokens: Iterable[str] | None = None,
    ready: Callable[[Emulator], None] | None = None,
    **options: Any,
) -> None:
    """Run an emulator until cancelled; ``ready(emulator)`` is called once it listens.

    ``options`` are the other keyword arguments of :class:`Emulator`.
    """
    emulator = Emulator(tokens=tokens, tls=tls, **options)
    await emulator.start(host, port)
    try:
        if ready is not None:
            ready(emulator)
        await asyncio.Event().wait()
    finally:
        await emulator.stop()
