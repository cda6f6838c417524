"""Testing your own node code against the emulator with the `control_plane` fixture.

Installing plexd-api gives pytest the fixture (with the `testing` extra:
`pip install 'plexd-api[testing]'`). This module works in pytest-asyncio's strict mode
(the default): each test says `@pytest.mark.asyncio`. In auto mode the marks may go.
pytest-asyncio warns until `asyncio_default_fixture_loop_scope` is set; set it in your
pytest configuration (`asyncio_default_fixture_loop_scope = "function"`).

    pytest examples/test_with_fixture.py
"""

from __future__ import annotations

import asyncio
import datetime

import pytest

from plexd.api import (
    ConnectionState,
    Ed25519Verifier,
    EventType,
    HeartbeatRequest,
    RegisterRequest,
    ServerError,
    SignedEnvelope,
    SSEManager,
)
from plexd.emulator import Emulator


@pytest.mark.asyncio
async def test_a_node_registers_and_sends_a_heartbeat(control_plane: Emulator) -> None:
    async with control_plane.client() as cp:
        reg = await cp.register(RegisterRequest(token=control_plane.bootstrap_token))
        cp.set_auth_token(reg.node_secret_key)
        now = datetime.datetime.now(datetime.UTC)
        await cp.heartbeat(reg.node_id, HeartbeatRequest(node_id=reg.node_id, timestamp=now))
    assert control_plane.counts(reg.node_id)["heartbeats"] == 1


@pytest.mark.asyncio
async def test_a_heartbeat_survives_two_503s_by_retrying(control_plane: Emulator) -> None:
    node_id, token = control_plane.register_node("web-1")
    control_plane.set_faults(node_id, status=503, status_scope="all", status_count=2)
    beat = HeartbeatRequest(node_id=node_id, timestamp=datetime.datetime.now(datetime.UTC))
    async with control_plane.client(token) as cp:
        with pytest.raises(ServerError):
            await cp.heartbeat(node_id, beat, max_retries=0)  # the first 503, not retried
        await cp.heartbeat(node_id, beat)  # the second 503 is retried
    assert [call.status for call in control_plane.calls[-3:]] == [503, 503, 200]


@pytest.mark.asyncio
async def test_a_published_event_reaches_the_handler_verified(control_plane: Emulator) -> None:
    node_id, token = control_plane.register_node("web-1")
    seen: list[SignedEnvelope] = []
    async with control_plane.client(token) as cp:
        verifier = Ed25519Verifier(control_plane.signing_public_key)
        connected = asyncio.Event()

        def on_state(state: ConnectionState) -> None:
            if state is ConnectionState.CONNECTED:
                connected.set()

        manager = SSEManager(cp, verifier, on_state_change=on_state)

        def handle(envelope: SignedEnvelope) -> None:
            seen.append(envelope)
            manager.shutdown()

        manager.register_handler(EventType.POLICY_UPDATED, handle)
        running = asyncio.create_task(manager.start(node_id))
        await asyncio.wait_for(connected.wait(), 10)  # a new stream sees new events only
        control_plane.publish(node_id, "policy_updated", {"policy_id": "p-1"})
        await asyncio.wait_for(running, 10)
    assert [envelope.event_type for envelope in seen] == ["policy_updated"]
