"""Retries of request calls: the pure rules (``_retry``, property tests) and the request
pipeline applying them against real servers: the emulator's counted faults, loopback
servers that count what they receive, a silent server and a closed port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from conftest import TINY_RETRY_WAITS
from plexd.api import (
    APIConnectionError,
    APITimeoutError,
    ArgumentError,
    ClientClosedError,
    Config,
    ConfigError,
    ControlPlane,
    ExecutionAck,
    ExecutionResult,
    HeartbeatRequest,
    KeyRotateRequest,
    PlexdError,
    RateLimitError,
    RegisterRequest,
    ServerError,
)
from plexd.api._retry import (
    JITTER,
    REFUSED_STATUSES,
    REQUEST_MAX_RETRY_AFTER,
    RETRIED_STATUSES,
    Failure,
    FailureKind,
    attempt_timeout,
    backoff_delay,
    retry_delay,
    time_left,
)
from plexd.emulator import Emulator

NOW = datetime(2026, 12, 4, tzinfo=UTC)
TOKEN = "retry-secret-token"

# --- the rules, pure -------------------------------------------------------------------

kinds = st.sampled_from(list(FailureKind))
statuses = st.integers(min_value=300, max_value=599)
retry_afters = st.none() | st.floats(min_value=-10, max_value=1e6, allow_nan=False)
failures = st.builds(Failure, kinds, statuses, retry_afters)
randoms = st.floats(min_value=0.0, max_value=0.999999)


def decide(
    failure: Failure,
    *,
    attempt: int = 1,
    max_retries: int = 2,
    idempotent: bool = True,
    remaining: float = math.inf,
    rand: float = 0.5,
) -> float | None:
    return retry_delay(
        failure,
        attempt=attempt,
        max_retries=max_retries,
        idempotent=idempotent,
        remaining=remaining,
        random=lambda: rand,
    )


@given(
    failure=failures,
    attempt=st.integers(min_value=1, max_value=10_000),
    max_retries=st.integers(min_value=0, max_value=10_000),
    idempotent=st.booleans(),
    remaining=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    rand=randoms,
)
def test_a_wait_is_never_past_the_retries_the_deadline_or_the_caps(
    failure: Failure,
    attempt: int,
    max_retries: int,
    idempotent: bool,
    remaining: float,
    rand: float,
) -> None:
    delay = decide(
        failure,
        attempt=attempt,
        max_retries=max_retries,
        idempotent=idempotent,
        remaining=remaining,
        rand=rand,
    )
    if delay is None:
        return
    assert attempt <= max_retries
    assert 0 <= delay < remaining
    assert delay <= max(8.0, REQUEST_MAX_RETRY_AFTER)
    if failure.retry_after is None:
        assert delay <= 8.0
    else:
        assert delay == max(failure.retry_after, 0.0)


@given(failure=failures, rand=randoms)
def test_a_call_that_is_not_idempotent_is_retried_only_when_it_surely_was_not_acted_on(
    failure: Failure, rand: float
) -> None:
    delay = decide(failure, idempotent=False, rand=rand)
    refused = failure.kind is FailureKind.STATUS and failure.status in REFUSED_STATUSES
    if failure.kind is not FailureKind.CONNECT and not refused:
        assert delay is None


@given(failure=failures, rand=randoms)
def test_only_connection_failures_timeouts_and_the_retried_statuses_are_retried(
    failure: Failure, rand: float
) -> None:
    delay = decide(failure, rand=rand)
    retried_status = failure.kind is FailureKind.STATUS and failure.status in RETRIED_STATUSES
    transport = failure.kind in (FailureKind.CONNECT, FailureKind.TIMEOUT, FailureKind.BROKEN)
    if not (retried_status or transport):
        assert delay is None
    elif failure.retry_after is None or failure.retry_after <= REQUEST_MAX_RETRY_AFTER:
        assert delay is not None


@given(attempt=st.integers(min_value=1, max_value=10**9), rand=randoms)
def test_the_backoff_doubles_from_half_a_second_to_8_s_and_jitter_only_shortens(
    attempt: int, rand: float
) -> None:
    full = min(0.5 * 2 ** min(attempt - 1, 10), 8.0)
    delay = backoff_delay(attempt, lambda: rand)
    assert full * (1 - JITTER) <= delay <= full


def test_the_backoff_of_the_first_retries() -> None:
    no_jitter = [backoff_delay(n, lambda: 0.0) for n in range(1, 7)]
    assert no_jitter == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


@pytest.mark.parametrize("status", sorted(REFUSED_STATUSES))
def test_retry_after_is_waited_for_up_to_60_s_and_beyond_that_raised_at_once(
    status: int,
) -> None:
    def after(seconds: float) -> float | None:
        return decide(Failure(FailureKind.STATUS, status, seconds))

    assert after(0) == 0
    assert after(17) == 17
    assert after(60) == 60
    assert after(60.5) is None
    assert after(math.inf) is None
    # ... and not when it does not fit in what is left of the call's time.
    assert decide(Failure(FailureKind.STATUS, status, 17), remaining=16.9) is None


def test_no_retry_after_the_last_one_nor_with_retries_off() -> None:
    connect = Failure(FailureKind.CONNECT)
    assert decide(connect, attempt=2, max_retries=2) is not None
    assert decide(connect, attempt=3, max_retries=2) is None
    assert decide(connect, attempt=1, max_retries=0) is None


# --- the pipeline, against servers ------------------------------------------------------


def quick(base_url: str, **config: Any) -> ControlPlane:
    client = ControlPlane(Config(base_url=base_url, **{**TINY_RETRY_WAITS, **config}), "1.0")
    client.set_auth_token(TOKEN)
    return client


def heartbeat(node_id: str = "n1") -> HeartbeatRequest:
    return HeartbeatRequest(node_id=node_id, timestamp=NOW)


def register_request() -> RegisterRequest:
    return RegisterRequest(token="boot", hostname="h")


def failing(
    statuses: list[int], headers: dict[str, str] | None = None
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Answer the next requests with ``statuses`` in turn, then {} with 200."""
    pending = list(statuses)

    async def handler(request: web.Request) -> web.StreamResponse:
        if pending:
            return web.Response(status=pending.pop(0), text="busy", headers=headers)
        return web.json_response({"reconcile": False, "rotate_keys": False})

    return handler


