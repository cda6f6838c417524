"""Emulator, HTTP layer: the admin API under ``/_emulator/``, to drive the
:class:`~.state.EmulatorState` from outside its process (curl, the ``plexd-api emulator``
subcommands, :class:`~.admin_client.AdminClient`).

It is separate from the node API: node tokens mean nothing here. With an admin
token set, every admin request needs ``Authorization: Bearer <admin token>``;
without one, admin requests are accepted from loopback addresses only. Bodies are JSON;
a bad one is a 400 problem document, an unknown node a 404.

    GET    /_emulator/nodes                        nodes, their report counts, the signing keys
    POST   /_emulator/nodes                        register {"hostname", "public_key", "metadata"}
    POST   /_emulator/nodes/{node_id}/events       publish {"event_type", "payload"} or a list
    POST   /_emulator/nodes/{node_id}/flags        set {"reconcile": bool, "rotate_keys": bool}
    POST   /_emulator/nodes/{node_id}/disconnect   end the node's open event streams
    POST   /_emulator/nodes/{node_id}/peers        seed a Peer (or a list): peer_added to the node
    POST   /_emulator/nodes/{node_id}/policies     add or replace a Policy (or a list) by id
    POST   /_emulator/nodes/{node_id}/data         {"key", "payload", "content_type"} (or a list)
    POST   /_emulator/nodes/{node_id}/metadata     {"name": "value", ...} merged into its metadata
    POST   /_emulator/nodes/{node_id}/secrets      {"key", "value"} (or "value_base64"; or a list)
    GET    /_emulator/faults/{node_id}             the node's faults ("*": every node's)
    POST   /_emulator/faults/{node_id}             change the given fault fields
    POST   /_emulator/faults/{node_id}/clear       clear the node's faults (DELETE works too)
    DELETE /_emulator/faults/{node_id}             clear the node's faults
    POST   /_emulator/signing-key/rotate           {"transition": seconds}: rotate the key

The request bodies are the ``msgspec`` structs below (their docstrings say each field).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import msgspec
from aiohttp import web

from plexd.api import NULL, ConfigError, DataEntry, Peer, Policy

from .calls import bearer_token
from .exchange import (
    BEARER_CHALLENGE,
    Rejected,
    decode_body,
    is_loopback,
    json_response,
    problem_response,
    read_body,
)
from .faults import faults_to_builtins
from .nodes import MAX_TRANSITION
from .state import DEFAULT_TRANSITION, EmulatorState, check_event_type

ADMIN_PREFIX = "/_emulator/"

T = TypeVar("T")


class PublishRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One event to publish through the admin API; ``payload`` is any JSON."""

    event_type: str
    payload: msgspec.Raw = NULL


class FlagsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The heartbeat answers to set for a node; absent fields stay as they are."""

    reconcile: bool | None = None
    rotate_keys: bool | None = None


class RotateRequest(msgspec.Struct, forbid_unknown_fields=True):
    """How long the previous signing key stays valid after a rotation, in seconds
    (0 to a year)."""

    transition: Annotated[float, msgspec.Meta(ge=0, le=MAX_TRANSITION)] = DEFAULT_TRANSITION


class NodeRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A node to register without a bootstrap token (``public_key``: a random one when
    empty); the answer carries its ``node_id`` and ``token``."""

    hostname: str = "node"
    public_key: str = ""
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class DataRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A data entry of a node's state: ``payload`` is any JSON; the version goes up by one."""

    key: str
    payload: msgspec.Raw = NULL
    content_type: str = "application/json"


class SecretRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A secret of a node: ``value`` (text, sent as its UTF-8 bytes) or ``value_base64``
    (any bytes), stored encrypted with the node's secret key; the version goes up by one."""

    key: str
    value: str | None = None
    value_base64: str | None = None

    def plaintext(self) -> bytes:
        """The secret's bytes (400 unless exactly one of the two values is given)."""
        if (self.value is None) == (self.value_base64 is None):
            raise Rejected(400, "give exactly one of value and value_base64")
        if self.value is not None:
            return self.value.encode()
        try:
            return base64.b64decode(self.value_base64 or "", validate=True)
        except (binascii.Error, ValueError):
            raise Rejected(400, "value_base64 is not base64") from None


