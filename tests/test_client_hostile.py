"""A hostile control plane and a careless caller: whatever they send or pass, only a
PlexdError leaves the package (deep JSON, bytes that are not JSON, unsendable headers,
a second event loop, silent and encoded event streams)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import ssl
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from plexd.api import (
    TLS_HANDSHAKE_LIMIT,
    ArgumentError,
    Config,
    ConfigError,
    ControlPlane,
    Ed25519Verifier,
    EventLoopError,
    PlexdError,
    ResponseError,
    ServerError,
    SignedEnvelope,
    SSEIdleTimeoutError,
    SSEManager,
    SSEProtocolError,
    StateResponse,
    decode_raw,
    envelope_json,
    parse_envelope,
    raw_json,
    set_tls_handshake_limit,
    sign_envelope,
)
from plexd.api.errors import from_response

# Deeper than msgspec's recursion guard on every supported Python: about 1,000 levels on
# 3.11 and 3.12, about 10,000 on 3.13 (which has its own C recursion limit).
DEPTH = 50_000
DEEP = b"[" * DEPTH
DEEP_CLOSED = b"[" * DEPTH + b"]" * DEPTH
NODE = "node-1"
SEED = bytes(range(32))
PUBLIC_KEY = SigningKey(SEED).verify_key.encode()


def answer_with(
    body: bytes, status: int = 200, content_type: str = "application/json"
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    return handler


# --- deep JSON: RecursionError in the decoder ----------------------------------------


@pytest.mark.parametrize("body", [DEEP, DEEP_CLOSED], ids=["unclosed", "closed"])
async def test_deeply_nested_json_from_get_json_is_a_response_error(
    loopback: Any, body: bytes
) -> None:
    server = await loopback(answer_with(body))
    async with server.client() as cp:
        with pytest.raises(ResponseError, match="not valid JSON"):
            await cp.get_json("/anything")


async def test_deeply_nested_json_under_an_unknown_key_of_a_typed_endpoint(loopback: Any) -> None:
    body = b'{"peers": [], "unknown": ' + DEEP_CLOSED + b"}"
    server = await loopback(answer_with(body))
    async with server.client() as cp:
        with pytest.raises(ResponseError):
            await cp.fetch_state(NODE)


async def test_deeply_nested_problem_json_keeps_the_status_error_with_the_body_unparsed(
    loopback: Any,
) -> None:
    handler = answer_with(DEEP, status=503, content_type="application/problem+json")
    server = await loopback(handler)
    async with server.client() as cp:
        with pytest.raises(ServerError) as info:
            await cp.ping()
    assert info.value.status_code == 503
    assert (info.value.title, info.value.detail) == ("", "")
    assert info.value.message.startswith("[[[")


def test_problem_members_that_are_not_text_are_left_empty() -> None:
    body = b'{"title": [[1]], "detail": {"a": 1}, "code": 42}'
    error = from_response(400, {"Content-Type": "application/problem+json"}, body)
    assert (error.title, error.detail, error.code) == ("", "", "42")


def signed_event(n: int) -> bytes:
    envelope = sign_envelope(SEED, "peer_added", f"evt-{n}", {"n": n})
    return b"id: %d\nevent: peer_added\ndata: %s\n\n" % (n, envelope_json(envelope))


async def run_manager(server: Any, expected: int, idle_timeout: float = 5) -> list[str]:
    config = Config(base_url=server.url, sse_idle_timeout=idle_timeout)
    async with ControlPlane(config, "test") as cp:
        manager = SSEManager(cp, Ed25519Verifier(PUBLIC_KEY))
        manager.set_reconnect_intervals(0.001, 0.01)
        ids: list[str] = []

        def collect(envelope: SignedEnvelope) -> None:
            ids.append(envelope.event_id)
            if len(ids) >= expected:
                manager.shutdown()

        manager.register_handler("peer_added", collect)
        await asyncio.wait_for(manager.start(NODE), 10)
    return ids


async def event_stream(
    request: web.Request, body: bytes, headers: dict[str, str] | None = None
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **(headers or {})})
    await response.prepare(request)
    await response.write(body)
    await asyncio.sleep(3600)
    return response


async def test_a_503_with_deep_problem_json_on_the_events_endpoint_is_retried(
    loopback: Any,
) -> None:
    answers = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal answers
        answers += 1
        if answers == 1:
            headers = {"Content-Type": "application/problem+json"}
            return web.Response(status=503, body=DEEP, headers=headers)
        return await event_stream(request, signed_event(1))

    server = await loopback(handler)
    assert await run_manager(server, 1) == ["evt-1"]
    assert answers == 2


# --- every decode entry point, fuzzed --------------------------------------------------

nesting = st.builds(
    lambda opener, depth, tail: opener * depth + tail,
    st.sampled_from(
        [b"[", b'{"a":', b'{"payload":', b'{"event_type":"x","event_id":"1","payload":']
    ),
    st.integers(min_value=0, max_value=20000),
    st.binary(max_size=16),
)
hostile_json = st.one_of(st.binary(max_size=256), nesting)


def only_plexd_errors(call: Callable[[], Any]) -> None:
    with contextlib.suppress(PlexdError):
        call()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=hostile_json)
def test_decoders_raise_only_plexd_errors_whatever_the_bytes(body: bytes) -> None:
    cp = ControlPlane(Config(base_url="http://127.0.0.1:9"), "test")
    for result_type in (None, StateResponse, list[int]):
        only_plexd_errors(lambda t=result_type: cp._decode(body, t, "GET /x", ""))
    only_plexd_errors(lambda: decode_raw(body))
    only_plexd_errors(lambda: decode_raw(body, StateResponse))
    only_plexd_errors(lambda: parse_envelope(body))
    only_plexd_errors(lambda: parse_envelope(body.decode("utf-8", "surrogateescape")))
    envelope = SignedEnvelope(event_type="t", event_id="1", payload=body)
    only_plexd_errors(envelope.decode_payload)
    for content_type in ("application/problem+json", "text/plain"):
        error = from_response(503, {"Content-Type": content_type}, body)
        assert isinstance(error, ServerError)


def nested_list(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


def test_a_python_value_nested_too_deep_for_json_is_an_argument_error() -> None:
    with pytest.raises(ArgumentError):
        raw_json(nested_list(DEPTH))
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ArgumentError):
        raw_json(cyclic)
    with pytest.raises(ArgumentError):
        raw_json(object())


async def test_a_request_body_nested_too_deep_is_an_argument_error_before_sending(
    loopback: Any,
) -> None:
    server = await loopback()
    async with server.client() as cp:
        with pytest.raises(ArgumentError, match="nested too deep"):
            await cp.post_json("/x", nested_list(DEPTH))
        with pytest.raises(ArgumentError, match="cannot encode"):
            await cp.post_json("/x", {"a": object()})
    assert server.received == []


# --- what a caller passes --------------------------------------------------------------

# What aiohttp refuses in a header, and lone surrogates, which it would silently drop
# (so another token than the one set would be sent).
UNSENDABLE = [chr(c) for c in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F, 0xD800, 0xDFFF)]


@settings(max_examples=60, deadline=None)
@given(
    prefix=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20),
    bad=st.sampled_from(UNSENDABLE),
)
def test_a_token_that_cannot_be_a_header_is_refused_without_echoing_it(
    prefix: str, bad: str
) -> None:
    cp = ControlPlane(Config(base_url="http://127.0.0.1:9"), "test")
    token = f"secret-{prefix}{bad}tail"
    with pytest.raises(ConfigError, match="token") as info:
        cp.set_auth_token(token)
    assert "secret-" not in str(info.value) and "secret-" not in repr(info.value)


async def test_a_refused_token_leaves_the_previous_one_in_use(loopback: Any) -> None:
    server = await loopback()
    async with server.client() as cp:
        cp.set_auth_token("good")
        with pytest.raises(ConfigError):
            cp.set_auth_token("bad\r\nX-Injected: 1")
        await cp.ping()
    assert server.last.headers["Authorization"] == "Bearer good"
    assert "X-Injected" not in server.last.headers


@pytest.mark.parametrize("last_event_id", ["a\x0bb", "a\ud800b"])
async def test_an_unsendable_last_event_id_is_an_argument_error(
    loopback: Any, last_event_id: str
) -> None:
    server = await loopback()
    async with server.client() as cp:
        with pytest.raises(ArgumentError, match="last_event_id"):
            async with cp.connect_sse(NODE, last_event_id):
                pass
    assert server.received == []


async def test_empty_or_wrongly_typed_ids_are_argument_errors() -> None:
    async with ControlPlane(Config(base_url="http://127.0.0.1:9"), "1.2.3") as cp:
        with pytest.raises(ArgumentError, match="node_id"):
            await cp.fetch_state("")
        with pytest.raises(ArgumentError, match="node_id"):
            await cp.fetch_state(["not", "hashable"])  # type: ignore[arg-type]
        with pytest.raises(ArgumentError, match="key"):
            await cp.fetch_secret(NODE, "")
        with pytest.raises(ArgumentError, match="execution_id"):
            await cp.ack_execution(NODE, 7, None)  # type: ignore[arg-type]
        with pytest.raises(ArgumentError, match="batch"):
            await cp.report_metrics(NODE, 5)  # type: ignore[arg-type]
        with pytest.raises(ArgumentError, match="path"):
            await cp.get_json("/x\r\nHost: evil")


def test_constructor_arguments_that_cannot_work_are_argument_errors() -> None:
    config = Config(base_url="http://127.0.0.1:9")
    with pytest.raises(ArgumentError, match="version"):
        ControlPlane(config, "1.0\r\n")
    with pytest.raises(ArgumentError, match="config"):
        ControlPlane("http://127.0.0.1:9", "1.0")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="ssl_context"):
        ControlPlane(config, "1.0", ssl_context=True)  # type: ignore[arg-type]


def test_tls_handshake_limit_below_zero_is_an_argument_error() -> None:
    with pytest.raises(ArgumentError, match="limit"):
        set_tls_handshake_limit(-1)
    with pytest.raises(ArgumentError, match="limit"):
        set_tls_handshake_limit("16")  # type: ignore[arg-type]
    set_tls_handshake_limit(TLS_HANDSHAKE_LIMIT)


# --- one client, one event loop --------------------------------------------------------


@contextlib.contextmanager
def server_in_a_thread(
    serve_loopback: Any, ssl_context: ssl.SSLContext | None = None
) -> Iterator[str]:
    """A loopback server on its own loop and thread, so that it outlives asyncio.run()."""
    loop = asyncio.new_event_loop()
    started: asyncio.Future[str] = loop.create_future()
    stop = asyncio.Event()

    async def run() -> None:
        async with serve_loopback(ssl_context=ssl_context) as server:
            started.set_result(server.url)
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),))
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(_result(started), loop).result(10)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


async def _result(future: asyncio.Future[str]) -> str:
    return await future


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_client_used_from_a_second_event_loop_raises_event_loop_error(
    serve_loopback: Any, tls_contexts: Any, tls: bool
) -> None:
    with server_in_a_thread(serve_loopback, tls_contexts.server() if tls else None) as url:
        ssl_context = tls_contexts.client() if tls else None
        cp = ControlPlane(Config(base_url=url), "test", ssl_context=ssl_context)
        asyncio.run(cp.ping())  # leaves a pooled keep-alive connection behind
        with pytest.raises(EventLoopError, match="first used on"):
            asyncio.run(cp.ping())
        with pytest.raises(EventLoopError):
            asyncio.run(cp.get_json("/x"))
        asyncio.run(cp.aclose())
        del cp
        # The first loop's connection was released, not left to warn when collected.
        gc.collect()


def test_a_client_closed_from_another_loop_while_its_own_runs_in_a_thread(
    serve_loopback: Any,
) -> None:
    with server_in_a_thread(serve_loopback) as url:
        cp = ControlPlane(Config(base_url=url), "test")
        owner = asyncio.new_event_loop()
        thread = threading.Thread(target=owner.run_forever)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(cp.ping(), owner).result(10)
            asyncio.run(cp.aclose())
        finally:
            owner.call_soon_threadsafe(owner.stop)
            thread.join(10)
            owner.close()


# --- event streams: silent, encoded ---------------------------------------------------


async def test_iter_chunks_of_a_silent_stream_ends_with_the_idle_timeout(loopback: Any) -> None:
    async def silent(request: web.Request) -> web.StreamResponse:
        return await event_stream(request, b": hello\n\n")

    server = await loopback(silent)
    async with server.client(sse_idle_timeout=0.2) as cp:
        chunks = []
        with pytest.raises(SSEIdleTimeoutError):
            async with asyncio.timeout(10), cp.connect_sse(NODE) as stream:
                async for chunk in stream.iter_chunks():
                    chunks.append(chunk)
    assert chunks == [b": hello\n\n"]


def gzip_stream(events: list[bytes]) -> bytes:
    compressor = zlib.compressobj(wbits=31)
    return b"".join(compressor.compress(e) + compressor.flush(zlib.Z_SYNC_FLUSH) for e in events)


def deflate_stream(events: list[bytes], wbits: int) -> bytes:
    compressor = zlib.compressobj(wbits=wbits)
    return b"".join(compressor.compress(e) + compressor.flush(zlib.Z_SYNC_FLUSH) for e in events)


ENCODED_STREAMS = {
    "gzip": ("gzip", gzip_stream),
    "x-gzip": ("x-gzip", gzip_stream),
    "deflate-zlib": ("deflate", lambda events: deflate_stream(events, 15)),
    "deflate-raw": ("deflate", lambda events: deflate_stream(events, -15)),
    "gzip-members": (
        "gzip",
        lambda events: b"".join(gzip.compress(event) for event in events),
    ),
}


@pytest.mark.parametrize("name", list(ENCODED_STREAMS))
async def test_an_encoded_event_stream_is_decoded_through_the_manager(
    loopback: Any, name: str
) -> None:
    coding, encode = ENCODED_STREAMS[name]
    body = encode([signed_event(n) for n in range(1, 4)])

    async def handler(request: web.Request) -> web.StreamResponse:
        # Written a few bytes at a time: the decoder sees every split.
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Content-Encoding": coding}
        )
        await response.prepare(request)
        for start in range(0, len(body), 7):
            await response.write(body[start : start + 7])
        await asyncio.sleep(3600)
        return response

    server = await loopback(handler)
    assert await run_manager(server, 3) == ["evt-1", "evt-2", "evt-3"]


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("br", b"\x8b\x00\x80"),
        ("gzip", b"this is not gzip at all\n\n"),
        ("deflate", b"\xff\xff\xff\xff not deflate"),
        ("gzip", gzip.compress(b": ok\n\n") + b"trailing garbage"),
    ],
    ids=["unknown-coding", "bad-gzip", "bad-deflate", "garbage-after-gzip"],
)
async def test_an_undecodable_event_stream_is_a_protocol_error(
    loopback: Any, coding: str, body: bytes
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await event_stream(request, body, {"Content-Encoding": coding})

    server = await loopback(handler)
    async with server.client() as cp:
        with pytest.raises(SSEProtocolError):
            async with asyncio.timeout(10), cp.connect_sse(NODE) as stream:
                async for _ in stream.iter_chunks():
                    pass


async def test_a_gzip_bomb_on_the_event_stream_arrives_in_bounded_pieces(loopback: Any) -> None:
    comment = b":" + b"x" * (8 * 1024 * 1024) + b"\n\n"
    body = gzip.compress(comment, compresslevel=9)

    async def handler(request: web.Request) -> web.StreamResponse:
        return await event_stream(request, body, {"Content-Encoding": "gzip"})

    server = await loopback(handler)
    async with server.client(sse_idle_timeout=0.5) as cp:
        sizes = []
        with pytest.raises(SSEIdleTimeoutError):
            async with asyncio.timeout(10), cp.connect_sse(NODE) as stream:
                async for chunk in stream.iter_chunks():
                    sizes.append(len(chunk))
    assert sum(sizes) == len(comment)
    assert max(sizes) <= 256 * 1024
