"""The emulator as a server facing hostile or careless clients: early disconnects, raw
sockets, malformed, deep and oversized bodies, bad admin input, and the memory bounds."""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import socket
import struct
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest

from plexd.api import PROBLEM_JSON, MetricPoint
from plexd.emulator import Emulator, node_api
from plexd.emulator.exchange import MAX_UNAUTHENTICATED_BODY

# Bounds every wait so that a broken emulator fails the test instead of hanging it.
WAIT = 5.0
DEEP = b"[" * 50_000
DEEP_BALANCED = b"[" * 20_000 + b"]" * 20_000


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(tokens=["boot"], keepalive_interval=WAIT * 4) as emulator:
        yield emulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def raw_exchange(emulator: Emulator, request: bytes, *, reset: bool = False) -> bytes:
    """Send ``request`` on a fresh socket and read the answer until the server closes or
    WAIT passes; with ``reset``, close with a TCP reset right after sending instead."""
    reader, writer = await asyncio.open_connection(emulator.host, emulator.port)
    try:
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.write(request)
        await writer.drain()
        if reset:
            return b""
        async with asyncio.timeout(WAIT):
            return await reader.read(65536)
    finally:
        writer.close()
        if not reset:
            await writer.wait_closed()


def events_request(node_id: str, token: str) -> bytes:
    return (
        f"GET /v1/nodes/{node_id}/events HTTP/1.1\r\nHost: emulator\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()


def post_request(path: str, body: bytes, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: emulator\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# --- clients that leave early ---------------------------------------------------------------


async def test_an_event_published_while_the_head_is_on_its_way_is_the_streams_first(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "Now", for a stream without a cursor, is when its request came: the wait after the
    # head (for a client that already left) must not lose what is published meanwhile.
    monkeypatch.setattr(node_api, "_SETTLE", 0.5)
    node_id, token = emulator.register_node()
    reader, writer = await asyncio.open_connection(emulator.host, emulator.port)
    try:
        writer.write(events_request(node_id, token))
        await writer.drain()
        async with asyncio.timeout(WAIT):
            while not any(c.path.endswith("/events") for c in emulator.calls):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            emulator.publish(node_id, "policy_updated", {"id": "during-the-wait"})
            received = b""
            while b"during-the-wait" not in received:
                chunk = await reader.read(65536)
                assert chunk, received
                received += chunk
    finally:
        writer.close()
    assert b"event: policy_updated" in received


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
async def test_a_client_gone_before_the_response_head_spends_no_stream_fault_and_logs_no_error(
    emulator: Emulator,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    reset: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    node_id, token = emulator.register_node()
    emulator.set_faults(node_id, cut_after_bytes=0, cut_streams=1)
    caplog.clear()
    for _ in range(5):
        _, writer = await asyncio.open_connection(emulator.host, emulator.port)
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.write(events_request(node_id, token))
        await writer.drain()
        writer.close()
    # The emulator has no hook for "a handler ended": poll, bounded.
    async with asyncio.timeout(WAIT):
        while len([c for c in emulator.calls if c.path.endswith("/events")]) < 5:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        while emulator.stream_count(node_id):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
    noisy = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert noisy == []
    assert emulator.faults(node_id).cut_after_bytes == 0  # still armed
    # The next real stream is the one the fault cuts.
    headers = {"Authorization": f"Bearer {token}"}
    async with session.get(f"{emulator.url}/v1/nodes/{node_id}/events", headers=headers) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async with asyncio.timeout(WAIT):
                await resp.content.read()
    assert emulator.faults(node_id).cut_after_bytes is None


# --- bodies: authenticated first, then decoded, never a 500 ------------------------------------


@pytest.mark.parametrize("body", [DEEP, DEEP_BALANCED], ids=["unterminated", "balanced"])
async def test_a_deeply_nested_body_without_a_token_is_401_never_500(
    emulator: Emulator, body: bytes
) -> None:
    node_id, _ = emulator.register_node()
    answer = await raw_exchange(emulator, post_request(f"/v1/nodes/{node_id}/metrics", body))
    assert status_of(answer) == 401
    assert PROBLEM_JSON.encode() in answer
    (call,) = emulator.calls
    assert call.body is None


@pytest.mark.parametrize("body", [DEEP, DEEP_BALANCED], ids=["unterminated", "balanced"])
@pytest.mark.parametrize(
    "path", ["/v1/register", "/v1/nodes/{node}/metrics", "/v1/nodes/{node}/heartbeat",
             "/v1/keys/rotate", "/_emulator/nodes/{node}/events", "/_emulator/faults/{node}",
             "/_emulator/nodes/{node}/secrets", "/_emulator/signing-key/rotate"],
)  # fmt: skip
async def test_a_deeply_nested_body_is_a_400_problem_document(
    emulator: Emulator, path: str, body: bytes
) -> None:
    node_id, token = emulator.register_node()
    request = post_request(path.format(node=node_id), body, token)
    answer = await raw_exchange(emulator, request)
    assert status_of(answer) == 400, answer[:200]
    assert PROBLEM_JSON.encode() in answer


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/nodes/{node}/metrics", b'[{"group": "g", "data": ' + DEEP_BALANCED + b"}]"),
        ("/v1/nodes/{node}/report", b'{"entries": [{"key": "k", "payload": ' + DEEP + b"}]}"),
        ("/_emulator/nodes/{node}/events", b'{"event_type": "x", "payload": ' + DEEP + b"}"),
        ("/_emulator/nodes/{node}/data", b'{"key": "k", "payload": ' + DEEP_BALANCED + b"}"),
        ("/_emulator/faults/{node}", b'{"status": ' + DEEP_BALANCED + b"}"),
    ],
)
async def test_deep_nesting_inside_a_raw_json_field_is_a_400_too(
    emulator: Emulator, path: str, body: bytes
) -> None:
    node_id, token = emulator.register_node()
    answer = await raw_exchange(emulator, post_request(path.format(node=node_id), body, token))
    assert status_of(answer) == 400, answer[:300]
    assert b"nested too deep" in answer
    assert emulator.events(node_id) == []