def _one_or_many(body: bytes, item: type[T]) -> list[T]:
    """A body holding one ``item`` object or a JSON list of them."""
    decoded: Any = decode_body(body, item | list[item])  # type: ignore[arg-type, valid-type]
    return decoded if isinstance(decoded, list) else [decoded]


class AdminAPI:
    """Request handlers of the admin API over ``state``, guarded by ``admin_token``
    (None: loopback clients only)."""

    def __init__(self, state: EmulatorState, admin_token: str | None) -> None:
        self._state = state
        self._admin_token = admin_token

    async def guarded(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Run ``handler`` for an admin request the caller may make; a problem otherwise."""
        try:
            self._check_caller(request)
            return await handler(request)
        except Rejected as rejected:
            return problem_response(rejected)

    def _check_caller(self, request: web.Request) -> None:
        if self._admin_token is None:
            if not is_loopback(request.remote):
                raise Rejected(403, "the admin API without an admin token is for loopback only")
            return
        given = (bearer_token(request.headers) or "").encode()
        if not hmac.compare_digest(given, self._admin_token.encode()):
            raise Rejected(401, "admin token required", BEARER_CHALLENGE)

    def add_routes(self, app: web.Application) -> None:
        """Register the admin endpoints on ``app``."""
        router = app.router
        node = "/_emulator/nodes/{node_id}"
        router.add_get("/_emulator/nodes", self.list_nodes)
        router.add_post("/_emulator/nodes", self.register_node)
        router.add_post(node + "/events", self.publish)
        router.add_post(node + "/flags", self.set_flags)
        router.add_post(node + "/disconnect", self.disconnect)
        router.add_post(node + "/peers", self.seed_peers)
        router.add_post(node + "/policies", self.seed_policies)
        router.add_post(node + "/data", self.seed_data)
        router.add_post(node + "/metadata", self.seed_metadata)
        router.add_post(node + "/secrets", self.seed_secrets)
        router.add_get("/_emulator/faults/{node_id}", self.get_faults)
        router.add_post("/_emulator/faults/{node_id}", self.set_faults)
        router.add_post("/_emulator/faults/{node_id}/clear", self.clear_faults)
        router.add_delete("/_emulator/faults/{node_id}", self.clear_faults)
        router.add_post("/_emulator/signing-key/rotate", self.rotate_signing_key)

    def _node_id(self, request: web.Request) -> str:
        node_id = request.match_info["node_id"]
        if node_id not in self._state.nodes:
            raise Rejected(404, "no such node")
        return node_id

    async def list_nodes(self, request: web.Request) -> web.Response:
        """Every node with its mesh IP and how many reports and events it has."""
        state = self._state
        nodes = [
            {"id": node.id, "hostname": node.hostname, "mesh_ip": node.mesh_ip, **node.counts()}
            for node in state.nodes.values()
        ]
        return json_response({"nodes": nodes, "signing_keys": state.signing_keys})

    async def publish(self, request: web.Request) -> web.Response:
        """Publish one event or a list of events to a node; answers their ids."""
        node_id = self._node_id(request)
        body = await read_body(request)
        requests = decode_body(body, PublishRequest | list[PublishRequest])  # type: ignore[arg-type]
        batch: list[PublishRequest] = requests if isinstance(requests, list) else [requests]
        for item in batch:
            try:
                check_event_type(item.event_type)
            except ValueError as exc:
                raise Rejected(400, str(exc)) from None
        published = self._state.publish_many(
            node_id, [(item.event_type, bytes(item.payload)) for item in batch]
        )
        return json_response({"ids": [event.id for event in published]})

    async def set_flags(self, request: web.Request) -> web.Response:
        """Set what the node's heartbeats are answered with."""
        node = self._state.nodes[self._node_id(request)]
        flags = decode_body(await read_body(request), FlagsRequest)
        if flags.reconcile is not None:
            node.reconcile = flags.reconcile
        if flags.rotate_keys is not None:
            node.rotate_keys = flags.rotate_keys
        return json_response({"reconcile": node.reconcile, "rotate_keys": node.rotate_keys})

    async def disconnect(self, request: web.Request) -> web.Response:
        """End the node's open event streams."""
        closed = self._state.disconnect_streams(self._node_id(request))
        return json_response({"closed": closed})

    async def get_faults(self, request: web.Request) -> web.Response:
        """The node's current faults."""
        faults = self._state.faults(request.match_info["node_id"])
        return json_response(faults_to_builtins(faults))

    async def set_faults(self, request: web.Request) -> web.Response:
        """Change the fault fields given in the body (a JSON object); the others stay."""
        changes = decode_body(await read_body(request), dict[str, Any])
        try:
            faults = self._state.set_faults(request.match_info["node_id"], **changes)
        except (msgspec.ValidationError, TypeError) as exc:
            raise Rejected(400, f"bad faults: {exc}") from None
        return json_response(faults_to_builtins(faults))

    async def clear_faults(self, request: web.Request) -> web.Response:
        """Switch every fault of the node off."""
        faults = self._state.clear_faults(request.match_info["node_id"])
        return json_response(faults_to_builtins(faults))

    async def rotate_signing_key(self, request: web.Request) -> web.Response:
        """Rotate the signing key; answers the new SigningKeys."""
        body = await read_body(request)
        rotate = decode_body(body, RotateRequest) if body.strip() else RotateRequest()
        return json_response(self._state.rotate_signing_key(rotate.transition))

    # --- seeding a node's state ---------------------------------------------------------

    async def register_node(self, request: web.Request) -> web.Response:
        """Register a node directly; answers its id, token (its node secret key) and mesh IP."""
        req = decode_body(await read_body(request), NodeRequest)
        node = self._state.create_node(
            hostname=req.hostname, public_key=req.public_key, metadata=req.metadata
        )
        return json_response(
            {"node_id": node.id, "token": node.token, "mesh_ip": node.mesh_ip}, status=201
        )

    async def seed_peers(self, request: web.Request) -> web.Response:
        """Add peers the node sees besides the registered nodes; each is announced with
        ``peer_added``. Answers the ids of every seeded peer of the node."""
        node_id = self._node_id(request)
        peers = _one_or_many(await read_body(request), Peer)
        if any(not peer.id for peer in peers):
            raise Rejected(400, "a peer needs an id")
        for peer in peers:
            self._state.add_peer(node_id, peer)
        return json_response({"peers": list(self._state.nodes[node_id].peers)})

    async def seed_policies(self, request: web.Request) -> web.Response:
        """Add or replace policies (by id) of the node's state; answers every policy id."""
        node_id = self._node_id(request)
        for policy in _one_or_many(await read_body(request), Policy):
            self._state.put_policy(node_id, policy)
        return json_response({"policies": [p.id for p in self._state.nodes[node_id].policies]})

    async def seed_data(self, request: web.Request) -> web.Response:
        """Add or replace data entries of the node's state; answers the entries."""
        node_id = self._node_id(request)
        entries: list[DataEntry] = [
            self._state.put_data(
                node_id, item.key, bytes(item.payload), content_type=item.content_type
            )
            for item in _one_or_many(await read_body(request), DataRequest)
        ]
        return json_response({"data": entries})

    async def seed_metadata(self, request: web.Request) -> web.Response:
        """Merge names and values into the node's metadata; answers all of it."""
        node_id = self._node_id(request)
        metadata = decode_body(await read_body(request), dict[str, str])
        return json_response({"metadata": self._state.set_metadata(node_id, metadata)})

    async def seed_secrets(self, request: web.Request) -> web.Response:
        """Store secrets of the node, encrypted with its secret key; answers their keys and
        versions (never the values)."""
        node_id = self._node_id(request)
        items = _one_or_many(await read_body(request), SecretRequest)
        values = [(item.key, item.plaintext()) for item in items]
        try:
            stored = [self._state.put_secret(node_id, key, value) for key, value in values]
        except ConfigError as exc:
            raise Rejected(500, str(exc)) from None
        return json_response({"secrets": [{"key": s.key, "version": s.version} for s in stored]})
