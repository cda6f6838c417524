"""EventSource's life: leaving it, closing it from any state, cancelling its caller, the
statuses that end it, unsendable ids, the resume cursor and URL passwords.

Real loopback servers (conftest.py's fixtures). "Promptly" is checked with hang guards only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from plexd.api import EventSource, SSEEvent
from plexd.api.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ArgumentError,
    NotFoundError,
    PlexdError,
    SSEProtocolError,
)

HANG_GUARD = 5.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def stream(*parts: bytes, hold: bool = True, gap: float = 0.01) -> Handler:
    """A text/event-stream answer of ``parts``; then held open, or closed."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for part in parts:
            await response.write(part)
            await asyncio.sleep(gap)
        if hold:
            await asyncio.sleep(3600)
        return response

    return handler


def status(code: int, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers=headers or {}, text="nope")

    return handler


def in_turn(*handlers: Handler) -> Handler:
    """The n-th request gets the n-th handler; the last one repeats."""
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        return await handlers[min(calls, len(handlers)) - 1](request)

    return handler


async def take(source: EventSource, count: int) -> list[SSEEvent]:
    events: list[SSEEvent] = []
    async with promptly():
        async for event in source:
            events.append(event)
            if len(events) == count:
                break
    return events


@contextlib.asynccontextmanager
async def promptly() -> AsyncIterator[None]:
    """A hang guard that a swallowed cancellation cannot fool: the block must end by
    itself, before HANG_GUARD seconds."""
    async with asyncio.timeout(HANG_GUARD) as guard:
        yield
    assert not guard.expired(), "the block ended only because the hang guard cancelled it"


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (it is state of the code under test: no event to
    wait on), at most HANG_GUARD seconds."""
    async with promptly():
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def event_source_tasks() -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and "EventSource" in task.get_coro().__qualname__  # type: ignore[union-attr]
    ]


async def assert_nothing_left(source: EventSource) -> None:
    """The background task ends (soon: it may be finishing its cancellation) and the
    session is closed."""
    await until(lambda: not event_source_tasks())
    assert source._session is None
    assert source.ready_state == "closed"


MANY_EVENTS = b"".join(b"id: %d\ndata: %s\n\n" % (n, b"x" * 1000) for n in range(2000))


# --- leaving the block returns promptly (item 6) ----------------------------------------


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(stream(MANY_EVENTS), id="more-than-read-ahead-then-held"),
        pytest.param(stream(b"data: one\n\n", hold=False), id="one-event-then-closed"),
        pytest.param(stream(b"data: a\n\n", b"data: b\n\n", b"data: c\n\n"), id="events-held"),
    ],
)
@pytest.mark.parametrize("then_await", [False, True])
async def test_break_then_leaving_the_block_returns(
    loopback: Any, handler: Handler, then_await: bool
) -> None:
    server = await loopback(handler)
    async with promptly():
        async with EventSource(server.url, reconnect_delay=0) as source:
            async for _event in source:
                break
            if then_await:
                # The connection task runs on meanwhile: it fills the queue, or finishes
                # the connection and waits for the consumer to take what it read.
                await asyncio.sleep(0.2)
        await assert_nothing_left(source)


async def test_aclose_before_anything_started() -> None:
    source = EventSource("http://127.0.0.1:9/never")
    await source.aclose()
    await source.aclose()
    assert source.ready_state == "closed"
    with pytest.raises(StopAsyncIteration):
        await source.__anext__()
    await assert_nothing_left(source)


async def test_aclose_during_a_connect_that_never_answers(silent_server: Any) -> None:
    source = EventSource(f"http://{silent_server.address}/")
    pending = asyncio.ensure_future(source.__anext__())
    async with promptly():
        await silent_server.wait_for_accepted(1)
    assert source.ready_state == "connecting"
    async with promptly():
        await source.aclose()
    with pytest.raises(StopAsyncIteration):
        async with promptly():
            await pending
    await assert_nothing_left(source)


async def test_aclose_during_a_redirect(silent_server: Any, loopback: Any) -> None:
    target = f"http://{silent_server.address}/there"
    server = await loopback(status(307, {"Location": target}))
    source = EventSource(server.url)
    pending = asyncio.ensure_future(source.__anext__())
    # the first request was answered; the redirected one hangs
    async with promptly():
        await silent_server.wait_for_accepted(1)
    async with promptly():
        await source.aclose()
    with pytest.raises(StopAsyncIteration):
        async with promptly():
            await pending
    await assert_nothing_left(source)


async def test_aclose_while_waiting_to_reconnect(loopback: Any) -> None:
    got_error = asyncio.Event()
    server = await loopback(status(500))
    source = EventSource(server.url, reconnect_delay=30, on_error=lambda exc: got_error.set())
    pending = asyncio.ensure_future(source.__anext__())
    async with promptly():
        await got_error.wait()
    async with promptly():
        await source.aclose()
    with pytest.raises(StopAsyncIteration):
        async with promptly():
            await pending
    await assert_nothing_left(source)
    assert len(server.received) == 1


async def test_aclose_after_a_204_and_iterating_after_aclose(loopback: Any) -> None:
    server = await loopback(status(204))
    source = EventSource(server.url)
    async with promptly():
        assert [event async for event in source] == []
    # the task ended on its own and closed its session
    await assert_nothing_left(source)
    await source.aclose()
    assert [event async for event in source] == []


# --- a cancellation of the caller always propagates (item 6) -----------------------------


async def test_cancelling_a_task_inside_aclose_propagates(loopback: Any) -> None:
    server = await loopback(stream(MANY_EVENTS))
    source = EventSource(server.url)
    await take(source, 1)
    closer = asyncio.ensure_future(source.aclose())
    await asyncio.sleep(0)  # the closer now waits for the connection task
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with promptly():
            await closer
    await assert_nothing_left(source)


async def test_cancelling_a_task_inside_async_for_propagates_through_the_exit(
    loopback: Any,
) -> None:
    inside = asyncio.Event()
    left = asyncio.Event()

    async def consume(url: str) -> None:
        async with EventSource(url) as source:
            async for _event in source:
                inside.set()
        left.set()  # never reached

    server = await loopback(stream(b"data: a\n\n"))
    consumer = asyncio.ensure_future(consume(server.url))
    async with promptly():
        await inside.wait()
    await asyncio.sleep(0.05)  # the consumer waits for the next event
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with promptly():
            await consumer
    assert not left.is_set()
    await until(lambda: not event_source_tasks())


async def test_cancelling_a_task_inside_the_exit_propagates(loopback: Any) -> None:
    # The consumer leaves the block while the connection task is blocked on a full
    # queue; it is cancelled as soon as it is inside __aexit__.
    in_exit = asyncio.Event()

    class Watched(EventSource):
        async def aclose(self) -> None:
            in_exit.set()
            await super().aclose()

    async def consume(url: str) -> None:
        async with Watched(url) as source:
            async for _event in source:
                await asyncio.sleep(0.1)
                break

    server = await loopback(stream(MANY_EVENTS))
    consumer = asyncio.ensure_future(consume(server.url))
    async with promptly():
        await in_exit.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with promptly():
            await consumer
    await until(lambda: not event_source_tasks())


# --- statuses that end the iteration (item 8) ------------------------------------------


@pytest.mark.parametrize("code", [400, 401, 403, 404, 405, 410, 413, 422, 451, 499])
async def test_a_4xx_ends_the_iteration_with_that_error(loopback: Any, code: int) -> None:
    errors: list[BaseException] = []
    server = await loopback(status(code))
    source = EventSource(server.url, reconnect_delay=0, on_error=errors.append)
    with pytest.raises(APIError) as raised:
        await take(source, 1)
    assert raised.value.status_code == code
    assert errors == [raised.value]  # on_error first, once, with the raised error
    assert source.ready_state == "closed"
    assert len(server.received) == 1
    with pytest.raises(StopAsyncIteration):
        await source.__anext__()
    await source.aclose()
    await assert_nothing_left(source)


@pytest.mark.parametrize("code", [408, 425, 429, 500, 502, 503, 504, 300])
async def test_other_statuses_reconnect(loopback: Any, code: int) -> None:
    errors: list[BaseException] = []
    handler = in_turn(status(code), stream(b"data: back\n\n"))
    server = await loopback(handler)
    async with EventSource(server.url, reconnect_delay=0, on_error=errors.append) as source:
        [event] = await take(source, 1)
    assert event.data == "back"
    assert [type(e).__mro__[0] for e in errors] == [type(errors[0])]
    assert isinstance(errors[0], APIError) and errors[0].status_code == code
    assert len(server.received) == 2


async def test_not_found_raised_inside_async_with_and_the_exit_is_clean(loopback: Any) -> None:
    server = await loopback(status(404))
    with pytest.raises(NotFoundError):
        async with promptly(), EventSource(server.url) as source:
            async for _event in source:
                pass
    await assert_nothing_left(source)


async def test_a_stalled_error_body_is_bounded_by_the_read_timeout(loopback: Any) -> None:
    errors: list[BaseException] = []

    async def stalled_500(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=500, headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"partial")
        await asyncio.sleep(3600)
        return response

    handler = in_turn(stalled_500, stream(b"data: back\n\n"))
    server = await loopback(handler)
    async with EventSource(
        server.url, reconnect_delay=0, read_timeout=0.3, on_error=errors.append
    ) as source:
        [event] = await take(source, 1)
    assert event.data == "back"
    assert [type(e) for e in errors] == [APITimeoutError]


# --- unsendable ids and the cursor (items 4 and 5) --------------------------------------


async def test_an_unsendable_id_is_skipped_as_a_cursor_and_the_stream_goes_on(
    loopback: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = stream(b"id: 1\ndata: a\n\nid: a\x0bb\ndata: b\n\ndata: c\n\n", hold=False)
    handler = in_turn(first, stream(b"id: 9\ndata: d\n\n"))
    errors: list[BaseException] = []
    server = await loopback(handler)
    with caplog.at_level(logging.WARNING, logger="plexd.api"):
        async with EventSource(server.url, reconnect_delay=0, on_error=errors.append) as s:
            events = await take(s, 4)
            assert s.last_event_id == "9"
    # the events keep the ids the parser saw (WHATWG) ...
    assert [(e.id, e.data) for e in events] == [
        ("1", "a"),
        ("a\x0bb", "b"),
        ("a\x0bb", "c"),
        ("9", "d"),
    ]
    # ... the reconnection carried the most recent sendable one
    assert server.received[1].headers["Last-Event-ID"] == "1"
    assert not any(isinstance(e, ValueError) for e in errors)
    warnings = [r for r in caplog.records if "cannot be sent as Last-Event-ID" in r.getMessage()]
    assert len(warnings) == 1
    assert repr("a\x0bb") in warnings[0].getMessage()


async def test_last_event_id_is_the_last_event_yielded(loopback: Any) -> None:
    body = b"id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\nid: 4\n\n"
    server = await loopback(stream(body))
    async with EventSource(server.url) as source:
        [first] = await take(source, 1)
        # the events after it were read in the same chunk, but not handed out
        assert source.last_event_id == first.id == "1"
        await take(source, 2)
        assert source.last_event_id == "3"
    # leaving drops what was read but not handed out: the cursor stays at the last event
    assert source.last_event_id == "3"


async def test_an_id_only_block_moves_the_cursor(loopback: Any) -> None:
    first = stream(b"id: 1\ndata: a\n\n", b"id: 7\n\n", hold=False)
    server = await loopback(in_turn(first, stream(b"data: b\n\n")))
    async with EventSource(server.url, reconnect_delay=0) as source:
        events = await take(source, 2)
        assert source.last_event_id == "7"
    assert [(e.id, e.data) for e in events] == [("1", "a"), ("7", "b")]
    assert server.received[1].headers["Last-Event-ID"] == "7"


# --- arguments that could never work are refused at once ---------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"url": "example.com/stream"}, id="no-scheme"),
        pytest.param({"url": "ftp://example.com/"}, id="not-http"),
        pytest.param({"url": "http:///path"}, id="no-host"),
        pytest.param({"headers": {"X-A": "a\r\nX-Injected: 1"}}, id="header-crlf"),
        pytest.param({"headers": {"Bad Name": "x"}}, id="header-name"),
        pytest.param({"method": "GE T"}, id="method"),
        pytest.param({"last_event_id": "a\nb"}, id="last-event-id"),
        pytest.param({"reconnect_delay": -1}, id="negative-delay"),
        pytest.param({"max_reconnect_delay": float("nan")}, id="nan-delay"),
        pytest.param({"read_timeout": 0}, id="zero-read-timeout"),
        # Wrong types reach the checks too, not a bare TypeError from deeper down.
        pytest.param({"reconnect_delay": "1"}, id="str-delay"),
        pytest.param({"max_reconnect_delay": True}, id="bool-delay"),
        pytest.param({"read_timeout": "5"}, id="str-read-timeout"),
        pytest.param({"headers": {"X-A": 1}}, id="int-header-value"),
        pytest.param({"headers": {1: "a"}}, id="int-header-name"),
        pytest.param({"method": 3}, id="int-method"),
        pytest.param({"last_event_id": 5}, id="int-last-event-id"),
        pytest.param(
            {"url": "http://u:p@example.com/", "headers": {"Authorization": "Bearer t"}},
            id="two-credentials",
        ),
    ],
)
def test_arguments_that_cannot_work_raise_argument_error(kwargs: dict[str, Any]) -> None:
    url = kwargs.pop("url", "http://example.com/")
    with pytest.raises(ArgumentError) as raised:
        EventSource(url, **kwargs)
    assert isinstance(raised.value, PlexdError) and isinstance(raised.value, ValueError)


# --- a URL password is a secret (item 10) -----------------------------------------------

SECRET = "s3cret"


def texts_of(error: BaseException) -> list[str]:
    """str and repr of an error and of everything it was raised from."""
    texts: list[str] = []
    seen: BaseException | None = error
    while seen is not None:
        texts += [str(seen), repr(seen), str(getattr(seen, "args", ""))]
        seen = seen.__cause__ or seen.__context__
    return texts


@pytest.fixture
async def failing_servers(loopback: Any) -> dict[str, Any]:
    return {
        "500": await loopback(status(500)),
        "redirect": await loopback(status(302)),
        "content-type": await loopback(web_page),
        "idle": await loopback(stream()),
        "404": await loopback(status(404)),
    }


async def web_page(request: web.Request) -> web.StreamResponse:
    return web.Response(text="<html>")


def with_password(url: str) -> str:
    return url.replace("http://", f"http://user:{SECRET}@")


async def collect_errors(url: str) -> list[BaseException]:
    """The errors reported (at least two) or raised by an EventSource on ``url``."""
    errors: list[BaseException] = []
    source = EventSource(url, reconnect_delay=0, read_timeout=0.2, on_error=errors.append)
    assert SECRET not in repr(source)

    async def consume() -> None:
        async for _event in source:
            pass

    consumer = asyncio.ensure_future(consume())
    try:
        await until(lambda: len(errors) >= 2 or consumer.done())
    finally:
        await source.aclose()
    try:
        await consumer
    except PlexdError as exc:
        errors.append(exc)
    assert SECRET not in repr(source)
    return errors


@pytest.mark.parametrize("case", ["500", "redirect", "content-type", "idle", "404", "refused"])
async def test_a_url_password_never_shows(
    failing_servers: dict[str, Any], case: str, caplog: pytest.LogCaptureFixture
) -> None:
    if case == "refused":
        url = f"http://user:{SECRET}@127.0.0.1:9/events"
    else:
        url = with_password(failing_servers[case].url) + "/events"
    with caplog.at_level(logging.DEBUG):
        errors = await collect_errors(url)
    assert errors
    for error in errors:
        assert isinstance(error, PlexdError)
        for text in texts_of(error):
            assert SECRET not in text
    assert SECRET not in caplog.text
    for record in caplog.records:
        assert SECRET not in repr(record.__dict__)
    if case != "refused":
        # the credentials still work: they go as Basic authentication
        sent = failing_servers[case].received[0].headers["Authorization"]
        assert base64.b64decode(sent.split()[1]) == f"user:{SECRET}".encode()


async def test_a_password_in_a_redirect_location_never_shows(
    loopback: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors: list[BaseException] = []
    location = f"ftp://other:{SECRET}@example.com/x"
    server = await loopback(status(307, {"Location": location}))
    with caplog.at_level(logging.DEBUG):
        source = EventSource(server.url, reconnect_delay=10, on_error=errors.append)
        pending = asyncio.ensure_future(source.__anext__())
        await until(lambda: bool(errors))
        await source.aclose()
        with pytest.raises(StopAsyncIteration):
            await pending
    assert isinstance(errors[0], SSEProtocolError)
    assert "***" in str(errors[0])
    assert all(SECRET not in text for text in texts_of(errors[0]))
    assert SECRET not in caplog.text


async def test_connection_errors_are_reported_and_retried() -> None:
    errors: list[BaseException] = []
    source = EventSource("http://127.0.0.1:9/", reconnect_delay=0, on_error=errors.append)
    pending = asyncio.ensure_future(source.__anext__())
    await until(lambda: len(errors) >= 3)
    await source.aclose()
    with pytest.raises(StopAsyncIteration):
        await pending
    assert all(isinstance(e, APIConnectionError) for e in errors)


async def test_a_token_in_the_user_place_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    # "https://TOKEN@host" carries its secret as the user: the whole userinfo is masked.
    with caplog.at_level(logging.DEBUG, logger="plexd.api"):
        errors = await collect_errors(f"http://{SECRET}@127.0.0.1:9/events")
    assert errors
    for error in errors:
        for text in texts_of(error):
            assert SECRET not in text
    assert SECRET not in caplog.text
