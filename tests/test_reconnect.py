"""The reconnection rules, driven with a fake clock: no real waiting anywhere."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
from collections.abc import Awaitable, Callable

import pytest

from plexd.api import (
    MAX_RETRY_AFTER,
    MIN_SERVER_RETRY,
    ConnectionState,
    FailureAction,
    ReconnectEngine,
    ReconnectPolicy,
    classify_error,
)
from plexd.api._checks import check_intervals, check_polling
from plexd.api._classify import classify_as_browser
from plexd.api._reconnect import MAX_BACKOFF_EXPONENT, Decision, Step
from plexd.api.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ArgumentError,
    BadRequestError,
    ClientClosedError,
    ConfigError,
    EnvelopeError,
    EventLoopError,
    ForbiddenError,
    NotFoundError,
    PlexdError,
    RateLimitError,
    ServerError,
    SSEIdleTimeoutError,
    SSEProtocolError,
    UnauthorizedError,
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


Play = Callable[[ReconnectEngine, FakeTime], Awaitable[None]]


def fail_with(exc: Exception, after: float = 0.0) -> Play:
    async def step(engine: ReconnectEngine, time: FakeTime) -> None:
        time.now += after
        raise exc

    return step


def connect_then_close(events: int = 0, up_for: float = 0.0) -> Play:
    async def step(engine: ReconnectEngine, time: FakeTime) -> None:
        engine.connected()
        for _ in range(events):
            engine.event_delivered()
        time.now += up_for

    return step


def connect_then_fail(exc: Exception, events: int = 0) -> Play:
    async def step(engine: ReconnectEngine, time: FakeTime) -> None:
        engine.connected()
        for _ in range(events):
            engine.event_delivered()
        raise exc

    return step


class Script:
    """Plays steps in order, then stops the engine."""

    def __init__(self, engine: ReconnectEngine, time: FakeTime, steps: list[Play]) -> None:
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


async def play(engine: ReconnectEngine, time: FakeTime, steps: list[Play]) -> Script:
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
        (APIError(425, ""), FailureAction.RETRY_TRANSIENT),
        (ServerError(503, "", retry_after=2.0), FailureAction.RETRY_TRANSIENT),
        (APIError(301, ""), FailureAction.PERMANENT_FAILURE),
        (APIError(422, ""), FailureAction.PERMANENT_FAILURE),
        # Only the listed failures are transient: a PlexdError is no longer one by default.
        (ClientClosedError("closed"), FailureAction.PERMANENT_FAILURE),
        (ConfigError("bad"), FailureAction.PERMANENT_FAILURE),
        (ArgumentError("bad"), FailureAction.PERMANENT_FAILURE),
        (EventLoopError("other loop"), FailureAction.PERMANENT_FAILURE),
        (EnvelopeError("bad"), FailureAction.PERMANENT_FAILURE),
        (PlexdError("anything else"), FailureAction.PERMANENT_FAILURE),
        # Transport exceptions never escape the client unmapped: a raw one is a bug.
        (ConnectionResetError(), FailureAction.PERMANENT_FAILURE),
        (KeyError("bug"), FailureAction.PERMANENT_FAILURE),
    ],
)
def test_classify_error(exc: Exception, action: FailureAction) -> None:
    assert classify_error(exc) is action


@pytest.mark.parametrize(
    ("exc", "action"),
    [
        (APIConnectionError("reset"), FailureAction.RETRY_TRANSIENT),
        (SSEIdleTimeoutError("idle"), FailureAction.RETRY_TRANSIENT),
        (SSEProtocolError("not text/event-stream"), FailureAction.RETRY_TRANSIENT),
        (ServerError(500, ""), FailureAction.RETRY_TRANSIENT),
        (ServerError(503, "", retry_after=2.0), FailureAction.RESPECT_SERVER),
        (RateLimitError(429, ""), FailureAction.RESPECT_SERVER),
        (APIError(408, ""), FailureAction.RETRY_TRANSIENT),
        (UnauthorizedError(401, ""), FailureAction.PERMANENT_FAILURE),
        (NotFoundError(404, ""), FailureAction.PERMANENT_FAILURE),
        (APIError(410, ""), FailureAction.PERMANENT_FAILURE),
        (PlexdError("a failure of the response"), FailureAction.RETRY_TRANSIENT),
        # What no server can cause: retrying would fail the same way, forever.
        (ClientClosedError("closed"), FailureAction.PERMANENT_FAILURE),
        (ConfigError("bad"), FailureAction.PERMANENT_FAILURE),
        (ArgumentError("bad"), FailureAction.PERMANENT_FAILURE),
        (EventLoopError("other loop"), FailureAction.PERMANENT_FAILURE),
        (KeyError("bug"), FailureAction.PERMANENT_FAILURE),
    ],
)
def test_classify_as_browser(exc: Exception, action: FailureAction) -> None:
    assert classify_as_browser(exc) is action


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
    # 1+2+4+8+16+32+60+60+60 = 243 s of failure; the 10th wait is cut at 300 s: polling
    # starts on time, and the next attempt follows the poll one interval later.
    steps = [fail_with(TRANSIENT)] * 10 + [fail_with(TRANSIENT), connect_then_close(events=1)]
    await play(engine, time, steps)
    assert time.sleeps[:10] == [1, 2, 4, 8, 16, 32, 60, 60, 60, 57]
    assert time.sleeps[10:] == [60, 60, 1]  # poll interval twice, then base after success
    assert polls == [start + 300, start + 360]
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
    # Polling starts 2.5 s into the run (in the second wait); then poll and wait the interval.
    assert time.sleeps == [1, 1.5, 7, 7, 7]
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


# --- issue 11: months of failures, hostile servers, Retry-After ---------------------


def fail_policy(
    policy: ReconnectPolicy, error: Exception, now: float, jitter: float = 1.0
) -> float:
    """One failed attempt at ``now``; returns the wait until the next attempt may start."""
    policy.attempt_started()
    return policy.after_attempt(error, classify_error(error), now, jitter).delay


def test_a_month_of_failures_waits_like_the_tenth() -> None:
    # 2.0 ** 1024 overflows a float: without a capped exponent the 1025th failure raised.
    policy = ReconnectPolicy(polling_after=None)
    now = 0.0
    for _ in range(50_000):  # a month at the 60 s maximum is 43,200 failures
        delay = fail_policy(policy, TRANSIENT, now)
        assert 0 < delay <= 60
        now += delay
    assert delay == 60
    assert policy.failures <= MAX_BACKOFF_EXPONENT
    assert policy.delay(1.0) == 60


@pytest.mark.parametrize("base", [1.0, 0.001, 1e-12])
def test_the_backoff_never_overflows_whatever_the_base(base: float) -> None:
    policy = ReconnectPolicy(base=base, maximum=60, polling_after=None)
    for n in range(2000):
        delay = fail_policy(policy, TRANSIENT, float(n))
        assert 0 < delay <= 60


@pytest.mark.parametrize("milliseconds", [0, 1, 99])
def test_server_retry_below_100ms_counts_as_100ms(milliseconds: int) -> None:
    # `retry: 0` made every later wait 0: about 1,000 connections a second.
    policy = ReconnectPolicy(polling_after=None)
    policy.server_retry(milliseconds)
    assert policy.base == MIN_SERVER_RETRY == 0.1
    delays = [fail_policy(policy, TRANSIENT, float(n)) for n in range(4)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8])


def test_the_server_retry_floor_is_a_policy_parameter() -> None:
    policy = ReconnectPolicy(min_server_retry=0.5)
    policy.server_retry(0)
    assert policy.base == 0.5
    policy.server_retry(2500)
    assert policy.base == 2.5


def test_a_huge_server_retry_is_capped_by_the_maximum() -> None:
    policy = ReconnectPolicy(polling_after=None)
    policy.server_retry(2**63 - 1)
    assert [fail_policy(policy, TRANSIENT, float(n)) for n in range(3)] == [60, 60, 60]


def test_a_base_of_zero_set_by_the_caller_stays_allowed() -> None:
    policy = ReconnectPolicy(base=0, maximum=0, polling_after=None)
    assert fail_policy(policy, TRANSIENT, 0.0) == 0
    assert policy.next_step(0.0).step is Step.CONNECT


def rate_limited(retry_after: float | None) -> RateLimitError:
    return RateLimitError(429, "", retry_after=retry_after)


def unavailable(retry_after: float | None) -> ServerError:
    return ServerError(503, "", retry_after=retry_after)


@pytest.mark.parametrize("make", [rate_limited, unavailable])
@pytest.mark.parametrize("retry_after", [None, 0.0, -5.0, float("nan"), 0.5])
def test_a_short_or_missing_retry_after_waits_the_backoff_delay(
    make: Callable[[float | None], APIError], retry_after: float | None
) -> None:
    # A 429 with Retry-After: 0 (or a past date: parsed as 0) made the wait 0.
    policy = ReconnectPolicy(polling_after=None)
    delays = [fail_policy(policy, make(retry_after), float(n), 0.75) for n in range(3)]
    assert delays == [0.75, 1.5, 3.0]


@pytest.mark.parametrize("make", [rate_limited, unavailable])
def test_429_and_503_wait_their_retry_after_beyond_the_maximum(
    make: Callable[[float | None], APIError],
) -> None:
    # The manager ignored a 503's Retry-After: 31 requests in 1.5 s with Retry-After: 2.
    policy = ReconnectPolicy(polling_after=None)
    assert fail_policy(policy, make(2.0), 0.0) == 2.0
    assert fail_policy(policy, make(120.0), 10.0) == 120.0
    assert fail_policy(policy, make(1.0), 200.0) == 4.0  # the backoff is longer


@pytest.mark.parametrize("make", [rate_limited, unavailable])
@pytest.mark.parametrize("retry_after", [3600.0, 3601.0, 1e12, float("inf")])
def test_retry_after_is_capped_at_an_hour(
    make: Callable[[float | None], APIError], retry_after: float
) -> None:
    policy = ReconnectPolicy(polling_after=None)
    assert fail_policy(policy, make(retry_after), 0.0) == MAX_RETRY_AFTER == 3600.0
    assert policy.next_step(0.0) == Decision(Step.WAIT, 3600.0)


def run_policy(
    policy: ReconnectPolicy, failures: list[Exception], until: float
) -> list[tuple[float, Step]]:
    """Drive the pure policy from t=0: each attempt fails with the next error (then
    TRANSIENT); returns the (time, CONNECT or POLL) steps before ``until``."""
    now, steps, errors = 0.0, [], list(failures)
    while now < until:
        decision = policy.next_step(now)
        if decision.step is Step.WAIT:
            assert decision.delay > 0
            now += decision.delay
            continue
        steps.append((now, decision.step))
        if decision.step is Step.POLL:
            policy.polled(now)
        else:
            fail_policy(policy, errors.pop(0) if errors else TRANSIENT, now)
    return steps


def test_a_long_retry_after_does_not_delay_polling() -> None:
    # A Retry-After of 10**12 parked the node for good, without polling.
    policy = ReconnectPolicy()
    steps = run_policy(policy, [rate_limited(1e12)], until=3700)
    polls = [t for t, step in steps if step is Step.POLL]
    connects = [t for t, step in steps if step is Step.CONNECT]
    assert polls[0] == 300  # polling starts on time, in the middle of the hour
    assert polls == [300 + 60 * k for k in range(len(polls))]
    assert connects == [0, 3600, 3660]  # no attempt before the hour is over, then each minute


def test_while_polling_an_attempt_still_waits_for_retry_after() -> None:
    # While polling, a 429's Retry-After was ignored: the next attempt came after 60 s.
    policy = ReconnectPolicy(polling_after=0)
    steps = run_policy(policy, [TRANSIENT, rate_limited(3600.0)], until=7300)
    connects = [t for t, step in steps if step is Step.CONNECT]
    assert connects[:3] == [0, 60, 3660]
    polls = [t for t, step in steps if step is Step.POLL]
    assert polls[:3] == [0, 60, 120]  # polling goes on every interval meanwhile
    assert all(b - a == 60 for a, b in itertools.pairwise(polls))


def test_polling_starts_on_time_in_the_middle_of_a_backoff_wait() -> None:
    policy = ReconnectPolicy(base=100, maximum=1000, polling_after=150, poll_interval=10)
    steps = run_policy(policy, [], until=200)
    assert steps[:3] == [(0, Step.CONNECT), (100, Step.CONNECT), (150, Step.POLL)]
    assert steps[3] == (160, Step.CONNECT)  # an attempt follows the poll


def test_a_clock_that_goes_back_does_not_stretch_the_waits() -> None:
    policy = ReconnectPolicy(polling_after=None)
    fail_policy(policy, rate_limited(600), 10_000.0)
    # The clock jumps back a day, 100 s into the 600 s wait: 500 s are left, not a day.
    assert policy.next_step(10_100.0) == Decision(Step.WAIT, 500.0)
    assert policy.next_step(10_100.0 - 86_400) == Decision(Step.WAIT, 500.0)


@pytest.mark.parametrize(
    ("base", "maximum"),
    [(-1, 60), (1, -1), (float("nan"), 60), (1, float("nan")), (1, float("inf")), (10, 5)],
)
def test_nonsense_intervals_are_refused(base: float, maximum: float) -> None:
    with pytest.raises(ArgumentError):
        check_intervals(base, maximum)


@pytest.mark.parametrize(
    ("after", "interval"),
    [(-1, 60), (300, 0), (300, -1), (float("nan"), 60), (300, float("nan")), (0, float("inf"))],
)
def test_nonsense_polling_settings_are_refused(after: float, interval: float) -> None:
    with pytest.raises(ArgumentError):
        check_polling(after, interval)


def test_sensible_settings_are_accepted() -> None:
    check_intervals(0, 0)
    check_intervals(0.5, 0.5)
    check_polling(0, 0.01)


async def test_a_state_callback_that_raises_does_not_end_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    time = FakeTime()

    def broken(state: ConnectionState) -> None:
        raise RuntimeError("bug in a callback")

    engine = ReconnectEngine(clock=time.clock, sleep=time.sleep, on_state_change=broken)
    script = await play(engine, time, [fail_with(TRANSIENT)] * 3)
    assert script.attempts == 3
    assert "callback" in caplog.text
