"""How ControlPlane reads answers: gzip, the 10 MiB cap, error mapping, and bad input."""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import struct
import time
import tracemalloc
import zlib
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from plexd.api import (
    APIError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    HeartbeatRequest,
    HeartbeatResponse,
    NotFoundError,
    PayloadTooLargeError,
    PlexdError,
    RateLimitError,
    ResponseError,
    ServerError,
    UnauthorizedError,
)
from plexd.api._client import MAX_RESPONSE_SIZE

MIB = 1024 * 1024


def answering(body: bytes, *, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=status,
            body=body,
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    return answer


async def heartbeat_answered_with(
    loopback: Any,
    body: bytes,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **config: Any,
) -> HeartbeatResponse:
    server = await loopback(answering(body, status=status, headers=headers))
    async with server.client(**config) as cp:
        return await cp.heartbeat("n1", HeartbeatRequest())


# --- gzip responses ------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "GZIP"])
async def test_gzip_response_is_decompressed(loopback: Any, coding: str) -> None:
    body = gzip.compress(b'{"reconcile":true,"rotate_keys":true}')
    answer = await heartbeat_answered_with(loopback, body, headers={"Content-Encoding": coding})
    assert answer == HeartbeatResponse(reconcile=True, rotate_keys=True)


async def test_multi_member_gzip_response_is_read_whole(loopback: Any) -> None:
    body = gzip.compress(b'{"reconcile":') + gzip.compress(b"true}")
    answer = await heartbeat_answered_with(loopback, body, headers={"Content-Encoding": "gzip"})
    assert answer == HeartbeatResponse(reconcile=True)


@pytest.mark.parametrize("members", [1, 3])
async def test_chunked_gzip_response_is_decompressed(loopback: Any, members: int) -> None:
    document = b'{"a":"' + b"x" * 300_000 + b'"}'
    cut = len(document) // members
    parts = [document[i * cut : (i + 1) * cut] for i in range(members - 1)]
    parts.append(document[(members - 1) * cut :])
    compressed = b"".join(gzip.compress(part) for part in parts)

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(compressed), 97):
            await response.write(compressed[start : start + 97])
        return response

    server = await loopback(chunked)
    async with server.client() as cp:
        assert await cp.get_json("/v1/big") == {"a": "x" * 300_000}


# --- the 10 MiB cap --------------------------------------------------------------------


def json_string_of(size: int) -> bytes:
    return b'"' + b"a" * (size - 2) + b'"'


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
async def test_a_body_of_exactly_10_mib_is_read(loopback: Any, compressed: bool) -> None:
    document = json_string_of(MAX_RESPONSE_SIZE)
    body = gzip.compress(document, compresslevel=1) if compressed else document
    headers = {"Content-Encoding": "gzip"} if compressed else {}
    server = await loopback(answering(body, headers=headers))
    async with server.client() as cp:
        value = await cp.get_json("/v1/big")
    assert len(value) == MAX_RESPONSE_SIZE - 2


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
async def test_a_body_one_byte_over_10_mib_is_refused(loopback: Any, compressed: bool) -> None:
    document = json_string_of(MAX_RESPONSE_SIZE + 1)
    body = gzip.compress(document, compresslevel=1) if compressed else document
    headers = {"Content-Encoding": "gzip"} if compressed else {}
    server = await loopback(answering(body, headers=headers))
    async with server.client() as cp:
        with pytest.raises(ResponseError, match="larger than 10485760 bytes"):
            await cp.get_json("/v1/big")


async def test_an_endless_chunked_body_stops_at_the_cap_with_bounded_memory(loopback: Any) -> None:
    stopped = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        block = b" " * (256 * 1024)
        try:
            while True:
                await response.write(block)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            stopped.set()
        return response

    server = await loopback(endless)
    async with server.client() as cp:
        tracemalloc.start()
        try:
            with pytest.raises(ResponseError, match="larger than"):
                await cp.fetch_state("n1")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await asyncio.wait_for(stopped.wait(), 10)
    assert peak < 32 * MIB


