"""The emulator's event stream: framing, replay, keep-alives, signatures, key
rotation and the stream faults, read with a raw aiohttp client."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
import msgspec
import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from plexd.api import (
    Ed25519Verifier,
    EnvelopeError,
    RateLimitError,
    SigningKeys,
    VerificationError,
    parse_envelope,
)
from plexd.emulator import Emulator

# Bounds every wait of these tests so that a broken emulator fails instead of hanging.
WAIT = 5.0


@dataclass
class Frame:
    """One SSE block as sent: its fields and comment lines."""

    id: str = ""
    event: str = ""
    data: list[bytes] = field(default_factory=list)
    retry: str = ""
    comments: list[bytes] = field(default_factory=list)

    @property
    def payload(self) -> bytes:
        return b"\n".join(self.data)


class RawStream:
    """Reads an event stream response into frames, exactly as the bytes arrived."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.received = b""
        self._pending = b""

    async def frames(self, count: int) -> list[Frame]:
        """The next ``count`` blocks that carry an event (comment-only blocks are kept
        in the next frame's ``comments``)."""
        found: list[Frame] = []
        async with asyncio.timeout(WAIT):
            while len(found) < count:
                while b"\n\n" not in self._pending:
                    chunk = await self.response.content.readany()
                    if not chunk:
                        raise EOFError(f"stream ended after {len(found)} frames")
                    self.received += chunk
                    self._pending += chunk
                block, self._pending = self._pending.split(b"\n\n", 1)
                found.append(parse_block(block))
        return found

    async def read_until(self, marker: bytes) -> None:
        async with asyncio.timeout(WAIT):
            while marker not in self._pending:
                chunk = await self.response.content.readany()
                if not chunk:
                    raise EOFError("stream ended")
                self.received += chunk
                self._pending += chunk


def parse_block(block: bytes) -> Frame:
    frame = Frame()
    for line in block.split(b"\n"):
        if line.startswith(b":"):
            frame.comments.append(line)
            continue
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"data":
            frame.data.append(value)
        elif name in (b"id", b"event", b"retry"):
            setattr(frame, name.decode(), value.decode())
    return frame


