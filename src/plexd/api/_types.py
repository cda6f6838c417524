"""Declarations layer: the wire types of WIRE.md and EventType, nothing else.

How they are encoded and decoded (Go's rules for empty values, ``null``, times and
raw JSON) belongs to their base, :class:`~plexd.api._wire.WireStruct`.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from ._wire import (
    GoList,
    GoMap,
    Time,
    WireStruct,
    always_bool,
    always_int,
    always_list,
    always_raw,
    always_str,
    always_time,
    omitempty_map,
)

# --- registration ---------------------------------------------------------


class BinaryInfo(WireStruct):
    """The node's plexd binary."""

    version: str = always_str()
    checksum: str = always_str()


class ActionParam(WireStruct):
    """A parameter of an action or hook."""

    name: str = always_str()
    type: str = always_str()
    required: bool = always_bool()
    description: str = always_str()


class ActionInfo(WireStruct):
    """A built-in action the node can run."""

    name: str = always_str()
    description: str = always_str()
    parameters: GoList[ActionParam] = always_list()


class HookInfo(WireStruct):
    """A hook script installed on the node."""

    name: str = always_str()
    description: str = always_str()
    source: str = always_str()
    checksum: str = always_str()
    parameters: GoList[ActionParam] = always_list()
    timeout: str = always_str()
    sandbox: str = always_str()


class CapabilitiesPayload(WireStruct):
    """What the node can do: its binary, built-in actions and hooks."""

    binary: BinaryInfo | None = None
    builtin_actions: GoList[ActionInfo] = always_list()
    hooks: GoList[HookInfo] = always_list()


class RegisterRequest(WireStruct):
    """Body of ``POST /v1/register``."""

    __secret_fields__ = frozenset({"token"})

    token: str = always_str()
    public_key: str = always_str()
    hostname: str = always_str()
    metadata: GoMap[str, str] = omitempty_map()
    capabilities: CapabilitiesPayload | None = None


class Peer(WireStruct):
    """A mesh peer."""

    __secret_fields__ = frozenset({"psk"})

    id: str = always_str()
    public_key: str = always_str()
    mesh_ip: str = always_str()
    endpoint: str = always_str()
    allowed_ips: GoList[str] = always_list()
    psk: str = always_str()


class RegisterResponse(WireStruct):
    """Answer to a registration; ``node_secret_key`` is the node's bearer token from then on."""

    __secret_fields__ = frozenset({"node_secret_key"})

    node_id: str = always_str()
    mesh_ip: str = always_str()
    signing_public_key: str = always_str()
    node_secret_key: str = always_str()
    peers: GoList[Peer] = always_list()


# --- heartbeat and state --------------------------------------------------


class MeshInfo(WireStruct):
    """The node's mesh interface."""

    interface: str = always_str()
    peer_count: int = always_int()
    listen_port: int = always_int()


class NATInfo(WireStruct):
    """What the node learned about its NAT."""

    public_endpoint: str = always_str()
    type: str = always_str()


class HeartbeatRequest(WireStruct):
    """Body of ``POST /v1/nodes/{node_id}/heartbeat``."""

    node_id: str = always_str()
    timestamp: Time = always_time()
    status: str = always_str()
    uptime: str = always_str()
    binary_checksum: str = always_str()
    mesh: MeshInfo | None = None
    nat: NATInfo | None = None


class HeartbeatResponse(WireStruct):
    """What the control plane wants the node to do next."""

    reconcile: bool = always_bool()
    rotate_keys: bool = always_bool()


class PolicyRule(WireStruct):
    """One rule of a network policy."""

    src: str = always_str()
    dst: str = always_str()
    port: int = always_int()
    protocol: str = always_str()
    action: str = always_str()


class Policy(WireStruct):
    """A network policy."""

    id: str = always_str()
    rules: GoList[PolicyRule] = always_list()


class SigningKeys(WireStruct):
    """The control plane's event-signing keys (base64 Ed25519 public keys)."""

    current: str = always_str()
    previous: str = ""
    transition_expires: Time | None = None


class DataEntry(WireStruct):
    """A data entry pushed to the node; ``payload`` is raw JSON."""

    key: str = always_str()
    content_type: str = always_str()
    payload: msgspec.Raw = always_raw()
    version: int = always_int()
    updated_at: Time = always_time()


class SecretRef(WireStruct):
    """A reference to a secret the node may fetch."""

    key: str = always_str()
    version: int = always_int()