def gzip_bomb(mebibytes: int) -> bytes:
    """A valid gzip member holding ``mebibytes`` MiB of zeros, built without compressing
    them all: after a full flush the deflate output for each 1 MiB of zeros is the same."""
    zeros = bytes(MIB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    repeated = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    header = first[: len(first) - len(repeated)]
    final_block = deflate.flush()[:-8]
    crc = 0
    for _ in range(mebibytes):
        crc = zlib.crc32(zeros, crc)
    trailer = struct.pack("<II", crc, (mebibytes * MIB) & 0xFFFFFFFF)
    return header + repeated * mebibytes + final_block + trailer


def test_gzip_bomb_helper_builds_valid_gzip() -> None:
    assert zlib.decompress(gzip_bomb(3), 31) == bytes(3 * MIB)


async def test_gzip_bomb_stops_at_the_cap_with_bounded_memory(loopback: Any) -> None:
    bomb = gzip_bomb(1024)  # 1 GiB decompressed, about 1 MB on the wire
    assert len(bomb) < 2 * MIB
    answer = answering(bomb, headers={"Content-Encoding": "gzip"})
    server = await loopback(answer)
    async with server.client() as cp:
        tracemalloc.start()
        try:
            with pytest.raises(ResponseError, match="larger than 10485760 bytes") as info:
                await cp.fetch_state("n1")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert "GET /v1/nodes/n1/state" in str(info.value)
    assert peak < 32 * MIB


# --- bad input from the server raises a PlexdError a user can act on ----------------------


async def test_non_json_200_names_the_endpoint_and_content_type(loopback: Any) -> None:
    with pytest.raises(ResponseError) as info:
        await heartbeat_answered_with(
            loopback, b"<html>maintenance</html>", headers={"Content-Type": "text/html"}
        )
    message = str(info.value)
    assert "POST /v1/nodes/n1/heartbeat" in message
    assert "not valid JSON" in message
    assert "text/html" in message


async def test_truncated_gzip_body_is_reported(loopback: Any) -> None:
    body = gzip.compress(b'{"reconcile":true,"rotate_keys":true}')[:-12]
    with pytest.raises(ResponseError, match="gzip response body is truncated"):
        await heartbeat_answered_with(loopback, body, headers={"Content-Encoding": "gzip"})


async def test_body_that_is_not_gzip_despite_its_header_is_reported(loopback: Any) -> None:
    with pytest.raises(ResponseError, match="Content-Encoding: gzip but its body is not valid"):
        await heartbeat_answered_with(
            loopback, b'{"reconcile":true}', headers={"Content-Encoding": "gzip"}
        )


@pytest.mark.parametrize("coding", ["br", "deflate", "zstd", "gzip, br"])
async def test_unsupported_content_encoding_is_reported(loopback: Any, coding: str) -> None:
    with pytest.raises(ResponseError, match="unsupported Content-Encoding"):
        await heartbeat_answered_with(loopback, b"\x00\x01", headers={"Content-Encoding": coding})


@pytest.mark.parametrize("status", [200, 201, 204])
async def test_empty_2xx_where_a_response_is_expected_is_reported(
    loopback: Any, status: int
) -> None:
    with pytest.raises(ResponseError) as info:
        await heartbeat_answered_with(loopback, b"", status=status)
    assert "empty response body, expected a JSON HeartbeatResponse" in str(info.value)
    assert "POST /v1/nodes/n1/heartbeat" in str(info.value)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"reconcile":"yes"}', "$.reconcile"),
        (b"[true, false]", "Expected `object`"),
        (b'{"rotate_keys":1.5}', "$.rotate_keys"),
    ],
)
async def test_wrong_shape_names_the_endpoint_and_the_problem(
    loopback: Any, body: bytes, where: str
) -> None:
    with pytest.raises(ResponseError) as info:
        await heartbeat_answered_with(loopback, body)
    message = str(info.value)
    assert "POST /v1/nodes/n1/heartbeat" in message
    assert "not a valid HeartbeatResponse" in message
    assert where in message


async def test_a_time_without_offset_in_a_response_is_reported(loopback: Any) -> None:
    body = b'{"data":[{"key":"k","updated_at":"2024-05-06T07:08:09"}]}'
    server = await loopback(answering(body))
    async with server.client() as cp:
        with pytest.raises(ResponseError, match=r"timezone.*\$\.data\[0\]\.updated_at"):
            await cp.fetch_state("n1")


async def test_naive_datetime_in_a_request_is_refused_before_sending(loopback: Any) -> None:
    request = HeartbeatRequest()
    request.timestamp = datetime(2024, 1, 1)
    server = await loopback()
    async with server.client() as cp:
        with pytest.raises(PlexdError, match=r"HeartbeatRequest\.timestamp.*naive"):
            await cp.heartbeat("n1", request)
        with pytest.raises(PlexdError, match="naive"):
            await cp.post_json("/v1/custom", {"at": datetime(2024, 1, 1)})
    assert server.received == []


