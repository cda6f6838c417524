"""The reconnection rules, driven with a fake clock: no real waiting anywhere."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable

import pytest

from plexd.api.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    BadRequestError,
    ForbiddenError,
    NotFoundError,
    RateLimitError,
    ServerError,
    SSEIdleTimeoutError,
    SSEProtocolError,
    UnauthorizedError,
)
from plexd.api.reconnect import (
    ConnectionState,
    FailureAction,
    ReconnectEngine,
    ReconnectPolicy,
    classify_error,
)

S = ConnectionState


class FakeTime:
    """A clock and a sleep that advance virtual time instantly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


Step = Callable[[ReconnectEngine, FakeTime], Awaitable[None]]


def fail_with(exc: Exception, after: float = 0.0) -> Step:
    async def step(engine: ReconnectEngine, time: FakeTime) -> None:
        time.now += after
        raise exc

    return step


def connect_then_close(events: int = 0, up_for: float = 0.0) -> Step:
    async def step(engine: ReconnectEngine, time: FakeTime) -> None:
        engine.connected()
        for _ in range(events):
            engine.event_delivered()
        time.now += up_for

    return step


def connect_then_fail(exc: Exception, events: int = 0) -> Step:
    async def step(engine: ReconnectEngine, time: FakeTime) -> None:
        engine.connected()
        for _ in range(events):
            engine.event_delivered()
        raise exc

    return step


class Script:
    """Plays steps in order, then stops the engine."""

    def __init__(self, engine: ReconnectEngine, time: FakeTime, steps: list[Step]) -> None:
        self.engine = engine
        self.time = time
        self.steps = list(steps)
        self.attempts = 0

    async def __call__(self) -> None:
        if not self.steps:
            self.engine.stop()
            await asyncio.sleep(3600)  # cancelled by stop()
        self.attempts += 1
        await self.steps.pop(0)(self.engine, self.time)


def make_engine(
    time: FakeTime, states: list[ConnectionState] | None = None, **kwargs: object
) -> ReconnectEngine:
    return ReconnectEngine(
        clock=time.clock,
        sleep=time.sleep,
        jitter=lambda: 1.0,
        on_state_change=None if states is None else states.append,
        **kwargs,  # type: ignore[arg-type]
    )


async def play(engine: ReconnectEngine, time: FakeTime, steps: list[Step]) -> Script:
    script = Script(engine, time, steps)
    await asyncio.wait_for(engine.run(script), timeout=5)
    return script


TRANSIENT = APIConnectionError("connection refused")


# --- classify_error --------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "action"),
    [
        (APIConnectionError("reset"), FailureAction.RETRY_TRANSIENT),
        (APITimeoutError("slow"), FailureAction.RETRY_TRANSIENT),
        (SSEIdleTimeoutError("idle"), FailureAction.RETRY_TRANSIENT),
        (SSEProtocolError("not text/event-stream"), FailureAction.RETRY_TRANSIENT),
        (ServerError(500, ""), FailureAction.RETRY_TRANSIENT),
        (ServerError(503, ""), FailureAction.RETRY_TRANSIENT),
        (APIError(408, ""), FailureAction.RETRY_TRANSIENT),
        (UnauthorizedError(401, ""), FailureAction.RETRY_AUTH),
        (RateLimitError(429, ""), FailureAction.RESPECT_SERVER),
        (ForbiddenError(403, ""), FailureAction.PERMANENT_FAILURE),
        (NotFoundError(404, ""), FailureAction.PERMANENT_FAILURE),
        (BadRequestError(400, ""), FailureAction.PERMANENT_FAILURE),
        (APIError(410, ""), FailureAction.PERMANENT_FAILURE),
        (APIError(302, ""), FailureAction.PERMANENT_FAILURE),
        (ConnectionResetError(), FailureAction.RETRY_TRANSIENT),
        (KeyError("bug"), FailureAction.PERMANENT_FAILURE),
    ],
)
def test_classify_error(exc: Exception, action: FailureAction) -> None:
    assert classify_error(exc) is action


# --- the pure policy ----------------------------------------------------------


def test_backoff_doubles_from_base_up_to_the_cap() -> None:
    policy = ReconnectPolicy()
    delays = []
    for i in range(9):
        policy.attempt_started()
        delays.append(policy.after_attempt(TRANSIENT, FailureAction.RETRY_TRANSIENT, i, 1.0).delay)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_jitter_is_applied_to_every_delay_within_a_quarter() -> None:
    time = FakeTime()
    rng = random.Random(7)
    engine = ReconnectEngine(
        clock=time.clock, sleep=time.sleep, jitter=lambda: rng.uniform(0.75, 1.25)
    )
    policy = engine.policy
    policy.polling_after = None
    nominal = [min(2**n, 60) for n in range(12)]
    asyncio.run(play(engine, time, [fail_with(TRANSIENT) for _ in nominal]))
    assert len(time.sleeps) == len(nominal)
    for slept, expected in zip(time.sleeps, nominal, strict=True):
        assert 0.75 * expected <= slept <= 1.25 * expected
    assert len({round(s / e, 6) for s, e in zip(time.sleeps, nominal, strict=True)}) > 1


