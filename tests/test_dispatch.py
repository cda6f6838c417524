"""EventDispatcher: order, sync and async handlers, failures, unknown types, threads."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from plexd.api import EventDispatcher, EventType, SignedEnvelope


def envelope(event_type: str = "peer_added", event_id: str = "e1") -> SignedEnvelope:
    return SignedEnvelope(event_type=event_type, event_id=event_id)


async def test_handlers_run_in_registration_order_sync_and_async() -> None:
    dispatcher = EventDispatcher()
    calls: list[str] = []

    async def slow(env: SignedEnvelope) -> None:
        await asyncio.sleep(0.01)
        calls.append("async-" + env.event_id)

    dispatcher.register(EventType.PEER_ADDED, lambda env: calls.append("first"))
    dispatcher.register("peer_added", slow)
    dispatcher.register("peer_added", lambda env: calls.append("last"))
    await dispatcher.dispatch(envelope())
    assert calls == ["first", "async-e1", "last"]


async def test_only_handlers_of_the_event_type_run() -> None:
    dispatcher = EventDispatcher()
    calls: list[str] = []
    dispatcher.register("peer_added", lambda env: calls.append("added"))
    dispatcher.register("peer_removed", lambda env: calls.append("removed"))
    await dispatcher.dispatch(envelope("peer_removed"))
    assert calls == ["removed"]


async def test_a_failing_handler_is_logged_and_the_next_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dispatcher = EventDispatcher()
    calls: list[str] = []

    async def broken(env: SignedEnvelope) -> None:
        raise RuntimeError("boom")

    dispatcher.register("peer_added", broken)
    dispatcher.register("peer_added", lambda env: calls.append("after"))
    with caplog.at_level(logging.ERROR, logger="plexd.api"):
        await dispatcher.dispatch(envelope(event_id="evt-9"))
    assert calls == ["after"]
    [record] = caplog.records
    assert record.event_type == "peer_added"  # type: ignore[attr-defined]
    assert record.event_id == "evt-9"  # type: ignore[attr-defined]
    assert record.handler_index == 0  # type: ignore[attr-defined]
    assert "RuntimeError" in record.getMessage() and "boom" in record.getMessage()


async def test_unknown_event_type_is_dropped_at_debug_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dispatcher = EventDispatcher()
    with caplog.at_level(logging.DEBUG, logger="plexd.api"):
        await dispatcher.dispatch(envelope("brand_new_type"))
    [record] = caplog.records
    assert record.levelno == logging.DEBUG
    assert "brand_new_type" in record.getMessage()


async def test_cancellation_of_a_handler_propagates() -> None:
    dispatcher = EventDispatcher()

    async def waits(env: SignedEnvelope) -> None:
        await asyncio.sleep(3600)

    dispatcher.register("peer_added", waits)
    task = asyncio.create_task(dispatcher.dispatch(envelope()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_registration_from_many_threads_loses_nothing() -> None:
    dispatcher = EventDispatcher()
    count = 0

    def handler(env: SignedEnvelope) -> None:
        nonlocal count
        count += 1

    def register_many() -> None:
        for _ in range(200):
            dispatcher.register("peer_added", handler)

    threads = [threading.Thread(target=register_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    await dispatcher.dispatch(envelope())
    assert count == 1600


async def test_event_fields_in_log_lines_are_escaped(caplog: pytest.LogCaptureFixture) -> None:
    # An event type or id from the server must not start a forged log line.
    dispatcher = EventDispatcher()

    def fails(env: SignedEnvelope) -> None:
        raise RuntimeError("boom")

    dispatcher.register("peer_added", fails)
    with caplog.at_level(logging.DEBUG, logger="plexd.api"):
        await dispatcher.dispatch(envelope("new\nCRITICAL forged", "e\x1b[2J"))
        await dispatcher.dispatch(envelope("peer_added", "e1\nCRITICAL forged"))
    assert len(caplog.records) == 2
    for record in caplog.records:
        assert record.getMessage().isprintable(), record.getMessage()


def test_plain_handlers_run_at_once_without_a_coroutine() -> None:
    # dispatch_now, outside any event loop: plain handlers are called here and now.
    dispatcher = EventDispatcher()
    calls: list[str] = []
    dispatcher.register("peer_added", lambda env: calls.append("first"))
    dispatcher.register_default(lambda env: calls.append("default"))
    assert dispatcher.dispatch_now(envelope()) is None
    assert calls == ["first", "default"]


async def test_the_handlers_after_an_async_one_wait_for_it() -> None:
    dispatcher = EventDispatcher()
    calls: list[str] = []
    gate = asyncio.Event()

    async def slow(env: SignedEnvelope) -> None:
        await gate.wait()
        calls.append("async")

    def broken(env: SignedEnvelope) -> None:
        raise RuntimeError("boom")

    dispatcher.register("peer_added", lambda env: calls.append("first"))
    dispatcher.register("peer_added", slow)
    dispatcher.register("peer_added", broken)
    dispatcher.register("peer_added", lambda env: calls.append("last"))
    pending = dispatcher.dispatch_now(envelope())
    assert pending is not None
    assert calls == ["first"]
    gate.set()
    await pending
    assert calls == ["first", "async", "last"]