async def test_the_emulators_counted_503s_are_retried_until_the_call_succeeds(
    control_plane: Emulator,
) -> None:
    node_id, token = control_plane.register_node("web-1")
    control_plane.set_faults(node_id, status=503, status_scope="all", status_count=2)
    async with quick(control_plane.url) as client:
        client.set_auth_token(token)
        await client.fetch_state(node_id)
    assert [call.status for call in control_plane.calls[-3:]] == [503, 503, 200]


async def test_three_counted_503s_exhaust_two_retries(control_plane: Emulator) -> None:
    node_id, token = control_plane.register_node("web-1")
    control_plane.set_faults(node_id, status=503, status_scope="all", status_count=3)
    before = len(control_plane.calls)
    async with quick(control_plane.url) as client:
        client.set_auth_token(token)
        with pytest.raises(ServerError):
            await client.heartbeat(node_id, heartbeat(node_id))
        assert len(control_plane.calls) - before == 3
        # The fault is used up: the next call goes through at once.
        await client.heartbeat(node_id, heartbeat(node_id))


async def test_the_emulators_429_with_retry_after_is_retried_even_for_an_ack(
    control_plane: Emulator,
) -> None:
    node_id, token = control_plane.register_node("web-1")
    control_plane.set_faults(
        node_id, status=429, status_scope="all", status_count=1, retry_after="0"
    )
    ack = ExecutionAck(execution_id="x1", status="accepted", reason="")
    async with quick(control_plane.url) as client:
        client.set_auth_token(token)
        await client.ack_execution(node_id, "x1", ack)
    assert [call.status for call in control_plane.calls[-2:]] == [429, 204]


@pytest.mark.parametrize("status", sorted(RETRIED_STATUSES))
async def test_each_retried_status_is_retried_for_an_idempotent_call(
    loopback: Any, status: int
) -> None:
    server = await loopback(failing([status, status]))
    async with server.client() as client:
        await client.heartbeat("n1", heartbeat())
    assert len(server.received) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 409, 500, 501])
