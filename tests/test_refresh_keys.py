"""SSEManager(refresh_keys=True): a node that missed a signing key rotation (it was away
longer than the staleness window, so the replayed rotation event is too old to verify)
takes the keys of fetch_state and verifies the later events again.

Time is faked: the verifier and the manager read clocks the test moves forward, so an
"outage of two minutes" takes no time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from plexd.api import (
    ConnectionState,
    Ed25519Verifier,
    NoOpVerifier,
    SSEManager,
)
from plexd.api.errors import ArgumentError
from plexd.emulator import Emulator

WINDOW = 60.0


class Clocks:
    """A wall clock for the verifier and a monotonic one for the manager, both
    ``offset`` seconds ahead of the real ones."""

    def __init__(self) -> None:
        self.offset = 0.0

    def wall(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


async def wait_for(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - the conditions are the manager's state
            await asyncio.sleep(0.01)


async def run_through_an_outage(
    emulator: Emulator, refresh_keys: bool, caplog: pytest.LogCaptureFixture
) -> tuple[list[str], str]:
    """A connects and gets event 1; the stream drops and the node stays away for twice
    the staleness window, during which the key rotates; then event B. Returns the ids
    handled and B's id."""
    node_id, token = emulator.register_node("web-1")
    clocks = Clocks()
    verifier = Ed25519Verifier(
        emulator.signing_public_key, staleness_window=WINDOW, clock=clocks.wall
    )
    backoff = asyncio.Event()

    def state_changed(state: ConnectionState) -> None:
        if state is ConnectionState.BACKOFF:
            backoff.set()

    handled: list[str] = []
    async with emulator.client(token) as client:
        manager = SSEManager(
            client,
            verifier,
            clock=clocks.monotonic,
            on_state_change=state_changed,
            refresh_keys=refresh_keys,
        )
        manager.last_event_id = "0"  # what was published before it connects too
        manager.set_reconnect_intervals(0.02, 0.05)
        manager.set_polling_fallback(10**6, 1)
        manager.register_default_handler(lambda env: handled.append(env.event_id))
        emulator.publish(node_id, "peer_added", {"id": "p1"})
        task = asyncio.create_task(manager.start(node_id))
        await wait_for(lambda: handled == ["1"])
        # The node goes away: its stream is cut and every reconnect refused.
        emulator.set_faults(node_id, status=503)
        backoff.clear()
        emulator.disconnect_streams(node_id)
        await asyncio.wait_for(backoff.wait(), 10)
        # Away for two staleness windows; the key rotates meanwhile (nothing awaits
        # between these lines, so the manager sees them all at once).
        clocks.offset += 2 * WINDOW
        emulator.rotate_signing_key(transition=1)
        after = emulator.publish(node_id, "peer_added", {"id": "p2"}, issued_at=clocks.wall())
        emulator.clear_faults(node_id)
        with caplog.at_level(logging.INFO, logger="plexd.api"):
            await wait_for(lambda: manager.last_event_id == str(after.id))
            manager.shutdown()
            await asyncio.wait_for(task, 10)
    return handled, str(after.id)


async def test_without_refresh_a_node_back_from_a_long_outage_refuses_new_events(
    control_plane: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    handled, _ = await run_through_an_outage(control_plane, False, caplog)
    assert handled == ["1"]
    refusals = [r.getMessage() for r in caplog.records if "does not verify" in r.getMessage()]
    # The warning says how such a node recovers by itself.
    assert refusals and all("SSEManager(refresh_keys=True)" in text for text in refusals)


async def test_refresh_keys_recovers_from_a_rotation_missed_during_an_outage(
    control_plane: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    handled, after = await run_through_an_outage(control_plane, True, caplog)
    # The rotation event itself is too old to verify and skipped; what follows verifies.
    assert handled == ["1", after]
    assert any("signing keys refreshed" in record.getMessage() for record in caplog.records)
    assert not any("does not verify" in record.getMessage() for record in caplog.records)


async def start_with_an_outdated_key(emulator: Emulator, refresh_keys: bool) -> list[str]:
    node_id, token = emulator.register_node("web-1")
    old_key = emulator.signing_public_key
    emulator.rotate_signing_key(transition=0)
    rotation_id = str(len(emulator.events(node_id)))
    after = emulator.publish(node_id, "peer_added", {"id": "p2"})
    handled: list[str] = []
    async with emulator.client(token) as client:
        manager = SSEManager(client, Ed25519Verifier(old_key), refresh_keys=refresh_keys)
        manager.last_event_id = "0"  # what was published before it connects too
        manager.register_default_handler(lambda env: handled.append(env.event_id))
        # Resuming after the rotation event: the node never sees it.
        manager.last_event_id = rotation_id
        task = asyncio.create_task(manager.start(node_id))
        await wait_for(lambda: manager.last_event_id == str(after.id))
        manager.shutdown()
        await asyncio.wait_for(task, 10)
    return handled


async def test_refresh_keys_takes_the_current_keys_before_the_first_connection(
    control_plane: Emulator,
) -> None:
    assert await start_with_an_outdated_key(control_plane, True) == ["2"]


async def test_without_refresh_an_outdated_key_refuses_events(control_plane: Emulator) -> None:
    assert await start_with_an_outdated_key(control_plane, False) == []


async def test_a_failed_refresh_is_logged_and_the_stream_still_connects(
    control_plane: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    node_id, token = control_plane.register_node("web-1")
    control_plane.publish(node_id, "peer_added", {"id": "p1"})
    # The state request fails once; the stream itself is healthy.
    control_plane.set_faults(node_id, status=500, status_scope="all", status_count=1)
    handled: list[str] = []
    async with control_plane.client(token) as client:
        verifier = Ed25519Verifier(control_plane.signing_public_key)
        manager = SSEManager(client, verifier, refresh_keys=True)
        manager.last_event_id = "0"  # what was published before it connects too
        manager.register_default_handler(lambda env: handled.append(env.event_id))
        with caplog.at_level(logging.WARNING, logger="plexd.api"):
            task = asyncio.create_task(manager.start(node_id))
            await wait_for(lambda: handled == ["1"])
            manager.shutdown()
            await asyncio.wait_for(task, 10)
    assert any("could not refresh the signing keys" in r.getMessage() for r in caplog.records)


def test_refresh_keys_needs_a_verifier_that_takes_keys() -> None:
    from plexd.api import Config, ControlPlane

    client = ControlPlane(Config(base_url="http://127.0.0.1:1"), "1.0")
    with pytest.raises(ArgumentError, match="refresh_keys"):
        SSEManager(client, NoOpVerifier(), refresh_keys=True)
    with pytest.raises(ArgumentError, match="refresh_keys"):
        SSEManager(client, refresh_keys=True)
    with pytest.raises(ArgumentError, match="bool"):
        SSEManager(client, refresh_keys=1)  # type: ignore[arg-type]