def test_first_retry_waits_about_base_never_zero() -> None:
    policy = ReconnectPolicy()
    policy.attempt_started()
    low = policy.after_attempt(TRANSIENT, FailureAction.RETRY_TRANSIENT, 0, 0.75).delay
    assert low == 0.75


def test_set_intervals_change_base_and_cap() -> None:
    policy = ReconnectPolicy(base=0.5, maximum=3)
    delays = []
    for i in range(5):
        policy.attempt_started()
        delays.append(policy.after_attempt(TRANSIENT, FailureAction.RETRY_TRANSIENT, i, 1.0).delay)
    assert delays == [0.5, 1, 2, 3, 3]


# --- the engine: every arrow of the state diagram ------------------------------


async def test_connect_drop_backoff_reconnect_states() -> None:
    time, states = FakeTime(), []
    engine = make_engine(time, states)
    await play(engine, time, [connect_then_close(events=1), fail_with(TRANSIENT)])
    assert states == [
        S.CONNECTING,
        S.CONNECTED,  # CONNECTING -> CONNECTED
        S.BACKOFF,  # CONNECTED -> (drop) -> BACKOFF: every disconnect waits
        S.CONNECTING,
        S.BACKOFF,  # CONNECTING -> BACKOFF (failed attempt)
        S.CONNECTING,
        S.DISCONNECTED,  # stop
    ]
    assert engine.state is S.DISCONNECTED


async def test_clean_close_after_events_waits_base_and_resets() -> None:
    time = FakeTime()
    engine = make_engine(time)
    steps = [fail_with(TRANSIENT)] * 3 + [connect_then_close(events=2), fail_with(TRANSIENT)]
    await play(engine, time, steps)
    assert time.sleeps == [1, 2, 4, 1, 1]


async def test_server_closing_at_once_again_and_again_backs_off() -> None:
    # A 200 that ends before any event is a failed attempt: no hot loop.
    time = FakeTime()
    engine = make_engine(time)
    engine.policy.polling_after = None
    await play(engine, time, [connect_then_close(events=0)] * 8)
    assert time.sleeps == [1, 2, 4, 8, 16, 32, 60, 60]


async def test_connection_that_stayed_up_a_minute_resets_the_backoff() -> None:
    time = FakeTime()
    engine = make_engine(time)
    steps = [fail_with(TRANSIENT)] * 3 + [
        connect_then_close(events=0, up_for=59.9),
        connect_then_close(events=0, up_for=60.0),
        fail_with(TRANSIENT),
    ]
    await play(engine, time, steps)
    assert time.sleeps == [1, 2, 4, 8, 1, 1]


async def test_event_then_error_resets_the_backoff() -> None:
    time = FakeTime()
    engine = make_engine(time)
    steps = [fail_with(TRANSIENT)] * 4 + [connect_then_fail(SSEIdleTimeoutError("idle"), 1)]
    await play(engine, time, steps)
    assert time.sleeps == [1, 2, 4, 8, 1]


async def test_server_retry_replaces_the_base_but_not_the_cap() -> None:
    time = FakeTime()
    engine = make_engine(time)
    engine.policy.polling_after = None

    async def retry_then_close(e: ReconnectEngine, t: FakeTime) -> None:
        e.connected()
        e.server_retry(5000)

    await play(engine, time, [retry_then_close] + [fail_with(TRANSIENT)] * 5)
    assert time.sleeps == [5, 10, 20, 40, 60, 60]


async def test_retry_after_is_honoured_beyond_the_cap() -> None:
    time = FakeTime()
    engine = make_engine(time)
    steps = [
        fail_with(RateLimitError(429, "", retry_after=120.0)),
        fail_with(RateLimitError(429, "")),
        fail_with(TRANSIENT),
    ]
    await play(engine, time, steps)
    assert time.sleeps == [120, 2, 4]


async def test_polling_starts_after_five_minutes_of_failure_and_ends_on_success() -> None:
    time, states = FakeTime(), []
    polls: list[float] = []

    async def poll() -> None:
        polls.append(time.now)

    engine = make_engine(time, states, poll=poll)
    start = time.now
    # 1+2+4+8+16+32+60+60+60+60 = 303 s of failure: polling begins after the 10th wait.
    steps = [fail_with(TRANSIENT)] * 10 + [fail_with(TRANSIENT), connect_then_close(events=1)]
    await play(engine, time, steps)
    assert time.sleeps[:10] == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert time.sleeps[10:] == [60, 60, 1]  # poll interval twice, then base after success
    assert polls == [start + 303, start + 363]
    # BACKOFF -> POLLING -> CONNECTING, a failed attempt -> POLLING, success -> CONNECTED
    assert states[-9:] == [
        S.BACKOFF,
        S.POLLING,
        S.CONNECTING,
        S.POLLING,
        S.CONNECTING,
        S.CONNECTED,
        S.BACKOFF,
        S.CONNECTING,
        S.DISCONNECTED,
    ]
    assert not engine.policy.polling


