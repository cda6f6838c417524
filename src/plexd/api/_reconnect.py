"""Pure logic and the thin loop over it: reconnection, what to do after which failure,
and when.

Below it, ``_classify`` says what a failure calls for (a :class:`FailureAction`).
The decision part is :class:`ReconnectPolicy`: a small state object fed with what
happened (connected, an event arrived, the attempt ended with this error) that
answers with what to do next (wait this long, poll, or stop). :class:`ReconnectEngine`
drives attempts with it; time, sleeping and randomness are injectable, so every
transition can be tested with a fake clock and no real waiting. An attempt talks back
to its engine through :class:`AttemptHooks`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ._classify import FailureAction, classify_error

# API.md "Reconnection rules": base 1 s, multiplier 2, cap 60 s, jitter ±25%.
DEFAULT_BASE_DELAY = 1.0
DEFAULT_MAX_DELAY = 60.0
BACKOFF_MULTIPLIER = 2.0
JITTER = 0.25
# The exponent n of base * 2**n stops growing here: 2**64 times any base worth the name
# is past every maximum, and 2.0**n itself overflows a float from n = 1024 (a 17-hour
# outage at the defaults). A month of failures waits like the 10th.
MAX_BACKOFF_EXPONENT = 64
# Polling fallback after 5 minutes of continuous failure, polling every 60 s.
DEFAULT_POLLING_AFTER = 300.0
DEFAULT_POLL_INTERVAL = 60.0
# A connection that stayed up this long is healthy even if it carried no event
# (a quiet stream of keep-alives): it resets the backoff like one that delivered events.
STABLE_CONNECTION = 60.0
MIN_SERVER_RETRY = 0.1
"""Seconds: a server's ``retry:`` below 100 ms counts as 100 ms, so ``retry: 0`` cannot
turn every reconnect into a hot loop. (A caller's own base of 0 stays allowed.)"""
MAX_RETRY_AFTER = 3600.0
"""Seconds: a ``Retry-After`` is honoured up to an hour, beyond the backoff maximum; a
longer one (10**12 s, a date in the year 9999) would park the node for good."""

_NEVER = math.inf


class ConnectionState(enum.Enum):
    """Where the event connection is; see :class:`ReconnectEngine`."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    POLLING = "polling"


def retry_after_of(error: BaseException | None) -> float:
    """The wait a failure's ``retry_after`` asks for: 0 when absent, zero, negative,
    past or not a number; at most :data:`MAX_RETRY_AFTER`."""
    value = getattr(error, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    if math.isnan(value) or value <= 0:
        return 0.0
    return min(float(value), MAX_RETRY_AFTER)


class AttemptHooks(Protocol):
    """What a connection attempt tells the loop that runs it (a :class:`ReconnectEngine`
    is one), and asks it: whether to stop before the next event."""

    def connected(self) -> None:
        """The response is usable."""

    def event_delivered(self) -> None:
        """The connection delivered events."""

    def server_retry(self, milliseconds: int) -> None:
        """The server sent ``retry:``."""

    @property
    def stopped(self) -> bool:
        """Whether the loop was told to stop."""


class Step(enum.Enum):
    """The kind of a :class:`Decision`."""

    CONNECT = "connect"
    WAIT = "wait"
    POLL = "poll"
    STOP = "stop"


@dataclass(frozen=True)
class Decision:
    """One step: connect now, wait ``delay`` seconds, poll now, or stop.

    After a failed attempt, ``delay`` is the time until the next attempt may start.
    """

    step: Step
    delay: float = 0.0
    action: FailureAction | None = None


class ReconnectPolicy:
    """The reconnection rules of API.md as a plain state object (no I/O, no clock).

    It keeps two deadlines as numbers: when the next connection attempt may start, and
    (while polling) when the next poll is due; :meth:`next_step` says what to do at a
    given time. The n-th consecutive failed attempt is followed by
    ``min(base * 2**n, max) * jitter`` (n stops growing at :data:`MAX_BACKOFF_EXPONENT`),
    or by the failure's ``retry_after`` (429, 503; at most :data:`MAX_RETRY_AFTER`) when
    that is longer. Every disconnect waits, a clean close included. A connection that
    delivered an event, or stayed up ``stable_after`` seconds, resets n and ends the
    run of failures. Polling starts once a run of failures has lasted
    ``polling_after`` seconds (never when it is None), on time even in the middle of a
    long wait; while polling, a poll comes every ``poll_interval`` and an attempt
    follows each poll, though never before a Retry-After deadline; the first
    connection ends polling. A server's ``retry:`` below ``min_server_retry`` counts
    as ``min_server_retry``.
    """

    def __init__(
        self,
        base: float = DEFAULT_BASE_DELAY,
        maximum: float = DEFAULT_MAX_DELAY,
        *,
        polling_after: float | None = DEFAULT_POLLING_AFTER,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        stable_after: float = STABLE_CONNECTION,
        min_server_retry: float = MIN_SERVER_RETRY,
    ) -> None:
        self.base = base
        self.maximum = maximum
        self.polling_after = polling_after
        self.poll_interval = poll_interval
        self.stable_after = stable_after
        self.min_server_retry = min_server_retry
        self.failures = 0
        self.failing_since: float | None = None
        self.polling = False
        self._connected_at: float | None = None
        self._delivered = False
        self._reconnect_now = False
        self._attempt_at = -_NEVER
        self._retry_after_until = -_NEVER
        self._poll_at = _NEVER
        self._last_now: float | None = None

    # --- what happened ----------------------------------------------------

    def attempt_started(self) -> None:
        """A new connection attempt begins."""
        self._connected_at = None
        self._delivered = False

    def connected(self, now: float) -> None:
        """The attempt got a usable response; polling, if on, ends."""
        self._observe(now)
        self._connected_at = now
        self.polling = False

    def event_delivered(self) -> None:
        """The current connection delivered an event."""
        self._delivered = True

    def server_retry(self, milliseconds: int) -> None:
        """The server's ``retry:`` replaces the base interval for later connections
        (at least ``min_server_retry``; the maximum still caps every backoff delay)."""
        seconds = max(milliseconds, 0) / 1000.0
        self.base = max(seconds, self.min_server_retry)

    def reconnect_now(self) -> None:
        """The current connection is being dropped on purpose: reconnect without waiting."""
        self._reconnect_now = True

    def polled(self, now: float) -> None:
        """A poll finished: the next one is due ``poll_interval`` later, and the next
        attempt then too, unless a Retry-After deadline is later still."""
        self._observe(now)
        self._poll_at = now + self.poll_interval
        self._attempt_at = max(self._poll_at, self._retry_after_until)

    # --- what to do -------------------------------------------------------

    def delay(self, jitter: float) -> float:
        """The wait after the current failure count, ``jitter`` drawn from [0.75, 1.25]."""
        exponent = min(self.failures, MAX_BACKOFF_EXPONENT)
        return min(self.base * BACKOFF_MULTIPLIER**exponent, self.maximum) * jitter

    def after_attempt(
        self,
        error: BaseException | None,
        action: FailureAction | None,
        now: float,
        jitter: float,
    ) -> Decision:
        """Record how an attempt ended (``error`` None: a clean close); STOP or WAIT."""
        self._observe(now)
        if action in (FailureAction.PERMANENT_FAILURE, FailureAction.RETRY_AUTH):
            return Decision(Step.STOP, action=action)
        if self._reconnect_now:
            self._reconnect_now = False
            self._attempt_at = now
        elif self._succeeded(now):
            self._end_failing()
            self._attempt_at = now + self.delay(jitter)
        else:
            self._failed(error, now, jitter)
        return Decision(Step.WAIT, max(self._attempt_at - now, 0.0), action)

    def next_step(self, now: float) -> Decision:
        """What to do at ``now``: CONNECT, POLL, or WAIT ``delay`` seconds (never 0)."""
        self._observe(now)
        if not self.polling and now >= self._polling_starts_at():
            self.polling = True
            return Decision(Step.POLL)
        if now >= self._attempt_at:
            return Decision(Step.CONNECT)
        if self.polling and now >= self._poll_at:
            return Decision(Step.POLL)
        wake = min(self._attempt_at, self._poll_at if self.polling else self._polling_starts_at())
        return Decision(Step.WAIT, wake - now)

    # --- internals --------------------------------------------------------

    def _failed(self, error: BaseException | None, now: float, jitter: float) -> None:
        if self.failing_since is None:
            self.failing_since = now
        backoff = self.delay(jitter)
        self.failures = min(self.failures + 1, MAX_BACKOFF_EXPONENT)
        self._retry_after_until = now + retry_after_of(error)
        if self.polling:
            # Poll now; the next attempt follows the poll after that, as polled() sets.
            self._poll_at = now
            self._attempt_at = max(now + self.poll_interval, self._retry_after_until)
        else:
            self._attempt_at = max(now + backoff, self._retry_after_until)

    def _end_failing(self) -> None:
        self.failures = 0
        self.failing_since = None
        self.polling = False
        self._retry_after_until = -_NEVER
        self._poll_at = _NEVER

    def _polling_starts_at(self) -> float:
        if self.polling_after is None or self.failing_since is None:
            return _NEVER
        return self.failing_since + self.polling_after

    def _succeeded(self, now: float) -> bool:
        if self._delivered:
            return True
        return self._connected_at is not None and now - self._connected_at >= self.stable_after

    def _observe(self, now: float) -> None:
        # A clock that went back (a wall clock set back, a suspended VM) would stretch
        # every deadline by the jump: move them all back with it.
        last, self._last_now = self._last_now, now
        if last is None or now >= last:
            return
        shift = now - last
        self._attempt_at += shift
        self._retry_after_until += shift
        self._poll_at += shift
        if self.failing_since is not None:
            self.failing_since += shift
        if self._connected_at is not None:
            self._connected_at += shift


class ReconnectEngine:
    """Runs connection attempts until stopped, waiting between them as the policy says.

    A thin loop: it asks :meth:`ReconnectPolicy.next_step` what to do now (connect,
    poll, or sleep until the next deadline) and does it. Every sleep is a plain
    ``sleep`` that :meth:`stop` interrupts by cancellation.

    States: ``DISCONNECTED → CONNECTING → CONNECTED → (drop) → BACKOFF → CONNECTING``,
    ``CONNECTING → BACKOFF → CONNECTING``, ``BACKOFF → POLLING → CONNECTING``
    (while polling, a failed attempt goes back to POLLING, which also covers the
    waits between polls). Every change is logged and passed to ``on_state_change``;
    a callback that raises is logged, never a reason to stop.

    ``on_failure(error, decision)`` (plain or async) hears of every failed attempt.
    An attempt is a coroutine function that connects, calls :meth:`connected` once
    the response is usable and :meth:`event_delivered` per event, and returns when
    the server closes the stream (or raises).
    """

    def __init__(
        self,
        *,
        policy: ReconnectPolicy | None = None,
        classify: Callable[[BaseException], FailureAction] = classify_error,
        poll: Callable[[], Awaitable[None]] | None = None,
        on_failure: Callable[[BaseException, Decision], Awaitable[None] | None] | None = None,
        on_auth_failure: Callable[[], None] | None = None,
        on_state_change: Callable[[ConnectionState], None] | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        self.policy = policy or ReconnectPolicy()
        self.poll = poll
        self.on_failure = on_failure
        self.on_auth_failure = on_auth_failure
        self.on_state_change = on_state_change
        self._classify = classify
        self._log = logger or logging.getLogger("plexd.api")
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter or (lambda: random.uniform(1.0 - JITTER, 1.0 + JITTER))
        self._state = ConnectionState.DISCONNECTED
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self._stop_lock = threading.Lock()

    @property
    def state(self) -> ConnectionState:
        """The current state."""
        return self._state

    def connected(self) -> None:
        """Called by the attempt once the response is usable."""
        self.policy.connected(self._clock())
        self._set_state(ConnectionState.CONNECTED)

    def event_delivered(self) -> None:
        """Called by the attempt for every event it delivered."""
        self.policy.event_delivered()

    def server_retry(self, milliseconds: int) -> None:
        """Called when the server sent ``retry:``."""
        self.policy.server_retry(milliseconds)

    async def run(self, attempt: Callable[[], Awaitable[None]]) -> None:
        """Run attempts until :meth:`stop` (then return) or a permanent failure (raised).

        Cancelling the task that runs this propagates the cancellation.
        """
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        if self._stop_requested:
            return
        try:
            await self._attempts(attempt)
        except asyncio.CancelledError:
            if self._stop_requested and self._task is not None and self._task.uncancel() == 0:
                return
            raise
        finally:
            self._set_state(ConnectionState.DISCONNECTED)
            self._task = None

    def stop(self) -> None:
        """Stop at once from any state and any thread; :meth:`run` then returns None."""
        with self._stop_lock:
            if self._stop_requested:
                return
            self._stop_requested = True
        task, loop = self._task, self._loop
        if task is None or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:
            loop.call_soon_threadsafe(self._cancel_run)
        elif asyncio.current_task() is not task:
            task.cancel()
        else:
            # From inside the run (a handler, a callback): the loop and the attempt see
            # the flag at their next step; the cancel, a moment later, interrupts a wait
            # (and is skipped if run() has returned by then, so it never hits the caller).
            loop.call_soon(self._cancel_run)

    def _cancel_run(self) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop_requested

    async def _attempts(self, attempt: Callable[[], Awaitable[None]]) -> None:
        policy = self.policy
        while not self._stop_requested:
            decision = policy.next_step(self._clock())
            if decision.step is Step.CONNECT:
                await self._attempt(attempt)
            elif decision.step is Step.POLL:
                await self._poll()
            else:
                waiting = ConnectionState.POLLING if policy.polling else ConnectionState.BACKOFF
                self._set_state(waiting, delay=decision.delay)
                await self._sleep(decision.delay)

    async def _attempt(self, attempt: Callable[[], Awaitable[None]]) -> None:
        self._set_state(ConnectionState.CONNECTING)
        self.policy.attempt_started()
        error: Exception | None = None
        try:
            await attempt()
        except Exception as exc:
            error = exc
        if self._stop_requested:
            return
        action = self._classify(error) if error is not None else None
        decision = self.policy.after_attempt(error, action, self._clock(), self._jitter())
        if error is not None:
            await self._report(error, decision)
        if decision.step is Step.STOP:
            assert error is not None
            if decision.action is FailureAction.RETRY_AUTH and self.on_auth_failure:
                self._notify(self.on_auth_failure)
            raise error

    async def _poll(self) -> None:
        self._set_state(ConnectionState.POLLING, delay=self.policy.poll_interval)
        if self.poll is not None:
            try:
                await self.poll()
            except Exception as exc:
                self._log.warning(
                    "poll failed: %s: %s", type(exc).__name__, exc, extra={"error": str(exc)}
                )
        self.policy.polled(self._clock())

    def _notify(self, callback: Callable[[], None]) -> None:
        # A notification callback that raises is a bug of its own: logged, and the
        # connection goes on (or stops) exactly as it would have.
        try:
            callback()
        except Exception:
            self._log.exception("event stream callback %r failed", callback)

    async def _report(self, error: Exception, decision: Decision) -> None:
        if self.on_failure is not None:
            result = self.on_failure(error, decision)
            if result is not None:
                await result
        level = logging.ERROR if decision.step is Step.STOP else logging.WARNING
        self._log.log(
            level,
            "event stream attempt failed (%s): %s: %s",
            decision.action.value if decision.action else "closed",
            type(error).__name__,
            error,
            extra={"delay": decision.delay, "action": decision.action and decision.action.value},
        )

    def _set_state(self, state: ConnectionState, delay: float | None = None) -> None:
        if state is self._state:
            return
        old, self._state = self._state, state
        if delay is None:
            self._log.info("event stream %s -> %s", old.value, state.value)
        else:
            self._log.info(
                "event stream %s -> %s (%.3f s)",
                old.value,
                state.value,
                delay,
                extra={"delay": delay},
            )
        if self.on_state_change is not None:
            on_state_change = self.on_state_change
            self._notify(lambda: on_state_change(state))
