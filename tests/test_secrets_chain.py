"""No secret in an exception chain: a server that answers malformed HTTP makes aiohttp
raise with the request's headers (Authorization) and URL in the exception; what the
package raises, and everything chained to it, must show neither the token nor a URL
password, in repr, str or a formatted traceback."""

from __future__ import annotations

import base64
import traceback
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from plexd.api import APIConnectionError, Config, ControlPlane, PlexdError
from plexd.api._http import TRANSPORT_ERRORS, map_transport_error

TOKEN = "tok-5ecret-a1b2c3d4"
PASSWORD = "pw-5ecret-e5f6"

MALFORMED = {
    "bad-status-line": b"garbage\r\n\r\n",
    "bad-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "short-body": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab",
    "bad-header": b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    "stream-bad-chunk": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\n:a\n\r\nzz\r\n"
    ),
}


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception chained to it (cause, context, group members)."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    for member in chain(exc):
        shown = [repr(member), str(member), "".join(traceback.format_exception(member))]
        shown += [repr(arg) for arg in member.args]
        shown += (
            [repr(value) for value in vars(member).values()] if hasattr(member, "__dict__") else []
        )
        for text in shown:
            for secret in secrets:
                assert secret not in text, f"{type(member).__name__} shows a secret: {text}"


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_a_malformed_response_leaves_no_token_in_the_exception_chain(
    raw_server: Any, name: str
) -> None:
    address = await raw_server(MALFORMED[name])
    async with ControlPlane(Config(base_url=f"http://{address}", max_retries=0), "1.2.3") as cp:
        cp.set_auth_token(TOKEN)
        with pytest.raises(PlexdError) as info:
            if name.startswith("stream"):
                async with cp.connect_sse("node-1") as stream:
                    async for _ in stream.iter_chunks():
                        pass
            else:
                await cp.get_json("/v1/x")
    assert isinstance(info.value, APIConnectionError)
    assert any(isinstance(member, aiohttp.ClientError) for member in chain(info.value))
    assert_no_secret(info.value, TOKEN)
    # What the user needs stays: the call and what went wrong.
    assert "/v1/" in str(info.value)


async def test_the_scrubbed_request_info_keeps_what_is_not_secret(raw_server: Any) -> None:
    address = await raw_server(MALFORMED["bad-status-line"])
    async with ControlPlane(Config(base_url=f"http://{address}", max_retries=0), "1.2.3") as cp:
        cp.set_auth_token(TOKEN)
        with pytest.raises(APIConnectionError) as info:
            await cp.ping()
    cause = info.value.__cause__
    assert isinstance(cause, aiohttp.ClientResponseError)
    assert cause.request_info.headers["Authorization"] == "***"
    assert cause.request_info.headers["User-Agent"] == "plexd/1.2.3"
    assert cause.request_info.url.path == "/v1/ping"
    assert info.value.__context__ is cause


@pytest.mark.parametrize("userinfo", [f"user:{PASSWORD}", PASSWORD], ids=["password", "token"])
async def test_a_url_password_is_scrubbed_from_a_transport_error(
    raw_server: Any, userinfo: str
) -> None:
    # EventSource maps its transport errors through the same function; its URL may
    # carry user:password, or a token in the user's place (aiohttp turns either into
    # Basic authorization).
    address = await raw_server(MALFORMED["bad-status-line"])
    url = f"http://{userinfo}@{address}/events"
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(url):
                pass
        except TRANSPORT_ERRORS as exc:
            mapped = map_transport_error(exc, "GET /events")
            try:
                raise mapped from exc
            except PlexdError as raised:
                error = raised
    basic = base64.b64encode(f"{userinfo}:".encode() if ":" not in userinfo else userinfo.encode())
    basic = basic.decode()
    assert_no_secret(error, PASSWORD, basic)


def test_a_token_in_the_user_place_of_a_url_in_an_exception_is_scrubbed() -> None:
    # aiohttp quotes the URL it could not use; a token may stand in the user's place.
    exc = aiohttp.InvalidURL(URL(f"http://{TOKEN}@cp.example/v1/ping"))
    mapped = map_transport_error(exc, "GET /v1/ping")
    for text in (str(exc), repr(exc), str(mapped), repr(mapped)):
        assert TOKEN not in text
    assert "cp.example" in str(exc)  # what is not secret stays