class StateResponse(WireStruct):
    """The node's full desired state."""

    peers: GoList[Peer] = always_list()
    policies: GoList[Policy] = always_list()
    signing_keys: SigningKeys | None = None
    metadata: GoMap[str, str] = omitempty_map()
    data: GoList[DataEntry] = always_list()
    secret_refs: GoList[SecretRef] = always_list()


class SecretResponse(WireStruct):
    """An encrypted secret."""

    __secret_fields__ = frozenset({"ciphertext"})

    key: str = always_str()
    ciphertext: str = always_str()
    nonce: str = always_str()
    version: int = always_int()


# --- reports --------------------------------------------------------------


class DriftCorrection(WireStruct):
    """One correction the node made to drifted state."""

    type: str = always_str()
    detail: str = always_str()


class DriftReport(WireStruct):
    """Body of ``POST /v1/nodes/{node_id}/drift``."""

    timestamp: Time = always_time()
    corrections: GoList[DriftCorrection] = always_list()


class ReportEntry(DataEntry):
    """A report the node syncs; ``payload`` is raw JSON. The shape of :class:`DataEntry`
    (WIRE.md gives both the same fields), under its own name in reprs and errors."""


class ReportSyncRequest(WireStruct):
    """Body of ``POST /v1/nodes/{node_id}/report``."""

    entries: GoList[ReportEntry] = always_list()
    deleted: GoList[str] = always_list()


class ExecutionAck(WireStruct):
    """Acknowledgement of an action request."""

    execution_id: str = always_str()
    status: str = always_str()
    reason: str = always_str()


class TriggeredBy(WireStruct):
    """Who triggered an execution."""

    type: str = always_str()
    session_id: str = always_str()
    user_id: str = always_str()
    email: str = always_str()


class ExecutionResult(WireStruct):
    """The outcome of an execution."""

    execution_id: str = always_str()
    status: str = always_str()
    exit_code: int = always_int()
    stdout: str = always_str()
    stderr: str = always_str()
    duration: str = always_str()
    finished_at: Time = always_time()
    triggered_by: TriggeredBy | None = None


class MetricPoint(WireStruct):
    """One metric sample; ``data`` is raw JSON."""

    timestamp: Time = always_time()
    group: str = always_str()
    peer_id: str = ""
    data: msgspec.Raw = always_raw()


class LogEntry(WireStruct):
    """One log line."""

    timestamp: Time = always_time()
    source: str = always_str()
    unit: str = always_str()
    message: str = always_str()
    severity: str = always_str()
    hostname: str = always_str()


class AuditEntry(WireStruct):
    """One audit record; ``subject`` and ``object`` are raw JSON, ``raw`` is a string."""

    timestamp: Time = always_time()
    source: str = always_str()
    event_type: str = always_str()
    subject: msgspec.Raw = always_raw()
    object: msgspec.Raw = always_raw()
    action: str = always_str()
    result: str = always_str()
    hostname: str = always_str()
    raw: str = always_str()


class EndpointReport(WireStruct):
    """Body of ``PUT /v1/nodes/{node_id}/endpoint``."""

    public_endpoint: str = always_str()
    nat_type: str = always_str()


class PeerEndpoint(WireStruct):
    """A peer's current endpoint."""

    peer_id: str = always_str()
    endpoint: str = always_str()


class EndpointResponse(WireStruct):
    """The peers' endpoints, in answer to an endpoint report."""

    peer_endpoints: GoList[PeerEndpoint] = always_list()


class KeyRotateRequest(WireStruct):
    """Body of ``POST /v1/keys/rotate``."""

    node_id: str = always_str()
    new_public_key: str = always_str()


class KeyRotateResponse(WireStruct):
    """The peers updated by a key rotation."""

    updated_peers: GoList[Peer] = always_list()


# --- events ---------------------------------------------------------------


class EventType(StrEnum):
    """The 12 event types of the control plane. An unknown type is not an error."""

    PEER_ADDED = "peer_added"
    PEER_REMOVED = "peer_removed"
    PEER_KEY_ROTATED = "peer_key_rotated"
    PEER_ENDPOINT_CHANGED = "peer_endpoint_changed"
    POLICY_UPDATED = "policy_updated"
    ACTION_REQUEST = "action_request"
    SESSION_REVOKED = "session_revoked"
    SSH_SESSION_SETUP = "ssh_session_setup"
    ROTATE_KEYS = "rotate_keys"
    SIGNING_KEY_ROTATED = "signing_key_rotated"
    NODE_STATE_UPDATED = "node_state_updated"
    NODE_SECRETS_UPDATED = "node_secrets_updated"
