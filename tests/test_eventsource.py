"""EventSource against local aiohttp servers: the points the SSE contract tests check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from plexd.api import EventSource, SSEEvent
from plexd.api.errors import APIConnectionError, ServerError, SSEIdleTimeoutError, SSEProtocolError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedServer:
    """Answers the n-th request with the n-th handler (the last one repeats)."""

    handlers: list[Handler]
    requests: list[Seen] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            Seen(request.method, request.path, dict(request.headers), await request.read())
        )
        index = min(len(self.requests), len(self.handlers)) - 1
        return await self.handlers[index](request)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[ScriptedServer]]]:
    runners: list[web.AppRunner] = []

    async def start(*handlers: Handler) -> ScriptedServer:
        server = ScriptedServer(list(handlers))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", server.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        server.url = f"http://127.0.0.1:{port}"
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


def chunks(*parts: bytes, delay: float = 0.01, then_wait: float = 0.0) -> Handler:
    """A text/event-stream answer sent as the given chunks, ``delay`` apart."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in parts:
            await response.write(part)
            await asyncio.sleep(delay)
        if then_wait:
            await asyncio.sleep(then_wait)
        return response

    return handler


def stalls() -> Handler:
    return chunks(b"", then_wait=3600)


def status(code: int, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers=headers or {})

    return handler


async def take(source: EventSource, count: int, within: float = 5.0) -> list[SSEEvent]:
    events: list[SSEEvent] = []

    async def collect() -> None:
        async for event in source:
            events.append(event)
            if len(events) == count:
                return

    await asyncio.wait_for(collect(), within)
    return events


# --- the request -------------------------------------------------------------