async def test_other_statuses_are_not_retried(loopback: Any, status: int) -> None:
    server = await loopback(failing([status]))
    async with server.client() as client:
        with pytest.raises(PlexdError):
            await client.heartbeat("n1", heartbeat())
    assert len(server.received) == 1


@pytest.mark.parametrize(("status", "tries"), [(408, 1), (502, 1), (504, 1), (429, 2), (503, 2)])
async def test_register_is_sent_again_only_after_429_or_503(
    loopback: Any, status: int, tries: int
) -> None:
    server = await loopback(failing([status]))
    async with server.client() as client:
        with contextlib.suppress(PlexdError):
            await client.register(register_request())
    assert len(server.received) == tries


async def test_a_retry_after_past_60_s_is_raised_at_once(loopback: Any) -> None:
    server = await loopback(failing([429], headers={"Retry-After": "61"}))
    async with server.client() as client:
        with pytest.raises(RateLimitError) as caught:
            await client.heartbeat("n1", heartbeat())
    assert caught.value.retry_after == 61
    assert len(server.received) == 1


async def test_retry_after_replaces_the_backoff(loopback: Any) -> None:
    # A backoff of 30 s would run into the guard; the server's 0 s does not.
    server = await loopback(failing([503, 503], headers={"Retry-After": "0"}))
    async with server.client(retry_base_delay=30, retry_max_delay=30) as client:
        async with asyncio.timeout(10):
            await client.heartbeat("n1", heartbeat())
    assert len(server.received) == 3


@pytest.mark.parametrize(("config", "per_call", "tries"), [(2, None, 3), (0, None, 1), (2, 0, 1)])
async def test_max_retries_of_the_config_and_of_the_call(
    loopback: Any, config: int, per_call: int | None, tries: int
) -> None:
    server = await loopback(failing([503] * 5))
    async with server.client(max_retries=config) as client:
        with pytest.raises(ServerError):
            await client.fetch_state("n1", max_retries=per_call)
    assert len(server.received) == tries


async def test_a_call_may_ask_for_more_retries_than_the_config(loopback: Any) -> None:
    server = await loopback(failing([503] * 4))
    async with server.client(max_retries=0) as client:
        await client.heartbeat("n1", heartbeat(), max_retries=4)
    assert len(server.received) == 5


@pytest.mark.parametrize("bad", [-1, True, 1.5, "2"])
async def test_a_bad_max_retries_is_refused(loopback: Any, bad: Any) -> None:
    server = await loopback()
    async with server.client() as client:
        with pytest.raises(ArgumentError, match="max_retries"):
            await client.ping(max_retries=bad)
    with pytest.raises(ConfigError, match="max_retries"):
        server.client(max_retries=bad)
    assert server.received == []


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_refused_connection_is_retried_even_for_register(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="plexd.api")
    async with quick(f"http://127.0.0.1:{closed_port()}") as client:
        with pytest.raises(APIConnectionError):
            await client.register(register_request())
    retries = [r for r in caplog.records if r.levelno == logging.INFO and "attempt" in r.message]
    assert [r.__dict__["attempt"] for r in retries] == [2, 3]
    assert "attempt 2 of 3" in retries[0].message
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


