"""Emulator, data layer (no aiohttp): a registered node, the signing keyring, artifacts,
secrets.

Plain data and the small rules that make it: mesh addresses, tokens, the keyring's
transition, the generated artifact blobs, how a secret value is encrypted for its node.
:mod:`.state` holds them together.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from nacl.signing import SigningKey

from plexd import api

from .stream import EventLog

# Mesh addresses handed out in registration order: node 1 gets 10.99.0.1.
MESH_NETWORK = ipaddress.IPv4Network("10.99.0.0/16")
# Longest signing-key transition (seconds, a year): a datetime cannot hold much more.
MAX_TRANSITION = 366 * 24 * 3600.0
# Size of the generated artifact blobs unless the emulator is told otherwise.
DEFAULT_ARTIFACT_SIZE = 256 * 1024
# Length (bytes of randomness) of generated bootstrap tokens.
TOKEN_BYTES = 32
# plexd's agent uses the node_secret_key string's bytes as its AES-256-GCM key: exactly
# 32 characters. 24 random bytes are 32 URL-safe base64 characters, without padding.
NODE_SECRET_KEY_BYTES = 24
# AES-GCM nonce size of a SecretResponse (the standard 96 bits).
SECRET_NONCE_BYTES = 12


def new_token() -> str:
    """A fresh random bootstrap token."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_node_secret_key() -> str:
    """A fresh node secret key: 32 URL-safe characters, the node's bearer token and the
    AES-256-GCM key its secrets are encrypted with."""
    return secrets.token_urlsafe(NODE_SECRET_KEY_BYTES)


def encrypt_secret(
    node_secret_key: str, key: str, value: bytes, version: int
) -> api.SecretResponse:
    """``value`` encrypted as plexd's agent decrypts it (see :func:`plexd.api.decrypt_secret`):
    AES-256-GCM keyed with the key string's bytes, a random 12-byte nonce, the tag appended
    to the ciphertext, no associated data, both base64.

    Needs the ``cryptography`` package; :class:`plexd.api.ConfigError` says so when it is
    missing.
    """
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise api.ConfigError(
            "encrypting secrets needs the 'cryptography' package "
            "(pip install 'plexd-api[emulator]')"
        ) from None
    nonce = secrets.token_bytes(SECRET_NONCE_BYTES)
    sealed = AESGCM(node_secret_key.encode()).encrypt(nonce, value, None)
    return api.SecretResponse(
        key=key,
        ciphertext=base64.b64encode(sealed).decode("ascii"),
        nonce=base64.b64encode(nonce).decode("ascii"),
        version=version,
    )