async def test_first_request_has_exact_headers_and_no_last_event_id(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(chunks(b"data: hi\n\n", then_wait=3600))
    async with EventSource(server.url + "/s", headers={"X-Custom": "yes"}) as source:
        [event] = await take(source, 1)
    assert event == SSEEvent(type="message", data="hi", id="")
    [seen] = server.requests
    assert seen.method == "GET"
    assert seen.headers["Accept"] == "text/event-stream"
    assert seen.headers["Cache-Control"] == "no-cache"
    assert seen.headers["X-Custom"] == "yes"
    assert "Last-Event-ID" not in seen.headers


async def test_given_last_event_id_is_sent_on_the_first_request(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(chunks(b"data: hi\n\n", then_wait=3600))
    async with EventSource(server.url, last_event_id="41") as source:
        await take(source, 1)
    assert server.requests[0].headers["Last-Event-ID"] == "41"


async def test_method_and_body_are_sent_on_every_connection(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(chunks(b"id: 1\ndata: a\n\n"), chunks(b"data: b\n\n", then_wait=3600))
    async with EventSource(server.url, method="POST", body=b'{"q":1}', reconnect_delay=0) as source:
        events = await take(source, 2)
    assert [e.data for e in events] == ["a", "b"]
    assert [(r.method, r.body) for r in server.requests] == [("POST", b'{"q":1}')] * 2
    assert server.requests[1].headers["Last-Event-ID"] == "1"


# --- parsing over real chunked bodies -----------------------------------------


STREAM = "id: 7\nevent: greet\ndata: héllo wörld ✓ 😀\ndata: line two\n\n:comment\ndata: x\n\n"


@pytest.mark.parametrize(
    "split",
    [
        pytest.param(lambda b: [b], id="whole"),
        pytest.param(lambda b: [b[i : i + 1] for i in range(len(b))], id="one-byte-chunks"),
        pytest.param(lambda b: [b[:9], b[9:40], b[40:]], id="odd-splits"),
    ],
)
async def test_events_parse_the_same_however_the_body_is_chunked(serve, split) -> None:  # type: ignore[no-untyped-def]
    body = STREAM.encode()
    server = await serve(chunks(*split(body), delay=0.001, then_wait=3600))
    async with EventSource(server.url) as source:
        events = await take(source, 2)
    assert events == [
        SSEEvent(type="greet", data="héllo wörld ✓ 😀\nline two", id="7"),
        SSEEvent(type="message", data="x", id="7"),
    ]


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([b"data: a\r", b"\ndata: b\r\n\r\n"], id="crlf-split"),
        pytest.param([b"data: a\r\ndata: b\r", b"\r"], id="cr-only"),
        pytest.param([b"data: a\ndata: b\n", b"\n"], id="lf"),
        pytest.param([b"\xef", b"\xbb", b"\xbfdata: a\ndata: b\n\n"], id="bom-split"),
    ],
)
async def test_line_ends_and_bom_across_chunks(serve, parts) -> None:  # type: ignore[no-untyped-def]
    server = await serve(chunks(*parts, then_wait=3600))
    async with EventSource(server.url) as source:
        [event] = await take(source, 1)
    assert event.data == "a\nb"


async def test_event_is_delivered_before_the_stream_continues(serve) -> None:  # type: ignore[no-untyped-def]
    # The CR that ends the event arrives, then nothing for a long while.
    server = await serve(chunks(b"data: now\r\r", then_wait=3600))
    async with EventSource(server.url) as source:
        [event] = await take(source, 1, within=2)
    assert event.data == "now"


@pytest.mark.parametrize("size", [7_000_000, 14_000_000])
async def test_very_large_single_events(serve, size: int) -> None:  # type: ignore[no-untyped-def]
    payload = b"x" * size
    body = b"data: " + payload + b"\n\n"
    parts = [body[i : i + 1_000_000] for i in range(0, len(body), 1_000_000)]
    server = await serve(chunks(*parts, delay=0, then_wait=3600))
    async with EventSource(server.url) as source:
        [event] = await take(source, 1, within=30)
    assert len(event.data) == size


# --- comments ------------------------------------------------------------------


async def test_comments_are_reported_in_stream_order(serve) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []
    server = await serve(
        chunks(b": first\ndata: a\n\n:second\n", b"data: b\n\n", b":third\n", then_wait=3600)
    )
    async with EventSource(server.url, on_comment=lambda c: seen.append("c:" + c)) as source:
        async for event in source:
            seen.append("e:" + event.data)
            if event.data == "b":
                break
        # the comment after "b" is reported before the iterator waits again
        waiting = asyncio.ensure_future(source.__anext__())
        await asyncio.sleep(0.2)
        waiting.cancel()
    assert seen == ["c: first", "e:a", "c:second", "e:b", "c:third"]


# --- reconnecting ----------------------------------------------------------------


async def test_reconnect_sends_last_event_id_and_discards_a_partial_event(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(
        chunks(b"id: 1\ndata: one\n\nid: 2\ndata: cut-mid-"),
        chunks(b"id: 2\ndata: two\n\n", then_wait=3600),
    )
    async with EventSource(server.url, reconnect_delay=0) as source:
        events = await take(source, 2)
    assert [(e.id, e.data) for e in events] == [("1", "one"), ("2", "two")]
    assert server.requests[1].headers["Last-Event-ID"] == "1"
    assert source.last_event_id == "2"


async def test_an_empty_id_resets_it_and_no_header_is_sent(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(
        chunks(b"id: 1\ndata: one\n\nid\ndata: two\n\n"),
        chunks(b"data: three\n\n", then_wait=3600),
    )
    async with EventSource(server.url, reconnect_delay=0) as source:
        events = await take(source, 3)
    assert [e.id for e in events] == ["1", "", ""]
    assert "Last-Event-ID" not in server.requests[1].headers


async def test_restart_drops_the_connection_and_reconnects_at_once(serve) -> None:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []
    server = await serve(
        chunks(b"id: 5\ndata: first\n\n", then_wait=3600),
        chunks(b"data: second\n\n", then_wait=3600),
    )
    async with EventSource(server.url, reconnect_delay=30, on_error=errors.append) as source:
        [first] = await take(source, 1)
        assert source.ready_state == "open"
        started = time.monotonic()
        source.restart()
        [second] = await take(source, 1)
    assert (first.data, second.data) == ("first", "second")
    assert time.monotonic() - started < 5  # not the 30 s reconnect delay
    assert errors == []
    assert server.requests[1].headers["Last-Event-ID"] == "5"


async def test_read_timeout_reports_an_error_and_reconnects(serve) -> None:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []
    server = await serve(stalls(), chunks(b"data: back\n\n", then_wait=3600))
    async with EventSource(
        server.url, read_timeout=0.2, reconnect_delay=0, on_error=errors.append
    ) as source:
        [event] = await take(source, 1)
    assert event.data == "back"
    assert len(errors) == 1 and isinstance(errors[0], SSEIdleTimeoutError)


async def test_error_status_is_reported_once_per_attempt(serve) -> None:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []
    server = await serve(status(500), status(503), chunks(b"data: ok\n\n", then_wait=3600))
    async with EventSource(server.url, reconnect_delay=0, on_error=errors.append) as source:
        [event] = await take(source, 1)
    assert event.data == "ok"
    assert [type(e) for e in errors] == [ServerError, ServerError]
    assert [e.status_code for e in errors] == [500, 503]  # type: ignore[attr-defined]
    assert len(server.requests) == 3


async def test_wrong_content_type_is_an_error_and_reconnects(serve) -> None:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []

    async def plain(request: web.Request) -> web.StreamResponse:
        return web.Response(text="data: no\n\n")

    server = await serve(plain, chunks(b"data: yes\n\n", then_wait=3600))
    async with EventSource(server.url, reconnect_delay=0, on_error=errors.append) as source:
        [event] = await take(source, 1)
    assert event.data == "yes"
    assert [type(e) for e in errors] == [SSEProtocolError]


async def test_clean_end_of_stream_reports_at_most_one_error(serve) -> None:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []
    server = await serve(chunks(b"data: a\n\n"), chunks(b"data: b\n\n", then_wait=3600))
    async with EventSource(server.url, reconnect_delay=0, on_error=errors.append) as source:
        await take(source, 2)
    assert len(errors) <= 1
    assert len(server.requests) == 2


async def test_dropped_connection_is_reported_and_the_next_works(serve) -> None:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []

    async def abort(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: a\n\n")
        assert request.transport is not None
        request.transport.abort()
        return response

    server = await serve(abort, chunks(b"data: b\n\n", then_wait=3600))
    async with EventSource(server.url, reconnect_delay=0, on_error=errors.append) as source:
        events = await take(source, 2)
    assert [e.data for e in events] == ["a", "b"]
    assert len(errors) <= 1
    assert all(isinstance(e, APIConnectionError) for e in errors)


# --- redirects and 204 -------------------------------------------------------------


@pytest.mark.parametrize("code", [301, 307])
async def test_redirects_are_followed(serve, code: int) -> None:  # type: ignore[no-untyped-def]
    target = await serve(chunks(b"data: moved\n\n", then_wait=3600))
    origin = await serve(status(code, {"Location": target.url + "/new"}))
    async with EventSource(
        origin.url + "/old", headers={"Authorization": "Bearer secret"}
    ) as source:
        [event] = await take(source, 1)
    assert event.data == "moved"
    assert target.requests[0].path == "/new"
    # another port is another origin: the token stays behind
    assert "Authorization" not in target.requests[0].headers


async def test_same_origin_redirect_keeps_authorization_and_body(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(
        status(307, {"Location": "/there"}), chunks(b"data: here\n\n", then_wait=3600)
    )
    async with EventSource(
        server.url + "/start",
        method="POST",
        body=b"payload",
        headers={"Authorization": "Bearer t"},
    ) as source:
        await take(source, 1)
    second = server.requests[1]
    assert (second.path, second.method, second.body) == ("/there", "POST", b"payload")
    assert second.headers["Authorization"] == "Bearer t"


@pytest.mark.parametrize("location", [None, ""])
@pytest.mark.parametrize("code", [301, 307])
async def test_redirect_without_location_is_an_error_within_a_second(
    serve,  # type: ignore[no-untyped-def]
    code: int,
    location: str | None,
) -> None:
    errors: list[BaseException] = []
    got_error = asyncio.Event()

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        got_error.set()

    headers = {} if location is None else {"Location": location}
    server = await serve(status(code, headers))
    async with EventSource(server.url, reconnect_delay=10, on_error=on_error) as source:
        pending = asyncio.ensure_future(source.__anext__())
        await asyncio.wait_for(got_error.wait(), 1)
        pending.cancel()
    assert isinstance(errors[0], SSEProtocolError)
    assert "Location" in str(errors[0])
    assert len(server.requests) == 1


async def test_204_stops_for_good_after_exactly_one_request(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(status(204))
    source = EventSource(server.url, reconnect_delay=0)
    events = [event async for event in source]
    await asyncio.sleep(0.1)
    assert events == []
    assert len(server.requests) == 1
    assert source.ready_state == "closed"
    await source.aclose()


async def test_reconnect_delay_zero_reconnects_at_once(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(
        chunks(b"data: 1\n\n"), chunks(b"data: 2\n\n"), chunks(b"data: 3\n\n", then_wait=3600)
    )
    started = time.monotonic()
    async with EventSource(server.url, reconnect_delay=0) as source:
        events = await take(source, 3)
    assert [e.data for e in events] == ["1", "2", "3"]
    assert time.monotonic() - started < 2


async def test_retry_field_sets_the_reconnect_delay(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(chunks(b"retry: 0\ndata: 1\n\n"), chunks(b"data: 2\n\n", then_wait=3600))
    async with EventSource(server.url, reconnect_delay=30) as source:
        events = await take(source, 2, within=3)
    assert [e.data for e in events] == ["1", "2"]


async def test_aclose_is_idempotent_and_ends_iteration(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(stalls())
    source = EventSource(server.url)
    pending = asyncio.ensure_future(source.__anext__())
    await asyncio.sleep(0.1)
    await source.aclose()
    await source.aclose()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 1)
    assert source.ready_state == "closed"


async def test_any_method_with_a_body_and_content_type(serve) -> None:  # type: ignore[no-untyped-def]
    server = await serve(chunks(b"data: ok\n\n", then_wait=3600))
    headers = {"Content-Type": "application/json; charset=utf-8"}
    async with EventSource(
        server.url, method="REPORT", body=b'{"hello": "world"}', headers=headers
    ) as source:
        await take(source, 1)
    [seen] = server.requests
    assert (seen.method, seen.body) == ("REPORT", b'{"hello": "world"}')
    assert seen.headers["Content-Type"] == "application/json; charset=utf-8"


async def test_a_large_read_is_parsed_in_slices_without_loss(serve) -> None:  # type: ignore[no-untyped-def]
    # ~600 KiB in one write: the consumer parses it slice by slice (events cross the
    # slice boundaries), and the reconnect waits until all of it was parsed.
    count = 3000
    body = b"".join(
        b"id: %d\ndata: %s\n\n%s" % (n, b"x" * 180, b": half way\n" if n == count // 2 else b"")
        for n in range(1, count + 1)
    )
    comments: list[str] = []
    server = await serve(chunks(body, delay=0), chunks(b"data: after\n\n", then_wait=3600))
    async with EventSource(server.url, reconnect_delay=0, on_comment=comments.append) as source:
        events = await take(source, count + 1, within=10)
    assert [e.id for e in events[:count]] == [str(n) for n in range(1, count + 1)]
    assert events[-1].data == "after"
    assert comments == [" half way"]
    assert server.requests[1].headers["Last-Event-ID"] == str(count)
