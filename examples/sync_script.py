"""A plain script, no asyncio in sight: register a node, send a heartbeat, read its
state, then print verified events until it has seen PLEXD_EVENT_COUNT of them (default
1) or Ctrl-C. The blocking API of plexd.api.sync runs the asyncio client on one
background thread; handlers run here, in the thread that called run().

    PLEXD_BASE_URL=http://127.0.0.1:8080 PLEXD_BOOTSTRAP_TOKEN=dev python examples/sync_script.py
"""

from __future__ import annotations

import datetime
import os
import socket

from plexd.api import (
    Config,
    Ed25519Verifier,
    HeartbeatRequest,
    RegisterRequest,
    SignedEnvelope,
)
from plexd.api.sync import ControlPlane, SSEManager


def main() -> None:
    wanted = int(os.environ.get("PLEXD_EVENT_COUNT", "1"))
    with ControlPlane(Config.from_env(), "1.0.0") as cp:
        bootstrap = os.environ["PLEXD_BOOTSTRAP_TOKEN"]
        reg = cp.register(RegisterRequest(token=bootstrap, hostname=socket.gethostname()))
        cp.set_auth_token(reg.node_secret_key)
        now = datetime.datetime.now(datetime.UTC)
        cp.heartbeat(reg.node_id, HeartbeatRequest(node_id=reg.node_id, timestamp=now))
        state = cp.fetch_state(reg.node_id)
        print(f"node {reg.node_id}: {len(state.peers)} peers, {len(state.policies)} policies")

        manager = SSEManager(cp, Ed25519Verifier.from_register_response(reg), refresh_keys=True)
        seen: list[str] = []

        def show(envelope: SignedEnvelope) -> None:
            print(f"event {envelope.event_type} {envelope.event_id}")
            seen.append(envelope.event_id)
            if len(seen) == wanted:
                manager.shutdown()

        manager.register_default_handler(show)
        manager.run(reg.node_id)  # blocks; returns on shutdown(), Ctrl-C or SIGTERM
        print(f"done after {len(seen)} events")


if __name__ == "__main__":
    main()
