"""APIError.correlation_id: from a problem document, else the X-Correlation-Id header;
bounded, unprintable characters removed, shown in str(error)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from plexd.api import PROBLEM_JSON, APIError, NotFoundError
from plexd.api.errors import MAX_CORRELATION_ID, correlation_id_of, from_response


def problem(**members: Any) -> bytes:
    return json.dumps({"title": "Not Found", **members}).encode()


def test_the_problem_documents_id_comes_before_the_header() -> None:
    headers = {"Content-Type": PROBLEM_JSON, "X-Correlation-Id": "from-header"}
    error = from_response(404, headers, problem(correlation_id="from-body"))
    assert error.correlation_id == "from-body"
    assert "(correlation id from-body)" in str(error)


@pytest.mark.parametrize(
    "body",
    [problem(), problem(correlation_id=7), problem(correlation_id=""), b"not json"],
    ids=["absent", "not-a-string", "empty", "not-json"],
)
def test_the_header_when_the_body_has_none(body: bytes) -> None:
    headers = {"Content-Type": PROBLEM_JSON, "X-Correlation-Id": "req-42"}
    assert from_response(503, headers, body).correlation_id == "req-42"


def test_a_plain_body_takes_the_header_and_none_gives_empty() -> None:
    headers = CIMultiDict({"x-correlation-id": "abc"})  # as aiohttp gives them
    assert from_response(500, headers, b"oops").correlation_id == "abc"
    error = from_response(500, {}, b"oops")
    assert error.correlation_id == ""
    assert "correlation" not in str(error)


def test_an_id_over_256_bytes_is_dropped() -> None:
    assert correlation_id_of("a" * MAX_CORRELATION_ID) == "a" * MAX_CORRELATION_ID
    assert correlation_id_of("a" * (MAX_CORRELATION_ID + 1)) == ""
    # Bytes, not characters: 129 two-byte characters are 258 bytes.
    assert correlation_id_of("é" * 129) == ""
    # A too long body id falls back to the header.
    headers = {"Content-Type": PROBLEM_JSON, "X-Correlation-Id": "short"}
    error = from_response(404, headers, problem(correlation_id="x" * 300))
    assert error.correlation_id == "short"


def test_unprintable_characters_are_removed() -> None:
    forged = "abc\r\nINFO plexd.api: all good\x1b[2K\u202e"
    assert correlation_id_of(forged) == "abcINFO plexd.api: all good[2K"


@given(st.text())
def test_any_id_is_printable_and_bounded(value: str) -> None:
    shown = correlation_id_of(value)
    assert shown.isprintable()
    assert len(shown.encode("utf-8", "surrogatepass")) <= MAX_CORRELATION_ID
    assert "\n" not in str(APIError(500, "", correlation_id=shown))


async def test_a_servers_correlation_id_reaches_the_error(loopback: Any) -> None:
    async def not_found(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=404,
            body=problem(detail="no such node", correlation_id="c0ffee\n"),
            headers={"Content-Type": PROBLEM_JSON, "X-Correlation-Id": "ignored"},
        )

    server = await loopback(not_found)
    async with server.client() as client:
        with pytest.raises(NotFoundError) as caught:
            await client.fetch_state("n1")
    assert caught.value.correlation_id == "c0ffee"
    assert str(caught.value) == (
        "GET /v1/nodes/n1/state: HTTP 404: no such node (correlation id c0ffee)"
    )
