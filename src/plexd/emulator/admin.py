"""Emulator, HTTP layer: the admin API under ``/_emulator/``, to drive the
:class:`~.state.EmulatorState` from outside its process.

It is separate from the node API: node tokens mean nothing here. With an admin
token set, every admin request needs ``Authorization: Bearer <admin token>``;
without one, admin requests are accepted from loopback addresses only.

    GET    /_emulator/nodes                       nodes and their report counts
    POST   /_emulator/nodes/{node_id}/events      publish {"event_type", "payload"} or a list
    POST   /_emulator/nodes/{node_id}/flags       set {"reconcile": bool, "rotate_keys": bool}
    POST   /_emulator/nodes/{node_id}/disconnect  end the node's open event streams
    GET    /_emulator/faults/{node_id}            the node's faults ("*": every node's)
    POST   /_emulator/faults/{node_id}            change the given fault fields
    DELETE /_emulator/faults/{node_id}            clear the node's faults
    POST   /_emulator/signing-key/rotate          {"transition": seconds}: rotate the key
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from plexd.api import NULL

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
from .state import DEFAULT_TRANSITION, EmulatorState, check_event_type

ADMIN_PREFIX = "/_emulator/"


class PublishRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One event to publish through the admin API; ``payload`` is any JSON."""

    event_type: str
    payload: msgspec.Raw = NULL


class FlagsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The heartbeat answers to set for a node; absent fields stay as they are."""

    reconcile: bool | None = None
    rotate_keys: bool | None = None


class RotateRequest(msgspec.Struct, forbid_unknown_fields=True):
    """How long the previous signing key stays valid after a rotation, in seconds."""

    transition: float = DEFAULT_TRANSITION


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
        router.add_get("/_emulator/nodes", self.list_nodes)
        router.add_post("/_emulator/nodes/{node_id}/events", self.publish)
        router.add_post("/_emulator/nodes/{node_id}/flags", self.set_flags)
        router.add_post("/_emulator/nodes/{node_id}/disconnect", self.disconnect)
        router.add_get("/_emulator/faults/{node_id}", self.get_faults)
        router.add_post("/_emulator/faults/{node_id}", self.set_faults)
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
        if rotate.transition < 0:
            raise Rejected(400, "transition must not be negative")
        return json_response(self._state.rotate_signing_key(rotate.transition))
