"""Emulator, client side of the admin API: :class:`AdminClient` drives a running emulator
(in this process or another) over HTTP, with one typed method per admin route.

    async with AdminClient("http://127.0.0.1:8080") as admin:
        await admin.publish("node-1", "peer_added", {"id": "peer-1"})
        await admin.set_faults("node-1", cut_after_bytes=100)

It is built on :class:`plexd.api.ControlPlane` (no aiohttp of its own): errors are the
library's (:class:`~plexd.api.APIError` subclasses for a refusal,
:class:`~plexd.api.APIConnectionError` when the emulator is not there).
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import msgspec

from plexd.api import Config, ControlPlane, Peer, Policy, SigningKeys, __version__, raw_json

from .admin import ADMIN_PREFIX


def _payload(value: Any) -> msgspec.Raw:
    """A payload as raw JSON: bytes and ``msgspec.Raw`` are JSON text already."""
    if isinstance(value, msgspec.Raw | bytes | bytearray):
        return msgspec.Raw(bytes(value))
    return raw_json(value)


def _node_path(node_id: str, route: str) -> str:
    return f"{ADMIN_PREFIX}nodes/{quote(node_id, safe='')}/{route}"


def _faults_path(node_id: str) -> str:
    return f"{ADMIN_PREFIX}faults/{quote(node_id, safe='')}"


class AdminClient:
    """A client of the emulator's admin API at ``url`` (the emulator's base URL).

    ``admin_token`` is the emulator's ``--admin-token`` (None: the emulator answers
    loopback clients without one); ``ssl_context`` trusts an emulator run with ``--tls``.
    Close it with ``async with`` or :meth:`aclose`.
    """

    def __init__(
        self,
        url: str,
        admin_token: str | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 0,
    ) -> None:
        config = Config(base_url=url, request_timeout=timeout)
        self._client = ControlPlane(config, __version__, ssl_context=ssl_context)
        if admin_token:
            self._client.set_auth_token(admin_token)

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    async def _post(self, path: str, body: Any) -> Any:
        return await self._client.post_json(path, body)

    # --- nodes and events ----------------------------------------------------------------

    async def nodes(self) -> dict[str, Any]:
        """``{"nodes": [...], "signing_keys": {...}}``: every node with its counts."""
        result: dict[str, Any] = await self._client.get_json(f"{ADMIN_PREFIX}nodes")
        return result

    async def register_node(
        self,
        hostname: str = "node",
        *,
        public_key: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Register a node without a bootstrap token: ``{"node_id", "token", "mesh_ip"}``."""
        body = {"hostname": hostname, "public_key": public_key, "metadata": dict(metadata or {})}
        result: dict[str, str] = await self._post(f"{ADMIN_PREFIX}nodes", body)
        return result

    async def publish(self, node_id: str, event_type: str, payload: Any = None) -> list[int]:
        """Sign and publish one event; ``payload`` is any JSON value (or JSON text as
        bytes). Returns its SSE id in a list."""
        item = {"event_type": event_type, "payload": _payload(payload)}
        result = await self._post(_node_path(node_id, "events"), item)
        return list(result["ids"])

    async def set_flags(
        self, node_id: str, *, reconcile: bool | None = None, rotate_keys: bool | None = None
    ) -> dict[str, bool]:
        """Set what the node's heartbeats answer; returns both flags."""
        body = {
            name: value
            for name, value in (("reconcile", reconcile), ("rotate_keys", rotate_keys))
            if value is not None
        }
        result: dict[str, bool] = await self._post(_node_path(node_id, "flags"), body)
        return result

    async def disconnect(self, node_id: str) -> int:
        """End the node's open event streams; returns how many there were."""
        result = await self._post(_node_path(node_id, "disconnect"), {})
        return int(result["closed"])

    async def rotate_signing_key(self, transition: float | None = None) -> SigningKeys:
        """Rotate the control plane's signing key (the old one stays valid ``transition``
        seconds; default 300); returns the new keys."""
        body = {} if transition is None else {"transition": transition}
        result: SigningKeys = await self._client.post_json(
            f"{ADMIN_PREFIX}signing-key/rotate", body, SigningKeys
        )
        return result

    # --- faults --------------------------------------------------------------------------

    async def faults(self, node_id: str = "*") -> dict[str, Any]:
        """The node's fault settings (``"*"``: those of every node)."""
        result: dict[str, Any] = await self._client.get_json(_faults_path(node_id))
        return result

    async def set_faults(self, node_id: str, **changes: Any) -> dict[str, Any]:
        """Change the given fault fields (see :class:`~plexd.emulator.Faults`); returns all."""
        result: dict[str, Any] = await self._post(_faults_path(node_id), changes)
        return result

    async def clear_faults(self, node_id: str = "*") -> dict[str, Any]:
        """Switch every fault of the node off; returns the (healthy) settings."""
        result: dict[str, Any] = await self._post(_faults_path(node_id) + "/clear", {})
        return result

    # --- seeding -------------------------------------------------------------------------

    async def add_peers(self, node_id: str, peers: Sequence[Peer]) -> list[str]:
        """Seed peers the node sees (each announced with ``peer_added``); returns the ids of
        all its seeded peers."""
        result = await self._post(_node_path(node_id, "peers"), list(peers))
        return list(result["peers"])

    async def put_policies(self, node_id: str, policies: Sequence[Policy]) -> list[str]:
        """Add or replace policies by id; returns every policy id of the node."""
        result = await self._post(_node_path(node_id, "policies"), list(policies))
        return list(result["policies"])

    async def put_data(
        self, node_id: str, key: str, payload: Any, *, content_type: str = "application/json"
    ) -> dict[str, Any]:
        """Add or replace a data entry; returns it (with its new version)."""
        body = {"key": key, "payload": _payload(payload), "content_type": content_type}
        result = await self._post(_node_path(node_id, "data"), body)
        entry: dict[str, Any] = result["data"][0]
        return entry

    async def set_metadata(self, node_id: str, metadata: Mapping[str, str]) -> dict[str, str]:
        """Merge ``metadata`` into the node's; returns all of it."""
        result = await self._post(_node_path(node_id, "metadata"), dict(metadata))
        return dict(result["metadata"])

    async def put_secrets(self, node_id: str, secrets: Mapping[str, str | bytes]) -> dict[str, int]:
        """Store secrets (key → value), encrypted with the node's secret key; returns
        each key's new version."""
        items = [_secret_item(key, value) for key, value in secrets.items()]
        result = await self._post(_node_path(node_id, "secrets"), items)
        return {item["key"]: int(item["version"]) for item in result["secrets"]}


def _secret_item(key: str, value: str | bytes) -> dict[str, str]:
    if isinstance(value, str):
        return {"key": key, "value": value}
    return {"key": key, "value_base64": base64.b64encode(value).decode("ascii")}
