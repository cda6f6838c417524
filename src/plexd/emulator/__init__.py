"""plexd.emulator: a local Plexsphere control plane for development and tests.

    async with Emulator() as emulator:
        node_id, token = emulator.register_node("web-1")
        emulator.publish(node_id, "peer_added", {"id": "peer-1"})

See :class:`Emulator` for the Python API, :mod:`plexd.emulator.admin` for the
admin HTTP API (and :class:`AdminClient`, its client), :class:`Faults` for fault
injection, and :mod:`plexd.emulator.command` for ``python -m plexd.emulator``, which is
``plexd-api emulator`` too.

Layers from the bottom (each module imports only from those below it, and from
``plexd.api``'s public names): ``calls`` and ``faults`` (plain rules and records) →
``stream`` and ``nodes`` (event logs, nodes, the keyring) → ``state`` (the control
plane's state, no aiohttp) → ``exchange``, ``node_api`` and ``admin`` (HTTP handlers
over the state) → ``server`` (:class:`Emulator`: lifecycle, TLS, middleware) and
``admin_client`` (the admin API's client, over ``plexd.api.ControlPlane``) →
``command``, ``__main__`` and ``pytest_plugin`` (entry points).

The names below are imported on first use, so that loading the pytest plugin
(``plexd.emulator.pytest_plugin``) does not import aiohttp and the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plexd.api import CHECKSUM_HEADER

    from .admin_client import AdminClient
    from .calls import RecordedCall
    from .faults import ALL_NODES, Faults
    from .nodes import Node
    from .server import Emulator, serve
    from .state import DEFAULT_KEEPALIVE_INTERVAL, PublishedEvent

_EXPORTS = {
    "ALL_NODES": ".faults",
    "AdminClient": ".admin_client",
    "CHECKSUM_HEADER": ".node_api",
    "DEFAULT_KEEPALIVE_INTERVAL": ".state",
    "Emulator": ".server",
    "Faults": ".faults",
    "Node": ".nodes",
    "PublishedEvent": ".state",
    "RecordedCall": ".calls",
    "serve": ".server",
}

__all__ = [
    "ALL_NODES",
    "CHECKSUM_HEADER",
    "DEFAULT_KEEPALIVE_INTERVAL",
    "AdminClient",
    "Emulator",
    "Faults",
    "Node",
    "PublishedEvent",
    "RecordedCall",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
