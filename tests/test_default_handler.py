"""Default handlers: EventDispatcher.register_default, SSEManager.register_default_handler,
and the CLI's watch, which prints every verified event, unknown types included."""

from __future__ import annotations

import asyncio
import logging

import msgspec
import pytest

from plexd.api import Ed25519Verifier, EventDispatcher, SignedEnvelope, SSEManager
from plexd.cli.watch import watch_events
from plexd.emulator import Emulator


def envelope(event_type: str, event_id: str = "e1") -> SignedEnvelope:
    return SignedEnvelope(event_type=event_type, event_id=event_id)


async def test_default_handlers_run_for_every_type_after_the_types_own() -> None:
    dispatcher = EventDispatcher()
    calls: list[str] = []

    async def default_async(env: SignedEnvelope) -> None:
        await asyncio.sleep(0)
        calls.append("default-async:" + env.event_type)

    dispatcher.register_default(lambda env: calls.append("default:" + env.event_type))
    dispatcher.register("peer_added", lambda env: calls.append("typed"))
    dispatcher.register_default(default_async)
    await dispatcher.dispatch(envelope("peer_added"))
    await dispatcher.dispatch(envelope("from_a_newer_control_plane"))
    assert calls == [
        "typed",
        "default:peer_added",
        "default-async:peer_added",
        "default:from_a_newer_control_plane",
        "default-async:from_a_newer_control_plane",
    ]


async def test_a_failing_default_handler_is_logged_and_the_next_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dispatcher = EventDispatcher()
    calls: list[str] = []

    def broken(env: SignedEnvelope) -> None:
        raise RuntimeError("boom")

    dispatcher.register_default(broken)
    dispatcher.register_default(lambda env: calls.append(env.event_id))
    with caplog.at_level(logging.ERROR, logger="plexd.api"):
        await dispatcher.dispatch(envelope("unknown", "evt-3"))
    assert calls == ["evt-3"]
    assert any("boom" in record.getMessage() for record in caplog.records)


async def test_without_default_handlers_an_unknown_type_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dispatcher = EventDispatcher()
    dispatcher.register("peer_added", lambda env: None)
    with caplog.at_level(logging.DEBUG, logger="plexd.api"):
        await dispatcher.dispatch(envelope("unknown"))
    assert any("dropped" in record.getMessage() for record in caplog.records)


async def test_manager_default_handler_sees_verified_events_of_every_type(
    control_plane: Emulator,
) -> None:
    node_id, token = control_plane.register_node("web-1")
    control_plane.publish(node_id, "peer_added", {"id": "p1"})
    control_plane.publish(node_id, "from_a_newer_control_plane", {"x": 1})
    control_plane.publish(node_id, "policy_updated", {"id": "pol"})
    seen: list[tuple[str, str]] = []
    typed: list[str] = []
    async with control_plane.client(token) as client:
        manager = SSEManager(client, Ed25519Verifier(control_plane.signing_public_key))
        manager.last_event_id = "0"  # what was published before it connects too

        def default(env: SignedEnvelope) -> None:
            seen.append((env.event_type, env.event_id))
            if len(seen) == 3:
                manager.shutdown()

        manager.register_handler("peer_added", lambda env: typed.append(env.event_id))
        manager.register_default_handler(default)
        await asyncio.wait_for(manager.start(node_id), 10)
    assert seen == [
        ("peer_added", "1"),
        ("from_a_newer_control_plane", "2"),
        ("policy_updated", "3"),
    ]
    assert typed == ["1"]


async def test_watch_prints_events_of_unknown_types(
    control_plane: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    node_id, token = control_plane.register_node("web-1")
    control_plane.publish(node_id, "from_a_newer_control_plane", {"x": 1})
    control_plane.publish(node_id, "peer_added", {"id": "p1"})
    async with control_plane.client(token) as client:
        verifier = Ed25519Verifier(control_plane.signing_public_key)
        printed = await asyncio.wait_for(
            watch_events(
                client, node_id, verifier, logging.getLogger("test"), last_event_id="0", limit=2
            ),
            10,
        )
    assert printed == 2
    lines = [msgspec.json.decode(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["event_type"], line["event_id"]) for line in lines] == [
        ("from_a_newer_control_plane", "1"),
        ("peer_added", "2"),
    ]