def verify_wire(data: bytes, public_key: str) -> None:
    """Check a signature independently of plexd.api: the signed message is the wire
    JSON without ``signature``, compacted (exact for the plain payloads used here)."""
    fields = msgspec.json.decode(data)
    assert list(fields) == [
        "event_type", "event_id", "issued_at", "nonce", "payload", "signature"
    ]  # fmt: skip
    signature = base64.b64decode(fields.pop("signature"))
    VerifyKey(base64.b64decode(public_key)).verify(msgspec.json.encode(fields), signature)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(keepalive_interval=WAIT * 4) as emulator:
        yield emulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def open_stream(
    session: aiohttp.ClientSession,
    emulator: Emulator,
    node_id: str,
    token: str,
    last_event_id: str | None = "0",
) -> aiohttp.client._RequestContextManager:
    """A stream request; by default with ``Last-Event-ID: 0``, the whole log (these tests
    publish before connecting); None sends no cursor (new events only)."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return session.get(f"{emulator.url}/v1/nodes/{node_id}/events", headers=headers)


# --- framing, delivery, replay -------------------------------------------------------------


async def test_events_published_before_and_after_connecting_arrive_in_order(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    emulator.publish(node_id, "peer_added", {"id": "p1"})
    async with open_stream(session, emulator, node_id, token) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        stream = RawStream(resp)
        first = await stream.frames(1)
        published = emulator.publish(node_id, "peer_removed", {"id": "p1"})
        second = await stream.frames(1)
    assert [(f.id, f.event) for f in first + second] == [("1", "peer_added"), ("2", "peer_removed")]
    assert published.id == 2
    envelope = parse_envelope(second[0].payload)
    assert (envelope.event_type, envelope.event_id) == ("peer_removed", "2")
    assert bytes(envelope.payload) == b'{"id":"p1"}'
    assert envelope.signature == published.envelope.signature


async def test_every_event_is_signed_with_the_emulator_signing_key(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    for i in range(3):
        emulator.publish(node_id, "policy_updated", {"policy": f"p{i}", "n": i})
    async with open_stream(session, emulator, node_id, token) as resp:
        frames = await RawStream(resp).frames(3)
    for frame in frames:
        verify_wire(frame.payload, emulator.signing_public_key)
    nonces = {parse_envelope(frame.payload).nonce for frame in frames}
    assert len(nonces) == 3


async def test_a_changed_event_fails_the_independent_signature_check(emulator: Emulator) -> None:
    node_id, _ = emulator.register_node()
    published = emulator.publish(node_id, "peer_added", {"id": "p1"})
    data = emulator.node(node_id).events.frames[0].split(b"data: ", 1)[1].strip()
    verify_wire(data, emulator.signing_public_key)
    with pytest.raises(BadSignatureError):
        verify_wire(data.replace(b'"p1"', b'"p2"'), emulator.signing_public_key)
    assert published.envelope.event_id == "1"


async def test_last_event_id_replays_only_the_events_after_it(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    emulator.publish_many(node_id, [("peer_added", {"n": n}) for n in range(1, 6)])
    async with open_stream(session, emulator, node_id, token, last_event_id="3") as resp:
        frames = await RawStream(resp).frames(2)
    assert [f.id for f in frames] == ["4", "5"]
    assert [msgspec.json.decode(parse_envelope(f.payload).payload) for f in frames] == [
        {"n": 4},
        {"n": 5},
    ]


async def test_a_last_event_id_at_the_end_replays_nothing_and_waits_for_new_events(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    emulator.publish_many(node_id, [("a", None), ("b", None)])
    async with open_stream(session, emulator, node_id, token, last_event_id="2") as resp:
        await emulator.wait_for_streams(node_id)
        emulator.publish(node_id, "c")
        frames = await RawStream(resp).frames(1)
    assert [(f.id, f.event) for f in frames] == [("3", "c")]


async def test_a_long_replay_arrives_complete_and_in_order(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    emulator.publish_many(node_id, (("node_state_updated", {"i": i}) for i in range(3000)))
    async with open_stream(session, emulator, node_id, token) as resp:
        frames = await RawStream(resp).frames(3000)
    assert [int(f.id) for f in frames] == list(range(1, 3001))


async def test_a_payload_written_with_line_breaks_is_sent_compacted_on_one_data_line(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    emulator.publish(node_id, "x", b'{\n  "b": 1,\r\n "a": "x y"}')
    async with open_stream(session, emulator, node_id, token) as resp:
        (frame,) = await RawStream(resp).frames(1)
    assert len(frame.data) == 1
    assert bytes(parse_envelope(frame.payload).payload) == b'{"b":1,"a":"x y"}'
    verify_wire(frame.payload, emulator.signing_public_key)


async def test_the_stream_starts_with_retry_when_configured(session: aiohttp.ClientSession) -> None:
    async with Emulator(retry_ms=1500) as emulator:
        node_id, token = emulator.register_node()
        emulator.publish(node_id, "x")
        async with open_stream(session, emulator, node_id, token) as resp:
            first, second = await RawStream(resp).frames(2)
    assert (first.retry, first.id) == ("1500", "")
    assert second.id == "1"


async def test_an_idle_stream_gets_keep_alive_comments(session: aiohttp.ClientSession) -> None:
    async with Emulator(keepalive_interval=0.02) as emulator:
        node_id, token = emulator.register_node()
        async with open_stream(session, emulator, node_id, token) as resp:
            stream = RawStream(resp)
            await stream.read_until(b": keep-alive\n: keep-alive\n")
    assert stream.received.startswith(b": keep-alive\n")


async def test_the_real_client_reads_the_stream(emulator: Emulator) -> None:
    node_id, token = emulator.register_node()
    emulator.publish(node_id, "peer_added", {"id": "p"})
    async with emulator.client(token) as client, client.connect_sse(node_id, "0") as resp:
        assert resp.status == 200
        chunks = aiter(resp.iter_chunks())
        async with asyncio.timeout(WAIT):
            first = await anext(chunks)
    assert first.startswith(b"id: 1\nevent: peer_added\ndata: {")


async def test_publishing_to_an_unknown_node_or_with_a_line_break_in_the_type_raises(
    emulator: Emulator,
) -> None:
    node_id, _ = emulator.register_node()
    with pytest.raises(KeyError):
        emulator.publish("node-404", "x")
    with pytest.raises(ValueError):
        emulator.publish(node_id, "x\ndata: forged")
    assert emulator.events(node_id) == []


# --- ending streams ---------------------------------------------------------------------------


async def test_deregistering_a_node_ends_its_stream(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    async with open_stream(session, emulator, node_id, token) as resp:
        async with asyncio.timeout(WAIT):
            await emulator.wait_for_streams(node_id)
        emulator.remove_node(node_id)
        async with asyncio.timeout(WAIT):
            assert await resp.content.read() == b""
    assert emulator.stream_count(node_id) == 0


async def test_disconnect_streams_ends_every_stream_of_the_node_cleanly(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    async with (
        open_stream(session, emulator, node_id, token) as one,
        open_stream(session, emulator, node_id, token) as two,
    ):
        async with asyncio.timeout(WAIT):
            await emulator.wait_for_streams(node_id, 2)
        assert emulator.disconnect_streams(node_id) == 2
        async with asyncio.timeout(WAIT):
            assert await one.content.read() == b""
            assert await two.content.read() == b""


async def test_stopping_the_emulator_ends_open_streams(session: aiohttp.ClientSession) -> None:
    emulator = Emulator()
    await emulator.start()
    node_id, token = emulator.register_node()
    try:
        async with open_stream(session, emulator, node_id, token) as resp:
            async with asyncio.timeout(WAIT):
                await emulator.wait_for_streams(node_id)
                await emulator.stop()
                assert await resp.content.read() == b""
    finally:
        await emulator.stop()


# --- signing-key rotation --------------------------------------------------------------------


async def test_a_key_rotation_event_is_signed_with_the_old_key_and_later_ones_with_the_new(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    old_key = emulator.signing_public_key
    keys = emulator.rotate_signing_key(transition=120)
    emulator.publish(node_id, "peer_added", {"id": "p"})
    async with open_stream(session, emulator, node_id, token) as resp:
        rotation, after = await RawStream(resp).frames(2)
    assert rotation.event == "signing_key_rotated"
    verify_wire(rotation.payload, old_key)
    with pytest.raises(BadSignatureError):
        verify_wire(rotation.payload, keys.current)
    verify_wire(after.payload, keys.current)
    announced = msgspec.json.decode(parse_envelope(rotation.payload).payload, type=SigningKeys)
    assert announced == keys
    assert (keys.current, keys.previous) == (emulator.signing_public_key, old_key)
    assert keys.transition_expires is not None
    remaining = keys.transition_expires - datetime.now(UTC)
    assert timedelta(seconds=100) < remaining <= timedelta(seconds=120)


async def test_state_shows_the_previous_key_only_during_the_transition(emulator: Emulator) -> None:
    node_id, token = emulator.register_node()
    first = emulator.signing_public_key
    emulator.rotate_signing_key(transition=300)
    async with emulator.client(token) as client:
        during = (await client.fetch_state(node_id)).signing_keys
        emulator.rotate_signing_key(transition=0)
        after = (await client.fetch_state(node_id)).signing_keys
    assert during is not None and during.previous == first
    assert after is not None and after.previous == ""
    assert after.transition_expires is None
    assert after.current == emulator.signing_public_key != first


# --- stream faults ------------------------------------------------------------------------------


async def test_cut_after_bytes_closes_the_next_connection_mid_stream_then_heals(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    emulator.publish_many(node_id, [("peer_added", {"n": n}) for n in range(3)])
    emulator.set_faults(node_id, cut_after_bytes=50)
    async with open_stream(session, emulator, node_id, token) as resp:
        received = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async with asyncio.timeout(WAIT):
                while chunk := await resp.content.readany():
                    received += chunk
    assert received == emulator.node(node_id).events.frames[0][:50]
    async with open_stream(session, emulator, node_id, token) as resp:
        frames = await RawStream(resp).frames(3)
    assert [f.id for f in frames] == ["1", "2", "3"]


async def test_cut_after_zero_bytes_ends_the_stream_right_after_the_headers(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    emulator.publish(node_id, "x")
    emulator.set_faults(node_id, cut_after_bytes=0, cut_streams=2)
    for _ in range(2):
        async with open_stream(session, emulator, node_id, token) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                async with asyncio.timeout(WAIT):
                    await resp.content.read()
    assert emulator.faults(node_id).cut_after_bytes is None


async def test_a_stalled_stream_sends_nothing_more_not_even_keep_alives(
    session: aiohttp.ClientSession,
) -> None:
    async with Emulator(keepalive_interval=0.01) as emulator:
        node_id, token = emulator.register_node()
        emulator.publish(node_id, "x")
        size = len(emulator.node(node_id).events.frames[0])
        emulator.set_faults(node_id, stall_after_bytes=size)
        async with open_stream(session, emulator, node_id, token) as resp:
            stream = RawStream(resp)
            (frame,) = await stream.frames(1)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):  # 30 keep-alive intervals
                    await resp.content.readany()
            assert stream.received == emulator.node(node_id).events.frames[0]
            assert emulator.stream_count(node_id) == 1
        async with open_stream(session, emulator, node_id, token, last_event_id="1") as resp:
            await RawStream(resp).read_until(b": keep-alive\n")
    assert frame.id == "1"


async def test_a_status_fault_on_the_events_endpoint_leaves_other_endpoints_alone(
    emulator: Emulator,
) -> None:
    node_id, token = emulator.register_node()
    emulator.set_faults(node_id, status=429, retry_after="3")
    async with emulator.client(token) as client:
        with pytest.raises(RateLimitError) as caught:
            async with client.connect_sse(node_id):
                pass
        await client.fetch_state(node_id)
    assert caught.value.retry_after == 3


async def test_corrupt_signatures_spoil_exactly_the_next_n_events(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    emulator.publish_many(node_id, [("peer_added", {"n": n}) for n in range(4)])
    emulator.set_faults(node_id, corrupt_signatures=2)
    async with open_stream(session, emulator, node_id, token) as resp:
        frames = await RawStream(resp).frames(4)
    for frame in frames[:2]:
        with pytest.raises(BadSignatureError):
            verify_wire(frame.payload, emulator.signing_public_key)
    for frame in frames[2:]:
        verify_wire(frame.payload, emulator.signing_public_key)
    assert [f.id for f in frames] == ["1", "2", "3", "4"]
    async with open_stream(session, emulator, node_id, token) as resp:
        (replayed, *_) = await RawStream(resp).frames(4)
    verify_wire(replayed.payload, emulator.signing_public_key)


async def test_a_malformed_event_is_invalid_json_with_its_id_and_the_next_is_intact(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    emulator.publish_many(node_id, [("peer_added", {"n": 1}), ("peer_added", {"n": 2})])
    emulator.set_faults(node_id, malformed_events=1)
    async with open_stream(session, emulator, node_id, token) as resp:
        bad, good = await RawStream(resp).frames(2)
    assert bad.id == "1"
    with pytest.raises(EnvelopeError):
        parse_envelope(bad.payload)
    verify_wire(good.payload, emulator.signing_public_key)


async def test_a_malformed_event_can_lack_its_event_id(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    emulator.publish(node_id, "peer_added", {"n": 1})
    emulator.set_faults(node_id, malformed_events=1, malformed_kind="missing_event_id")
    async with open_stream(session, emulator, node_id, token) as resp:
        (bad,) = await RawStream(resp).frames(1)
    assert "event_id" not in msgspec.json.decode(bad.payload)
    with pytest.raises(EnvelopeError, match="event_id"):
        parse_envelope(bad.payload)


async def test_faults_set_through_the_admin_api_apply_to_the_stream(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    emulator.publish(node_id, "x")
    async with session.post(
        f"{emulator.url}/_emulator/faults/{node_id}", json={"cut_after_bytes": 5}
    ) as admin:
        assert admin.status == 200
    async with open_stream(session, emulator, node_id, token) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with asyncio.timeout(WAIT):
                await resp.content.read()


# --- the client's own verifier ----------------------------------------------------------------


async def test_the_client_verifier_accepts_the_events_and_follows_a_key_rotation(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    node_id, token = emulator.register_node()
    verifier = Ed25519Verifier(emulator.signing_public_key)
    emulator.publish(node_id, "peer_added", {"id": "<p&1>"})
    emulator.rotate_signing_key(transition=60)
    emulator.publish(node_id, "peer_removed", {"id": "<p&1>"})
    async with open_stream(session, emulator, node_id, token) as resp:
        frames = await RawStream(resp).frames(3)
    envelopes = [parse_envelope(frame.payload) for frame in frames]
    await verifier.verify(envelopes[0])
    await verifier.verify(envelopes[1])
    verifier.update_from_event(envelopes[1])
    await verifier.verify(envelopes[2])
    assert [e.event_type for e in envelopes] == [
        "peer_added",
        "signing_key_rotated",
        "peer_removed",
    ]


async def test_issued_at_and_nonce_can_be_set_to_exercise_the_stale_and_replay_checks(
    emulator: Emulator,
) -> None:
    node_id, _ = emulator.register_node()
    verifier = Ed25519Verifier(emulator.signing_public_key)
    stale = emulator.publish(node_id, "x", issued_at=datetime.now(UTC) - timedelta(minutes=6))
    first = emulator.publish(node_id, "x", nonce="same-nonce")
    replayed = emulator.publish(node_id, "x", nonce="same-nonce")
    with pytest.raises(VerificationError):
        await verifier.verify(stale.envelope)
    await verifier.verify(first.envelope)
    with pytest.raises(VerificationError):
        await verifier.verify(replayed.envelope)
