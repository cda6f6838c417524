"""What the emulator sends by itself (peer events), where a stream starts (cursor or
not), how long the event log reaches back, and seeding a node's state through the
admin API (AdminClient)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest

from plexd.api import (
    Ed25519Verifier,
    EndpointReport,
    EventType,
    KeyRotateRequest,
    NotFoundError,
    Peer,
    Policy,
    PolicyRule,
    RegisterRequest,
    SignedEnvelope,
    SSEManager,
    decode_raw,
    decrypt_secret,
)
from plexd.emulator import Emulator
from plexd.emulator.admin_client import AdminClient

WAIT = 5.0


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(tokens=["boot"], keepalive_interval=WAIT * 4) as emulator:
        yield emulator


async def register(emulator: Emulator, hostname: str) -> tuple[str, str]:
    async with emulator.client() as client:
        reg = await client.register(
            RegisterRequest(token="boot", public_key=f"key-{hostname}", hostname=hostname)
        )
    return reg.node_id, reg.node_secret_key


def peer_events(emulator: Emulator, node_id: str) -> list[tuple[str, object]]:
    return [
        (envelope.event_type, msgspec.json.decode(bytes(envelope.payload)))
        for envelope in emulator.events(node_id)
    ]


# --- peer events -----------------------------------------------------------------------------


async def test_a_node_registering_is_announced_to_every_other_node_as_peer_added(
    emulator: Emulator,
) -> None:
    first, _ = await register(emulator, "a")
    second, _ = await register(emulator, "b")
    third, _ = await register(emulator, "c")
    expected_b = msgspec.json.decode(msgspec.json.encode(emulator.node(second).as_peer()))
    assert peer_events(emulator, first)[0] == ("peer_added", expected_b)
    assert [event for event, _ in peer_events(emulator, first)] == ["peer_added"] * 2
    assert [event for event, _ in peer_events(emulator, second)] == ["peer_added"]
    assert peer_events(emulator, third) == []  # it learns of a and b from its registration
    payload = decode_raw(emulator.events(first)[1].payload, Peer)
    assert (payload.id, payload.public_key, payload.mesh_ip) == (third, "key-c", "10.99.0.3")
    assert payload.allowed_ips == ["10.99.0.3/32"]


async def test_key_rotation_endpoint_change_and_deregistration_are_pushed_to_the_others(
    emulator: Emulator,
) -> None:
    watcher, _ = await register(emulator, "watcher")
    node_id, token = await register(emulator, "mover")
    async with emulator.client(token) as client:
        await client.rotate_keys(KeyRotateRequest(node_id=node_id, new_public_key="key-2"))
        await client.report_endpoint(node_id, EndpointReport(public_endpoint="192.0.2.1:51820"))
        # The same endpoint again is no change: nothing is pushed.
        await client.report_endpoint(node_id, EndpointReport(public_endpoint="192.0.2.1:51820"))
        await client.deregister(node_id)
    events = peer_events(emulator, watcher)
    assert [event for event, _ in events] == [
        "peer_added", "peer_key_rotated", "peer_endpoint_changed", "peer_removed"
    ]  # fmt: skip
    rotated = decode_raw(emulator.events(watcher)[1].payload, Peer)
    assert (rotated.id, rotated.public_key) == (node_id, "key-2")
    moved = decode_raw(emulator.events(watcher)[2].payload, Peer)
    assert (moved.id, moved.endpoint) == (node_id, "192.0.2.1:51820")
    assert events[3] == ("peer_removed", {"peer_id": node_id})


async def test_peer_events_are_signed_with_the_control_plane_key(emulator: Emulator) -> None:
    watcher, _ = await register(emulator, "watcher")
    await register(emulator, "other")
    verifier = Ed25519Verifier(emulator.signing_public_key)
    for envelope in emulator.events(watcher):
        await verifier.verify(envelope)


async def test_peer_events_can_be_turned_off() -> None:
    async with Emulator(peer_events=False) as emulator:
        first, _ = emulator.register_node("a")
        second, _ = emulator.register_node("b")
        emulator.remove_node(second)
        assert emulator.events(first) == []


async def test_a_running_agent_sees_a_peer_join_over_its_stream(emulator: Emulator) -> None:
    node_id, token = await register(emulator, "agent")
    joined: asyncio.Queue[SignedEnvelope] = asyncio.Queue()
    async with emulator.client(token) as client:
        manager = SSEManager(client, Ed25519Verifier(emulator.signing_public_key))
        manager.register_handler(EventType.PEER_ADDED, joined.put_nowait)
        task = asyncio.create_task(manager.start(node_id))
        try:
            async with asyncio.timeout(WAIT):
                await emulator.wait_for_streams(node_id)
                peer_id, _ = await register(emulator, "newcomer")
                envelope = await joined.get()
        finally:
            manager.shutdown()
            await task
    assert decode_raw(envelope.payload, Peer).id == peer_id


# --- where a stream starts --------------------------------------------------------------------


async def read_ids(
    emulator: Emulator, node_id: str, token: str, cursor: str | None, count: int
) -> list[str]:
    headers = {"Authorization": f"Bearer {token}"}
    if cursor is not None:
        headers["Last-Event-ID"] = cursor
    ids: list[str] = []
    async with aiohttp.ClientSession() as session:
        url = f"{emulator.url}/v1/nodes/{node_id}/events"
        async with session.get(url, headers=headers) as resp, asyncio.timeout(WAIT):
            if cursor is None:
                await emulator.wait_for_streams(node_id)
                emulator.publish(node_id, "node_state_updated", {"live": True})
            async for line in resp.content:
                if line.startswith(b"id: "):
                    ids.append(line[4:].strip().decode())
                    if len(ids) == count:
                        break
    return ids


async def test_a_stream_without_a_cursor_gets_new_events_only(emulator: Emulator) -> None:
    node_id, token = emulator.register_node()
    emulator.publish_many(node_id, [("action_request", {"n": n}) for n in range(3)])
    assert await read_ids(emulator, node_id, token, None, 1) == ["4"]


async def test_a_cursor_replays_what_follows_it(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    node_id, token = emulator.register_node()
    emulator.publish_many(node_id, [("action_request", {"n": n}) for n in range(4)])
    assert await read_ids(emulator, node_id, token, "2", 2) == ["3", "4"]
    assert await read_ids(emulator, node_id, token, "0", 4) == ["1", "2", "3", "4"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("cursor", ["1", "99", "not-a-number"])
async def test_a_cursor_the_log_does_not_hold_replays_what_it_has_and_is_logged(
    cursor: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Emulator(max_events=3) as emulator:
        node_id, token = emulator.register_node()
        emulator.publish_many(node_id, [("action_request", {"n": n}) for n in range(5)])
        assert [e.event_id for e in emulator.events(node_id)] == ["3", "4", "5"]
        assert emulator.counts(node_id)["events"] == 5
        assert await read_ids(emulator, node_id, token, cursor, 3) == ["3", "4", "5"]
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "cursor not in the event log" in record.getMessage()
    assert record.node_id == node_id  # type: ignore[attr-defined]


async def test_a_stream_outpaced_by_the_log_bound_goes_on_with_what_is_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Emulator(max_events=2) as emulator, aiohttp.ClientSession() as session:
        node_id, token = emulator.register_node()
        url = f"{emulator.url}/v1/nodes/{node_id}/events"
        headers = {"Authorization": f"Bearer {token}"}
        ids: list[str] = []
        async with session.get(url, headers=headers) as resp, asyncio.timeout(WAIT):
            await emulator.wait_for_streams(node_id)
            # Five at once, before the stream can send any: the log keeps the last two.
            emulator.publish_many(node_id, [(str(n), None) for n in range(5)])
            async for line in resp.content:
                if line.startswith(b"id: "):
                    ids.append(line[4:].strip().decode())
                    if len(ids) == 2:
                        break
    assert ids == ["4", "5"]
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "3 events skipped" in record.getMessage()


# --- seeding through the admin API ------------------------------------------------------------


@pytest.fixture
async def admin(emulator: Emulator) -> AsyncIterator[AdminClient]:
    async with AdminClient(emulator.url) as admin:
        yield admin


async def test_seeded_secrets_decrypt_with_the_node_key(
    emulator: Emulator, admin: AdminClient
) -> None:
    node_id, token = await register(emulator, "a")
    versions = await admin.put_secrets(node_id, {"db": "pa55", "blob": b"\x00\xff"})
    assert versions == {"db": 1, "blob": 1}
    assert await admin.put_secrets(node_id, {"db": "pa56"}) == {"db": 2}
    async with emulator.client(token) as client:
        db = await client.fetch_secret(node_id, "db")
        blob = await client.fetch_secret(node_id, "blob")
        state = await client.fetch_state(node_id)
    assert (decrypt_secret(token, db), db.version) == (b"pa56", 2)
    assert decrypt_secret(token, blob) == b"\x00\xff"
    assert sorted((ref.key, ref.version) for ref in state.secret_refs) == [("blob", 1), ("db", 2)]


async def test_seeded_peers_policies_data_and_metadata_show_in_the_state(
    emulator: Emulator, admin: AdminClient
) -> None:
    node_id, token = await register(emulator, "a")
    other, _ = await register(emulator, "b")
    seeded = Peer(id="outside-1", public_key="pk", endpoint="198.51.100.1:51820")
    assert await admin.add_peers(node_id, [seeded]) == ["outside-1"]
    policy = Policy(id="web", rules=[PolicyRule(src="a", dst="b", port=443, protocol="tcp")])
    assert await admin.put_policies(node_id, [policy]) == ["web"]
    entry = await admin.put_data(node_id, "config", {"level": 3})
    assert (entry["key"], entry["version"]) == ("config", 1)
    assert await admin.set_metadata(node_id, {"zone": "eu"}) == {"zone": "eu"}
    async with emulator.client(token) as client:
        state = await client.fetch_state(node_id)
    assert [peer.id for peer in state.peers] == [other, "outside-1"]
    assert state.policies == [policy]
    assert [(d.key, bytes(d.payload)) for d in state.data] == [("config", b'{"level":3}')]
    assert state.metadata == {"zone": "eu"}
    # The seeded peer is announced to the node like a registered one.
    assert peer_events(emulator, node_id)[-1][0] == "peer_added"
    assert decode_raw(emulator.events(node_id)[-1].payload, Peer) == seeded


async def test_admin_client_publishes_faults_flags_disconnects_and_rotates(
    emulator: Emulator, admin: AdminClient
) -> None:
    node_id, _ = await register(emulator, "a")
    assert await admin.publish(node_id, "policy_updated", {"id": "p"}) == [1]
    assert await admin.publish(node_id, "policy_updated", b'{"raw": true}') == [2]
    assert bytes(emulator.events(node_id)[1].payload) == b'{"raw":true}'
    faults = await admin.set_faults(node_id, cut_after_bytes=10, cut_streams=2)
    assert (faults["cut_after_bytes"], faults["cut_streams"]) == (10, 2)
    assert (await admin.clear_faults(node_id))["cut_after_bytes"] is None
    assert await admin.set_flags(node_id, reconcile=True) == {
        "reconcile": True, "rotate_keys": False
    }  # fmt: skip
    assert await admin.disconnect(node_id) == 0
    keys = await admin.rotate_signing_key(0)
    assert keys.current == emulator.signing_public_key
    listing = await admin.nodes()
    assert [node["id"] for node in listing["nodes"]] == [node_id]
    registered = await admin.register_node("seeded", metadata={"k": "v"})
    assert emulator.node(registered["node_id"]).token == registered["token"]
    with pytest.raises(NotFoundError):
        await admin.publish("node-404", "x")


async def test_a_secret_needs_exactly_one_value(emulator: Emulator) -> None:
    node_id, _ = emulator.register_node()
    async with aiohttp.ClientSession() as session:
        url = f"{emulator.url}/_emulator/nodes/{node_id}/secrets"
        for body in ({"key": "k"}, {"key": "k", "value": "a", "value_base64": "YQ=="},
                     {"key": "k", "value_base64": "not base64!"}):  # fmt: skip
            async with session.post(url, json=body) as resp:
                assert resp.status == 400
    assert emulator.node(node_id).secrets == {}