@dataclass(eq=False)
class Node:
    """One registered node: what it told the control plane, and what it is told.

    ``token`` is its bearer token and its ``node_secret_key``. ``peers`` are peers seeded
    for this node only (the other registered nodes are its peers too).

    Everything is plain data a test may read or change directly. ``reconcile`` and
    ``rotate_keys`` are what its heartbeats are answered with; they stay set until
    the node acts on them (``reconcile`` until it fetches its state, ``rotate_keys``
    until it rotates its key).
    """

    id: str
    token: str = field(repr=False)
    mesh_ip: str
    hostname: str
    public_key: str
    metadata: dict[str, str] = field(default_factory=dict)
    capabilities: api.CapabilitiesPayload | None = None
    endpoint: api.EndpointReport | None = None
    reconcile: bool = False
    rotate_keys: bool = False
    policies: list[api.Policy] = field(default_factory=list)
    peers: dict[str, api.Peer] = field(default_factory=dict)
    data: dict[str, api.DataEntry] = field(default_factory=dict)
    secrets: dict[str, api.SecretResponse] = field(default_factory=dict, repr=False)
    heartbeats: list[api.HeartbeatRequest] = field(default_factory=list, repr=False)
    metrics: list[api.MetricPoint] = field(default_factory=list, repr=False)
    logs: list[api.LogEntry] = field(default_factory=list, repr=False)
    audit: list[api.AuditEntry] = field(default_factory=list, repr=False)
    drift: list[api.DriftReport] = field(default_factory=list, repr=False)
    reports: dict[str, api.ReportEntry] = field(default_factory=dict, repr=False)
    acks: dict[str, api.ExecutionAck] = field(default_factory=dict, repr=False)
    results: dict[str, api.ExecutionResult] = field(default_factory=dict, repr=False)
    key_rotations: list[api.KeyRotateRequest] = field(default_factory=list, repr=False)
    events: EventLog = field(default_factory=EventLog, repr=False)

    def as_peer(self) -> api.Peer:
        """How other nodes see this node."""
        return api.Peer(
            id=self.id,
            public_key=self.public_key,
            mesh_ip=self.mesh_ip,
            endpoint=self.endpoint.public_endpoint if self.endpoint else "",
            allowed_ips=[f"{self.mesh_ip}/32"],
        )

    def counts(self) -> dict[str, int]:
        """How many of each report the node sent (for the admin endpoint and the CLI)."""
        return {
            "heartbeats": len(self.heartbeats),
            "metrics": len(self.metrics),
            "logs": len(self.logs),
            "audit": len(self.audit),
            "drift": len(self.drift),
            "reports": len(self.reports),
            "acks": len(self.acks),
            "results": len(self.results),
            "events": self.events.published,
            "streams": len(self.events.streams),
        }


def mesh_ip(sequence: int) -> str:
    """The mesh address of the ``sequence``-th registered node (1-based; wraps around
    after the last host address of the network)."""
    hosts = MESH_NETWORK.num_addresses - 2
    return str(MESH_NETWORK.network_address + (sequence - 1) % hosts + 1)


def public_key_b64(key: SigningKey) -> str:
    """The base64 Ed25519 public key of a signing key."""
    return base64.b64encode(bytes(key.verify_key)).decode("ascii")


def check_transition(transition: float) -> None:
    """Raise ValueError for a key transition (seconds) that is negative, not finite or over
    :data:`MAX_TRANSITION`."""
    if isinstance(transition, bool) or not isinstance(transition, int | float):
        raise ValueError("transition must be a number of seconds")
    if not 0 <= transition <= MAX_TRANSITION:
        raise ValueError(f"transition must be between 0 and {MAX_TRANSITION:g} seconds")


class SigningKeyring:
    """The control plane's event-signing keys: the current one and, during a
    transition, the previous one with the time its validity ends.
    """

    def __init__(self, seed: bytes | None = None) -> None:
        self.current = SigningKey(seed) if seed is not None else SigningKey.generate()
        self.previous: SigningKey | None = None
        self.transition_expires: datetime | None = None

    def rotate(self, transition: float, seed: bytes | None = None) -> SigningKey:
        """Make a new current key; the old one stays valid ``transition`` seconds. Returns it."""
        check_transition(transition)
        old = self.current
        self.previous = old
        self.current = SigningKey(seed) if seed is not None else SigningKey.generate()
        self.transition_expires = datetime.now(UTC) + timedelta(seconds=transition)
        return old

    def signing_keys(self, now: datetime | None = None) -> api.SigningKeys:
        """The keys as ``StateResponse.signing_keys`` shows them (an expired previous
        key is left out)."""
        now = now or datetime.now(UTC)
        expires = self.transition_expires
        if self.previous is None or expires is None or expires <= now:
            return api.SigningKeys(current=public_key_b64(self.current))
        return api.SigningKeys(
            current=public_key_b64(self.current),
            previous=public_key_b64(self.previous),
            transition_expires=expires,
        )


def artifact_blob(version: str, os: str, arch: str, size: int) -> bytes:
    """A deterministic pseudo-binary for an artifact: same arguments, same bytes."""
    seed = f"plexd/{version}/{os}/{arch}".encode()
    return hashlib.shake_256(seed).digest(size)