async def test_a_connection_that_breaks_after_the_request_is_retried_only_when_idempotent(
    raw_server: Any,
) -> None:
    # The server reads each request and closes without an answer.
    seen = []

    async def read_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    server = await asyncio.start_server(read_and_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with quick(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(APIConnectionError):
                await client.report_result("n1", "x1", _result())
            sent_once = len(seen)
            with pytest.raises(APIConnectionError):
                await client.heartbeat("n1", heartbeat())
    finally:
        server.close()
        await server.wait_closed()
    assert sent_once == 1
    assert len(seen) == 1 + 3


def _result() -> ExecutionResult:
    return ExecutionResult(execution_id="x1", status="ok", duration="1s", finished_at=NOW)


async def test_timeouts_are_retried_within_the_calls_time(silent_server: Any) -> None:
    # request_timeout 0.2 s, 2 retries: the whole call is bounded by 0.6 s.
    client = quick(f"http://{silent_server.address}", request_timeout=0.2)
    async with client:
        async with asyncio.timeout(5):
            with pytest.raises(APITimeoutError):
                await client.fetch_state("n1")
        assert silent_server.accepted == 3
        with pytest.raises(APITimeoutError):
            await client.rotate_keys(_rotate())
        assert silent_server.accepted == 4


def _rotate() -> KeyRotateRequest:
    return KeyRotateRequest(node_id="n1", new_public_key="k")


async def test_a_wait_that_does_not_fit_the_calls_time_is_not_made(
    loopback: Any,
) -> None:
    # Retry-After 5 s with request_timeout 1 s and 2 retries (3 s in all): raised at once.
    server = await loopback(failing([503, 503], headers={"Retry-After": "5"}))
    async with server.client(request_timeout=1) as client:
        async with asyncio.timeout(4):
            with pytest.raises(ServerError):
                await client.heartbeat("n1", heartbeat())
    assert len(server.received) == 1


async def test_the_retry_log_line_escapes_what_the_server_sent(
    loopback: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def forged(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, text="busy\nINFO forged line")

    caplog.set_level(logging.INFO, logger="plexd.api")
    server = await loopback(forged)
    async with server.client(max_retries=1) as client:
        client.set_auth_token(TOKEN)
        with pytest.raises(ServerError):
            await client.fetch_state("n1")
    [line] = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert "\n" not in line
    assert "busy\\x0aINFO forged line" in line
    assert TOKEN not in line


async def test_a_client_closed_during_a_retry_wait_raises_client_closed(loopback: Any) -> None:
    answered = asyncio.Event()

    async def busy(request: web.Request) -> web.StreamResponse:
        answered.set()
        return web.Response(status=503)

    server = await loopback(busy)
    client = server.client(retry_base_delay=0.3, retry_max_delay=0.3)
    call = asyncio.ensure_future(client.fetch_state("n1"))
    async with asyncio.timeout(5):
        await answered.wait()
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await call
    assert len(server.received) == 1


@given(
    request_timeout=st.floats(min_value=0.01, max_value=60),
    max_retries=st.integers(min_value=0, max_value=20),
    took=st.lists(st.floats(min_value=0, max_value=100), min_size=21, max_size=21),
    retry_afters=st.lists(st.none() | st.floats(min_value=0, max_value=70), min_size=21),
    rand=randoms,
)
def test_a_call_with_its_retries_stays_within_its_time_on_a_fake_clock(
    request_timeout: float,
    max_retries: int,
    took: list[float],
    retry_afters: list[float | None],
    rand: float,
) -> None:
    # The pipeline's loop, its clock faked: each attempt runs until it fails or its
    # timeout cuts it, then the rules decide.
    started = now = 1000.0
    attempt = 1
    while True:
        left = time_left(started, now, request_timeout, max_retries)
        now += min(took[attempt - 1], attempt_timeout(left, request_timeout))
        failure = Failure(FailureKind.STATUS, 503, retry_afters[attempt - 1])
        delay = retry_delay(
            failure,
            attempt=attempt,
            max_retries=max_retries,
            idempotent=True,
            remaining=time_left(started, now, request_timeout, max_retries),
            random=lambda: rand,
        )
        if delay is None:
            break
        now += delay
        attempt += 1
    assert attempt <= max_retries + 1
    # Within the budget, give or take the 1 ms floor of an attempt's timeout.
    assert now - started <= request_timeout * (max_retries + 1) + 0.001 * attempt


async def test_opening_an_artifact_stream_is_retried_but_not_an_event_stream(
    loopback: Any,
) -> None:
    pending = [503, 503]

    async def busy_then_bytes(request: web.Request) -> web.StreamResponse:
        if pending:
            return web.Response(status=pending.pop(0))
        return web.Response(body=b"binary", content_type="application/octet-stream")

    server = await loopback(busy_then_bytes)
    async with server.client() as client:
        async with client.fetch_artifact("1.0", "linux", "amd64") as stream:
            body = b"".join([chunk async for chunk in stream.iter_chunks()])
        assert body == b"binary"
        assert len(server.received) == 3
        pending[:] = [503]
        with pytest.raises(ServerError):
            async with client.fetch_artifact("1.0", "linux", "amd64", max_retries=0):
                pass
        assert len(server.received) == 4
        pending[:] = [503]
        with pytest.raises(ServerError):
            async with client.connect_sse("n1"):
                pass
        assert len(server.received) == 5
