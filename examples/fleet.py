"""A fleet of nodes in one process: PLEXD_FLEET_SIZE nodes (default 100) register and
stream their events, then one more node joins, and every node of the fleet must see it
(a `peer_added` event, signed and verified) within PLEXD_FLEET_DEADLINE seconds.

    PLEXD_BASE_URL=http://127.0.0.1:8080 PLEXD_BOOTSTRAP_TOKEN=dev python examples/fleet.py

One ControlPlane and one SSEManager per node, all on one event loop: an idle stream
costs about 60 KiB, so this shape carries thousands of nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from plexd.api import (
    Config,
    ConnectionState,
    ControlPlane,
    Ed25519Verifier,
    EventType,
    Peer,
    RegisterRequest,
    SignedEnvelope,
    SSEManager,
)


class Node:
    """One node of the fleet: its client, its manager, and what it has seen."""

    def __init__(self, config: Config, bootstrap: str, name: str) -> None:
        self.client = ControlPlane(config, "1.0.0")
        self.bootstrap = bootstrap
        self.name = name
        self.connected = asyncio.Event()
        self.joined: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        reg = await self.client.register(RegisterRequest(token=self.bootstrap, hostname=self.name))
        self.client.set_auth_token(reg.node_secret_key)
        manager = SSEManager(
            self.client,
            Ed25519Verifier.from_register_response(reg),
            on_state_change=self._on_state,
        )
        manager.register_handler(EventType.PEER_ADDED, self._on_peer_added)
        await manager.start(reg.node_id)

    def _on_state(self, state: ConnectionState) -> None:
        if state is ConnectionState.CONNECTED:
            self.connected.set()

    def _on_peer_added(self, envelope: SignedEnvelope) -> None:
        peer = envelope.decode_payload(Peer)
        if not self.joined.done():
            self.joined.set_result(peer.id)


async def main() -> None:
    config = Config.from_env()
    bootstrap = os.environ["PLEXD_BOOTSTRAP_TOKEN"]
    size = int(os.environ.get("PLEXD_FLEET_SIZE", "100"))
    deadline = float(os.environ.get("PLEXD_FLEET_DEADLINE", "60"))
    started = time.monotonic()
    fleet = [Node(config, bootstrap, f"fleet-{n}") for n in range(size)]
    tasks = [asyncio.create_task(node.run()) for node in fleet]
    try:
        async with asyncio.timeout(deadline):
            await asyncio.gather(*(node.connected.wait() for node in fleet))
            print(f"{size} nodes registered and streaming in {time.monotonic() - started:.1f} s")
            async with ControlPlane(config, "1.0.0") as newcomer:
                reg = await newcomer.register(
                    RegisterRequest(token=bootstrap, hostname="newcomer")
                )
            seen = await asyncio.gather(*(node.joined for node in fleet))
        assert set(seen) == {reg.node_id}, seen
        print(f"all {size} nodes saw {reg.node_id} join, {time.monotonic() - started:.1f} s in all")
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(node.client.aclose() for node in fleet))


if __name__ == "__main__":
    asyncio.run(main())
