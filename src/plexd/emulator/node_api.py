"""Emulator, HTTP layer: the node-facing endpoints of WIRE.md, served from the
:class:`~.state.EmulatorState`.

Authorization of a node endpoint, in order: no or unknown bearer token → 401;
the node in the path does not exist → 404; the token belongs to another node → 403.
A request body is read and decoded only after that (registration, which carries its
credential in the body, reads at most :data:`~.exchange.MAX_UNAUTHENTICATED_BODY`); a
body that is too large, malformed or nested too deep is a 4xx problem document.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TypeVar

from aiohttp import web

from plexd import api
from plexd.api import CHECKSUM_HEADER, EVENT_STREAM

from .calls import bearer_token
from .exchange import (
    BEARER_CHALLENGE,
    MAX_REQUEST_BODY,
    MAX_UNAUTHENTICATED_BODY,
    RECORD_KEY,
    Rejected,
    decode_body,
    json_or_none,
    json_response,
    mark_answered,
    no_content,
    read_body,
)
from .nodes import Node
from .state import EmulatorState
from .stream import StreamCut

EVENTS_ROUTE = "events"
# How long an event stream waits after its head for a client that already left to show
# (its reset); a fault is taken only after it.
_SETTLE = 0.005
_EVENT_STREAM_HEADERS = {
    "Content-Type": EVENT_STREAM,
    "Cache-Control": "no-cache",
    # Tells a reverse proxy in front of the emulator not to buffer the stream.
    "X-Accel-Buffering": "no",
}
_NODE = "/v1/nodes/{node_id}"

T = TypeVar("T")

_log = logging.getLogger("plexd.emulator")


class NodeAPI:
    """Request handlers of the node API; what they read and change is the ``state``."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state

    def add_routes(self, app: web.Application) -> None:
        """Register every endpoint of WIRE.md on ``app``."""
        router = app.router
        router.add_post("/v1/register", self.register)
        router.add_post(_NODE + "/heartbeat", self.heartbeat)
        router.add_post(_NODE + "/deregister", self.deregister)
        router.add_get(_NODE + "/state", self.fetch_state)
        router.add_get(_NODE + "/events", self.events, name=EVENTS_ROUTE)
        router.add_post("/v1/keys/rotate", self.rotate_keys)
        router.add_put(_NODE + "/capabilities", self.update_capabilities)
        router.add_put(_NODE + "/endpoint", self.report_endpoint)
        router.add_post(_NODE + "/drift", self.report_drift)
        router.add_get(_NODE + "/secrets/{key}", self.fetch_secret)
        router.add_post(_NODE + "/report", self.sync_reports)
        router.add_post(_NODE + "/executions/{execution_id}/ack", self.ack_execution)
        router.add_post(_NODE + "/executions/{execution_id}/result", self.report_result)
        router.add_post(_NODE + "/metrics", self.report_metrics)
        router.add_post(_NODE + "/logs", self.report_logs)
        router.add_post(_NODE + "/audit", self.report_audit)
        router.add_get("/v1/artifacts/plexd/{version}/{os}/{arch}", self.fetch_artifact)
        router.add_get("/v1/ping", self.ping)

    def _node(self, request: web.Request) -> Node:
        return self._authorize(request, request.match_info["node_id"])

    def _authenticate(self, request: web.Request) -> Node:
        """The node whose token the request carries; 401 for none or an unknown one."""
        token = bearer_token(request.headers)
        if token is None:
            raise Rejected(401, "missing bearer token", BEARER_CHALLENGE)
        node = self._state.node_for_token(token)
        if node is None:
            raise Rejected(401, "unknown token", BEARER_CHALLENGE)
        return node

    def _authorize(self, request: web.Request, node_id: str) -> Node:
        """The node ``node_id`` if the request's token may act on it: 401, then 404, then 403."""
        caller = self._authenticate(request)
        node = self._state.nodes.get(node_id)
        if node is None:
            raise Rejected(404, "no such node")
        if node is not caller:
            raise Rejected(403, "this token belongs to another node")
        return node

    async def _body(self, request: web.Request, type: type[T], limit: int = MAX_REQUEST_BODY) -> T:
        """The request body decoded into ``type`` (call it once the caller is authorized),
        kept in the call record."""
        body = await read_body(request, limit)
        value = decode_body(body, type)
        record = request.get(RECORD_KEY)
        if record is not None:
            self._state.record_body(record, body, json_or_none(body))
        return value

    # --- registration and liveness ------------------------------------------

    async def register(self, request: web.Request) -> web.Response:
        """Exchange a bootstrap token for a node id and the node's own bearer token."""
        req = await self._body(request, api.RegisterRequest, MAX_UNAUTHENTICATED_BODY)
        state = self._state
        if not state.is_bootstrap_token(req.token):
            raise Rejected(401, "unknown bootstrap token", BEARER_CHALLENGE)
        node = state.create_node(
            hostname=req.hostname,
            public_key=req.public_key,
            metadata=req.metadata,
            capabilities=req.capabilities,
        )
        return json_response(
            api.RegisterResponse(
                node_id=node.id,
                mesh_ip=node.mesh_ip,
                signing_public_key=state.signing_public_key,
                node_secret_key=node.token,
                peers=state.peers_of(node),
            )
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        """Record a heartbeat; answer whether the node should reconcile or rotate keys."""
        node = self._node(request)
        req = await self._body(request, api.HeartbeatRequest)
        if req.node_id and req.node_id != node.id:
            raise Rejected(400, "node_id in the body does not match the path")
        node.heartbeats.append(req)
        return json_response(
            api.HeartbeatResponse(reconcile=node.reconcile, rotate_keys=node.rotate_keys)
        )

    async def deregister(self, request: web.Request) -> web.Response:
        """Forget the node; its token stops working and its streams end."""
        node = self._node(request)
        self._state.remove_node(node.id)
        return no_content()

    async def ping(self, request: web.Request) -> web.Response:
        """Answer 200: the control plane is up."""
        return web.Response(status=200)

    # --- state and secrets --------------------------------------------------

    async def fetch_state(self, request: web.Request) -> web.Response:
        """The node's full desired state; fetching it satisfies a pending ``reconcile``."""
        node = self._node(request)
        node.reconcile = False
        state = self._state
        return json_response(
            api.StateResponse(
                peers=state.peers_of(node),
                policies=node.policies,
                signing_keys=state.signing_keys,
                metadata=node.metadata,
                data=list(node.data.values()),
                secret_refs=[
                    api.SecretRef(key=secret.key, version=secret.version)
                    for secret in node.secrets.values()
                ],
            )
        )

    async def fetch_secret(self, request: web.Request) -> web.Response:
        """One of the node's secrets, 404 when it has none under that key."""
        node = self._node(request)
        secret = node.secrets.get(request.match_info["key"])
        if secret is None:
            raise Rejected(404, "no such secret")
        return json_response(secret)

    # --- keys, capabilities, endpoint -----------------------------------------

    async def rotate_keys(self, request: web.Request) -> web.Response:
        """Take the node's new public key; satisfies a pending ``rotate_keys``."""
        caller = self._authenticate(request)
        req = await self._body(request, api.KeyRotateRequest)
        node = self._authorize(request, req.node_id or caller.id)
        self._state.rotate_node_key(node.id, req.new_public_key)
        node.key_rotations.append(req)
        return json_response(api.KeyRotateResponse(updated_peers=self._state.peers_of(node)))

    async def update_capabilities(self, request: web.Request) -> web.Response:
        """Store what the node can do."""
        node = self._node(request)
        node.capabilities = await self._body(request, api.CapabilitiesPayload)
        return no_content()

    async def report_endpoint(self, request: web.Request) -> web.Response:
        """Store the node's public endpoint; answer with the other nodes' endpoints."""
        node = self._node(request)
        self._state.set_endpoint(node.id, await self._body(request, api.EndpointReport))
        peers = [
            api.PeerEndpoint(peer_id=peer.id, endpoint=peer.endpoint.public_endpoint)
            for peer in self._state.nodes.values()
            if peer is not node and peer.endpoint and peer.endpoint.public_endpoint
        ]
        return json_response(api.EndpointResponse(peer_endpoints=peers))

    # --- reports ----------------------------------------------------------------

    async def report_drift(self, request: web.Request) -> web.Response:
        """Store a drift report."""
        node = self._node(request)
        node.drift.append(await self._body(request, api.DriftReport))
        return no_content()

    async def sync_reports(self, request: web.Request) -> web.Response:
        """Upsert the node's report entries by key and drop the deleted keys."""
        node = self._node(request)
        req = await self._body(request, api.ReportSyncRequest)
        for entry in req.entries:
            node.reports[entry.key] = entry
        for key in req.deleted:
            node.reports.pop(key, None)
        return no_content()

    async def ack_execution(self, request: web.Request) -> web.Response:
        """Store an execution's acknowledgement under the path's execution id."""
        node = self._node(request)
        ack = await self._body(request, api.ExecutionAck)
        node.acks[self._execution_id(request, ack.execution_id)] = ack
        return no_content()

    async def report_result(self, request: web.Request) -> web.Response:
        """Store an execution's result under the path's execution id."""
        node = self._node(request)
        result = await self._body(request, api.ExecutionResult)
        node.results[self._execution_id(request, result.execution_id)] = result
        return no_content()

    def _execution_id(self, request: web.Request, in_body: str) -> str:
        execution_id = request.match_info["execution_id"]
        if in_body and in_body != execution_id:
            raise Rejected(400, "execution_id in the body does not match the path")
        return execution_id

    async def report_metrics(self, request: web.Request) -> web.Response:
        """Store a batch of metric points."""
        node = self._node(request)
        node.metrics.extend(await self._body(request, list[api.MetricPoint]))
        return no_content()

    async def report_logs(self, request: web.Request) -> web.Response:
        """Store a batch of log entries."""
        node = self._node(request)
        node.logs.extend(await self._body(request, list[api.LogEntry]))
        return no_content()

    async def report_audit(self, request: web.Request) -> web.Response:
        """Store a batch of audit entries."""
        node = self._node(request)
        node.audit.extend(await self._body(request, list[api.AuditEntry]))
        return no_content()

    # --- artifacts ----------------------------------------------------------------

    async def fetch_artifact(self, request: web.Request) -> web.Response:
        """A deterministic blob for any version/os/arch, with its SHA-256 (of the whole
        blob) in a header; a single ``Range: bytes=`` range gets a 206 with that part, one
        past the end a 416, so a client can resume a download."""
        self._authenticate(request)
        info = request.match_info
        blob = self._state.artifact(info["version"], info["os"], info["arch"])
        headers = {CHECKSUM_HEADER: hashlib.sha256(blob).hexdigest(), "Accept-Ranges": "bytes"}
        try:
            wanted = request.http_range
        except ValueError:
            # A Range header that does not parse is ignored (RFC 9110): the whole blob.
            wanted = slice(None)
        if wanted.start is None and wanted.stop is None:
            return web.Response(body=blob, content_type="application/octet-stream", headers=headers)
        size = len(blob)
        if wanted.start is not None and wanted.start >= size:
            headers["Content-Range"] = f"bytes */{size}"
            return web.Response(status=416, headers=headers)
        start, stop, _ = wanted.indices(size)
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        return web.Response(
            status=206,
            body=blob[start:stop],
            content_type="application/octet-stream",
            headers=headers,
        )

    # --- the event stream -----------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Stream the node's events: without ``Last-Event-ID`` new ones only, with it the
        ones after it first; then live ones as published.

        The stream's faults (a counted cut or stall) are taken only once the response
        head is written: a client gone before that uses none up, and is logged at DEBUG.
        """
        node = self._node(request)
        state = self._state
        # "Now", for a stream without a cursor, is when the request came: an event
        # published while the head is on its way is the stream's first, not lost.
        cursor = request.headers.get("Last-Event-ID", "").strip() or str(node.events.published)
        response = web.StreamResponse(headers=_EVENT_STREAM_HEADERS)
        try:
            await response.prepare(request)
        except ConnectionError:
            _log.debug("event stream client left before the response", extra={"node_id": node.id})
            return response
        mark_answered(request, response.status)
        # A client that closed right after its request is seen only once the head's bytes
        # bounce (a reset from its kernel): give that a moment before a fault is spent.
        await asyncio.sleep(_SETTLE)
        if request.transport is None or request.transport.is_closing():
            _log.debug("event stream client left before the response", extra={"node_id": node.id})
            return response
        plan = state.take_stream_plan(node.id)
        stream = state.new_stream(node, cursor, response.write, plan)
        with state.open_stream(stream):
            try:
                await stream.run()
            except StreamCut:
                # close() (not abort()) delivers what was written, then drops the
                # connection without the chunked body's end: the client sees a cut.
                if request.transport is not None:
                    request.transport.close()
            except ConnectionError:
                _log.debug("event stream client went away", extra={"node_id": node.id})
        return response