@pytest.mark.parametrize(
    "body",
    [b"{", b"\xff\xfe", b'{"token": 5}', b"[1, 2]", b"", b'{"token": "boot"} trailing'],
)
async def test_a_malformed_register_body_is_400(emulator: Emulator, body: bytes) -> None:
    answer = await raw_exchange(emulator, post_request("/v1/register", body))
    assert status_of(answer) == 400
    assert emulator.nodes == {}


async def test_a_register_body_over_the_unauthenticated_bound_is_413(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    padding = "x" * MAX_UNAUTHENTICATED_BODY
    body = msgspec.json.encode({"token": "boot", "hostname": padding})
    async with session.post(f"{emulator.url}/v1/register", data=io.BytesIO(body)) as resp:
        assert resp.status == 413
    # Gzip does not get around it: the inflated bytes are counted.
    headers = {"Content-Encoding": "gzip"}
    async with session.post(
        f"{emulator.url}/v1/register", data=gzip.compress(body), headers=headers
    ) as resp:
        assert resp.status == 413
    assert emulator.nodes == {}


async def test_garbage_on_the_socket_is_a_4xx(emulator: Emulator) -> None:
    answer = await raw_exchange(emulator, b"\x16\x03\x01 not http at all\r\n\r\n")
    assert 400 <= status_of(answer) < 500


# --- admin input -------------------------------------------------------------------------------


@pytest.mark.parametrize("transition", ["1e300", "1e18", "-1", '"soon"', "null"])
async def test_a_transition_out_of_range_is_400_and_the_key_stays(
    emulator: Emulator, session: aiohttp.ClientSession, transition: str
) -> None:
    before = emulator.signing_public_key
    body = f'{{"transition": {transition}}}'
    async with session.post(f"{emulator.url}/_emulator/signing-key/rotate", data=body) as resp:
        assert resp.status == 400
        assert resp.content_type == PROBLEM_JSON
    assert emulator.signing_public_key == before


@pytest.mark.parametrize("transition", [1e300, 1e18, -1.0, float("nan"), float("inf")])
def test_rotate_signing_key_from_python_refuses_an_unusable_transition(
    transition: float,
) -> None:
    emulator = Emulator()
    before = emulator.signing_public_key
    with pytest.raises(ValueError, match="transition"):
        emulator.rotate_signing_key(transition)
    assert emulator.signing_public_key == before


@pytest.mark.parametrize("retry_after", ["5\r\nX-Evil: 1", "5\n", "\r", "5\x00", "x" * 129])
async def test_a_retry_after_a_header_cannot_carry_is_refused(
    emulator: Emulator, session: aiohttp.ClientSession, retry_after: str
) -> None:
    node_id, token = emulator.register_node()
    body = msgspec.json.encode({"status": 503, "status_scope": "all", "retry_after": retry_after})
    async with session.post(f"{emulator.url}/_emulator/faults/{node_id}", data=body) as resp:
        assert resp.status == 400
    with pytest.raises(msgspec.ValidationError):
        emulator.set_faults(node_id, status=503, retry_after=retry_after)
    assert emulator.faults(node_id).status is None
    # The node's requests are still answered.
    headers = {"Authorization": f"Bearer {token}"}
    async with session.get(f"{emulator.url}/v1/nodes/{node_id}/state", headers=headers) as resp:
        assert resp.status == 200


async def test_a_retry_after_date_is_sent_as_given(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    emulator.set_faults("*", status=503, status_scope="all", status_count=1, retry_after=date)
    async with session.get(f"{emulator.url}/v1/ping") as resp:
        assert (resp.status, resp.headers["Retry-After"]) == (503, date)


# --- memory bounds -----------------------------------------------------------------------------


async def test_the_call_record_keeps_the_last_max_calls() -> None:
    async with Emulator(max_calls=3) as emulator, aiohttp.ClientSession() as session:
        for n in range(7):
            async with session.get(f"{emulator.url}/v1/nodes/node-{n}/state"):
                pass
        paths = [call.path for call in emulator.calls]
        assert paths == [f"/v1/nodes/node-{n}/state" for n in (4, 5, 6)]


async def test_recorded_bodies_are_bounded_in_bytes_oldest_first() -> None:
    async with Emulator(max_recorded_bytes=2500) as emulator:
        node_id, token = emulator.register_node()
        async with emulator.client(token) as client:
            for n in range(4):
                point = MetricPoint(group=f"g{n}", data=msgspec.Raw(b'"%s"' % (b"x" * 900)))
                await client.report_metrics(node_id, [point])
        bodies = [call.body for call in emulator.calls]
        assert [body[0]["group"] for body in bodies] == ["g2", "g3"]
        assert sum(call.body_size for call in emulator.calls) <= 2500
        # The state itself keeps every report: only the record is bounded.
        assert emulator.counts(node_id)["metrics"] == 4


async def test_a_record_cleared_by_the_test_starts_its_byte_count_again() -> None:
    async with Emulator(max_recorded_bytes=2500) as emulator:
        node_id, token = emulator.register_node()
        async with emulator.client(token) as client:
            point = MetricPoint(group="g", data=msgspec.Raw(b'"%s"' % (b"x" * 900)))
            await client.report_metrics(node_id, [point])
            await client.report_metrics(node_id, [point])
            emulator.calls.clear()
            await client.report_metrics(node_id, [point])
            await client.report_metrics(node_id, [point])
        assert [call.body is not None for call in emulator.calls] == [True, True]


async def test_a_body_larger_than_the_record_bound_is_not_kept_but_the_call_is() -> None:
    async with Emulator(max_recorded_bytes=100) as emulator:
        node_id, token = emulator.register_node()
        async with emulator.client(token) as client:
            await client.report_metrics(node_id, [MetricPoint(group="g" * 200)])
        (call,) = emulator.calls
        assert (call.status, call.body, call.body_size) == (204, None, 0)


async def test_artifact_blobs_are_bounded_oldest_first() -> None:
    async with Emulator(artifact_size=1000, max_artifact_bytes=3000) as emulator:
        _, token = emulator.register_node()
        first = emulator.artifact("1.0", "linux", "amd64")
        for version in ("1.1", "1.2", "1.3"):
            emulator.artifact(version, "linux", "amd64")
        assert [key[0] for key in emulator.artifacts] == ["1.1", "1.2", "1.3"]
        # A dropped blob comes back identical: they are generated deterministically.
        async with (
            emulator.client(token) as client,
            client.fetch_artifact("1.0", "linux", "amd64") as artifact,
        ):
            body = b"".join([chunk async for chunk in artifact.iter_chunks()])
        assert body == first
        assert [key[0] for key in emulator.artifacts] == ["1.2", "1.3", "1.0"]


def test_bounds_that_cannot_work_are_refused() -> None:
    for options in ({"max_events": 0}, {"max_calls": 0}, {"max_recorded_bytes": -1}):
        with pytest.raises(ValueError, match=r"max_|bound"):
            Emulator(**options)  # type: ignore[arg-type]