async def test_unencodable_request_body_is_a_plexd_error(loopback: Any) -> None:
    server = await loopback()
    async with server.client() as cp:
        with pytest.raises(PlexdError, match="cannot encode request body"):
            await cp.post_json("/v1/custom", {"x": object()})
    assert server.received == []


# --- error statuses over the wire ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, UnauthorizedError),
        (403, ForbiddenError),
        (404, NotFoundError),
        (405, APIError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (418, APIError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
    ],
)
async def test_every_error_status_maps_to_its_class(
    loopback: Any, status: int, cls: type[APIError]
) -> None:
    with pytest.raises(APIError) as info:
        await heartbeat_answered_with(loopback, b"node n1 says no", status=status)
    error = info.value
    assert type(error) is cls
    assert error.status_code == status
    assert error.message == "node n1 says no"
    assert str(error) == f"POST /v1/nodes/n1/heartbeat: HTTP {status}: node n1 says no"


async def test_error_on_a_none_response_endpoint_is_raised_too(loopback: Any) -> None:
    server = await loopback(answering(b"gone", status=404))
    async with server.client() as cp:
        with pytest.raises(NotFoundError, match="gone"):
            await cp.deregister("n1")


async def test_problem_json_error_carries_title_detail_and_code(loopback: Any) -> None:
    body = b'{"title":"Conflict","detail":"node n1 already registered","code":"NODE_EXISTS"}'
    with pytest.raises(ConflictError) as info:
        await heartbeat_answered_with(
            loopback, body, status=409, headers={"Content-Type": "application/problem+json"}
        )
    assert (info.value.title, info.value.detail, info.value.code) == (
        "Conflict",
        "node n1 already registered",
        "NODE_EXISTS",
    )
    assert "node n1 already registered" in str(info.value)


async def test_gzip_error_body_is_decompressed_for_the_message(loopback: Any) -> None:
    with pytest.raises(ServerError) as info:
        await heartbeat_answered_with(
            loopback,
            gzip.compress(b"database unavailable"),
            status=500,
            headers={"Content-Encoding": "gzip"},
        )
    assert info.value.message == "database unavailable"


async def test_error_message_is_the_first_4096_bytes(loopback: Any) -> None:
    body = bytes(range(ord("a"), ord("z") + 1)) * 400
    with pytest.raises(BadRequestError) as info:
        await heartbeat_answered_with(loopback, body, status=400)
    assert info.value.message == body[:4096].decode()


async def test_a_huge_error_body_is_not_read_past_4096_bytes(loopback: Any) -> None:
    total = 64 * MIB
    written = 0
    done = asyncio.Event()

    async def flood(request: web.Request) -> web.StreamResponse:
        nonlocal written
        response = web.StreamResponse(status=500)
        response.content_length = total
        await response.prepare(request)
        block = b"e" * (256 * 1024)
        try:
            while written < total:
                await response.write(block)
                written += len(block)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass
        done.set()
        return response

    server = await loopback(flood)
    async with server.client() as cp:
        with pytest.raises(ServerError) as info:
            await cp.ping()
        await asyncio.wait_for(done.wait(), 10)
    assert info.value.message == "e" * 4096
    assert written < total


async def test_retry_after_seconds_on_429(loopback: Any) -> None:
    with pytest.raises(RateLimitError) as info:
        # One attempt: a retry would wait the 17 s (tests/test_retry.py has the waits).
        await heartbeat_answered_with(
            loopback, b"slow down", status=429, headers={"Retry-After": "17"}, max_retries=0
        )
    assert info.value.retry_after == 17.0


async def test_retry_after_http_date_is_honoured(loopback: Any) -> None:
    in_an_hour = email.utils.formatdate(time.time() + 3600, usegmt=True)
    with pytest.raises(ServerError) as info:
        await heartbeat_answered_with(
            loopback, b"", status=503, headers={"Retry-After": in_an_hour}
        )
    assert info.value.retry_after is not None
    assert 3000 < info.value.retry_after <= 3600


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({"Retry-After": "later"}, None),
        ({}, None),
    ],
)
async def test_retry_after_past_unparsable_or_absent(
    loopback: Any, headers: dict[str, str], expected: float | None
) -> None:
    with pytest.raises(RateLimitError) as info:
        await heartbeat_answered_with(loopback, b"", status=429, headers=headers)
    assert info.value.retry_after == expected
