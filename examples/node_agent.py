"""A node agent: register, heartbeat every PLEXD_HEARTBEAT_SECONDS, handle every verified
event, and stop cleanly on SIGINT or SIGTERM (deregistering on the way out).

    PLEXD_BASE_URL=https://cp.example PLEXD_BOOTSTRAP_TOKEN=... python examples/node_agent.py

Run it against the local emulator: `plexd-api emulator --bootstrap-token dev` in one
terminal, then `PLEXD_BASE_URL=http://127.0.0.1:8080 PLEXD_BOOTSTRAP_TOKEN=dev python
examples/node_agent.py` in another; Ctrl-C stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket

from plexd.api import (
    Config,
    ControlPlane,
    Ed25519Verifier,
    EventType,
    HeartbeatRequest,
    Peer,
    PlexdError,
    RegisterRequest,
    SignedEnvelope,
    SSEManager,
)

log = logging.getLogger("node-agent")


async def heartbeats(cp: ControlPlane, node_id: str, every: float) -> None:
    """One heartbeat every ``every`` seconds; a failed one (after the client's own
    retries) is logged, and the next comes on time."""
    while True:
        beat = HeartbeatRequest(
            node_id=node_id, timestamp=datetime.datetime.now(datetime.UTC), status="ok"
        )
        try:
            answer = await cp.heartbeat(node_id, beat)
            log.info("heartbeat sent (reconcile=%s)", answer.reconcile)
        except PlexdError as error:
            log.warning("heartbeat failed: %s", error)
        await asyncio.sleep(every)


async def main() -> None:
    config = Config.from_env()  # PLEXD_BASE_URL, and PLEXD_CA_FILE etc. when set
    every = float(os.environ.get("PLEXD_HEARTBEAT_SECONDS", "30"))
    async with ControlPlane(config, "1.0.0") as cp:
        reg = await cp.register(
            RegisterRequest(
                token=os.environ["PLEXD_BOOTSTRAP_TOKEN"], hostname=socket.gethostname()
            )
        )
        cp.set_auth_token(reg.node_secret_key)  # the node's own token from now on
        log.info("registered as %s (mesh IP %s)", reg.node_id, reg.mesh_ip)

        manager = SSEManager(cp, Ed25519Verifier.from_register_response(reg))

        def on_event(envelope: SignedEnvelope) -> None:
            log.info("event %s %s", envelope.event_type, envelope.event_id)

        def on_peer_added(envelope: SignedEnvelope) -> None:
            log.info("a peer joined: %s", envelope.decode_payload(Peer).id)

        manager.register_default_handler(on_event)
        manager.register_handler(EventType.PEER_ADDED, on_peer_added)

        beating = asyncio.create_task(heartbeats(cp, reg.node_id, every))
        try:
            await manager.run_until_signal(reg.node_id)  # until SIGINT or SIGTERM
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
        await cp.deregister(reg.node_id)
        log.info("stopped and deregistered")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    asyncio.run(main())