async def test_poll_failures_are_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    time = FakeTime()
    calls = 0

    async def poll() -> None:
        nonlocal calls
        calls += 1
        raise APIConnectionError("control plane down")

    engine = make_engine(time, poll=poll)
    engine.policy.polling_after = 0
    await play(engine, time, [fail_with(TRANSIENT)] * 3)
    assert calls == 3
    assert "poll failed" in caplog.text


async def test_polling_fallback_settings_are_used() -> None:
    time = FakeTime()
    polls: list[float] = []

    async def poll() -> None:
        polls.append(time.now)

    engine = make_engine(time, poll=poll)
    engine.policy.polling_after = 2.5
    engine.policy.poll_interval = 7
    await play(engine, time, [fail_with(TRANSIENT)] * 4)
    # 3 s of failure by the second wait: from then on, poll and wait the interval.
    assert time.sleeps == [1, 2, 7, 7, 7]
    assert len(polls) == 3


async def test_unauthorized_calls_the_callback_then_stops() -> None:
    time, calls = FakeTime(), []
    engine = make_engine(time, on_auth_failure=lambda: calls.append("auth"))
    with pytest.raises(UnauthorizedError):
        await play(engine, time, [fail_with(TRANSIENT), fail_with(UnauthorizedError(401, ""))])
    assert calls == ["auth"]
    assert time.sleeps == [1]
    assert engine.state is S.DISCONNECTED


@pytest.mark.parametrize("error", [ForbiddenError(403, ""), NotFoundError(404, "")])
async def test_forbidden_and_not_found_stop_at_once(error: APIError) -> None:
    time = FakeTime()
    engine = make_engine(time)
    with pytest.raises(type(error)):
        await play(engine, time, [fail_with(error)])
    assert time.sleeps == []


# --- stop and cancellation ---------------------------------------------------


async def engine_in_an_attempt() -> tuple[ReconnectEngine, asyncio.Task[None]]:
    """An engine whose attempt connected and now waits for bytes that never come."""
    engine = ReconnectEngine()
    started = asyncio.Event()

    async def attempt() -> None:
        engine.connected()
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(engine.run(attempt))
    await started.wait()
    return engine, task


async def test_stop_during_an_attempt_returns_none() -> None:
    engine, task = await engine_in_an_attempt()
    assert engine.state is S.CONNECTED
    engine.stop()
    assert await asyncio.wait_for(task, 1) is None
    assert engine.state is S.DISCONNECTED


async def test_stop_during_a_backoff_sleep_returns_none() -> None:
    backing_off = asyncio.Event()

    def changed(state: ConnectionState) -> None:
        if state is S.BACKOFF:
            backing_off.set()

    # Real sleep: a 1 s backoff, interrupted at once.
    engine = ReconnectEngine(on_state_change=changed)

    async def attempt() -> None:
        raise TRANSIENT

    task = asyncio.create_task(engine.run(attempt))
    await backing_off.wait()
    engine.stop()
    assert await asyncio.wait_for(task, 0.5) is None


async def test_stop_during_a_poll_returns_none() -> None:
    polling = asyncio.Event()

    async def poll() -> None:
        polling.set()
        await asyncio.sleep(3600)

    engine = ReconnectEngine(policy=ReconnectPolicy(base=0, polling_after=0), poll=poll)

    async def attempt() -> None:
        raise TRANSIENT

    task = asyncio.create_task(engine.run(attempt))
    await polling.wait()
    assert engine.state is S.POLLING
    engine.stop()
    assert await asyncio.wait_for(task, 0.5) is None


async def test_stop_from_another_thread() -> None:
    engine, task = await engine_in_an_attempt()
    thread = threading.Thread(target=engine.stop)
    thread.start()
    thread.join()
    assert await asyncio.wait_for(task, 1) is None


async def test_stop_before_run_returns_at_once() -> None:
    engine = ReconnectEngine()
    engine.stop()
    attempts = 0

    async def attempt() -> None:
        nonlocal attempts
        attempts += 1

    await asyncio.wait_for(engine.run(attempt), 1)
    assert attempts == 0


async def test_cancelling_the_task_propagates() -> None:
    _, task = await engine_in_an_attempt()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancel_and_stop_together_still_propagate_the_cancellation() -> None:
    engine, task = await engine_in_an_attempt()
    task.cancel()
    engine.stop()
    with pytest.raises(asyncio.CancelledError):
        await task
