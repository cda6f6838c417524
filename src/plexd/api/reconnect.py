"""Reconnection: what to do after which failure (pure), and the thin loop that does it.

The decision part is :class:`ReconnectPolicy`: a small state object fed with what
happened (connected, an event arrived, the attempt ended with this error) that
answers with what to do next (wait this long, poll, or stop). :class:`ReconnectEngine`
drives attempts with it; time, sleeping and randomness are injectable, so every
transition can be tested with a fake clock and no real waiting.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .errors import (
    APIConnectionError,
    APIError,
    PlexdError,
    RateLimitError,
    SSEIdleTimeoutError,
    SSEProtocolError,
)

# API.md "Reconnection rules": base 1 s, multiplier 2, cap 60 s, jitter ±25%.
DEFAULT_BASE_DELAY = 1.0
DEFAULT_MAX_DELAY = 60.0
BACKOFF_MULTIPLIER = 2.0
JITTER = 0.25
# Polling fallback after 5 minutes of continuous failure, polling every 60 s.
DEFAULT_POLLING_AFTER = 300.0
DEFAULT_POLL_INTERVAL = 60.0
# A connection that stayed up this long is healthy even if it carried no event
# (a quiet stream of keep-alives): it resets the backoff like one that delivered events.
STABLE_CONNECTION = 60.0

# 4xx statuses that describe a passing condition rather than a wrong request.
_TRANSIENT_4XX = frozenset({408, 425})


class FailureAction(enum.Enum):
    """What a failed connection attempt calls for."""

    RETRY_TRANSIENT = "retry_transient"
    RETRY_AUTH = "retry_auth"
    RESPECT_SERVER = "respect_server"
    PERMANENT_FAILURE = "permanent_failure"


class ConnectionState(enum.Enum):
    """Where the event connection is; see :class:`ReconnectEngine`."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    POLLING = "polling"


def classify_error(exc: BaseException) -> FailureAction:
    """Map a failure to an action.

    Network errors, timeouts, :class:`SSEIdleTimeoutError`, :class:`SSEProtocolError`,
    any 5xx, 408 and 425 retry; 401 is an auth failure; 429 respects the server's
    Retry-After; 403, 404, every other 4xx and an unfollowed 3xx are permanent: the
    same request would fail the same way. Anything that is not a transport or
    protocol problem (a bug, say) is permanent too, so it surfaces instead of
    looping.
    """
    if isinstance(exc, APIError):
        status = exc.status_code
        if status == 401:
            return FailureAction.RETRY_AUTH
        if status == 429:
            return FailureAction.RESPECT_SERVER
        if status >= 500 or status in _TRANSIENT_4XX:
            return FailureAction.RETRY_TRANSIENT
        return FailureAction.PERMANENT_FAILURE
    if isinstance(
        exc, APIConnectionError | SSEIdleTimeoutError | SSEProtocolError | PlexdError | OSError
    ):
        return FailureAction.RETRY_TRANSIENT
    return FailureAction.PERMANENT_FAILURE


def always_retry(exc: BaseException) -> FailureAction:
    """The classifier of a plain EventSource: nothing is permanent (429 still respected)."""
    if isinstance(exc, RateLimitError):
        return FailureAction.RESPECT_SERVER
    return FailureAction.RETRY_TRANSIENT


class StopRequested(Exception):
    """Raised by an attempt that saw :attr:`ReconnectEngine.stopped` and stopped early."""


class Step(enum.Enum):
    """The kind of a :class:`Decision`."""

    WAIT = "wait"
    POLL = "poll"
    STOP = "stop"


@dataclass(frozen=True)
class Decision:
    """What to do after an attempt: wait ``delay`` seconds, poll then wait, or stop."""

    step: Step
    delay: float = 0.0
    action: FailureAction | None = None


class ReconnectPolicy:
    """The reconnection rules of API.md as a plain state object (no I/O, no clock).

    The n-th consecutive failed attempt is followed by
    ``min(base * 2**n, max) * uniform(0.75, 1.25)``; every disconnect waits, a
    clean close included. A connection that delivered an event, or stayed up
    ``stable_after`` seconds, resets n and ends the run of failures. Polling starts
    once a run of failures has lasted ``polling_after`` seconds (never when
    ``polling_after`` is None) and lasts until a connection succeeds.
    """

    def __init__(
        self,
        base: float = DEFAULT_BASE_DELAY,
        maximum: float = DEFAULT_MAX_DELAY,
        *,
        polling_after: float | None = DEFAULT_POLLING_AFTER,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        stable_after: float = STABLE_CONNECTION,
    ) -> None:
        self.base = base
        self.maximum = maximum
        self.polling_after = polling_after
        self.poll_interval = poll_interval
        self.stable_after = stable_after
        self.failures = 0
        self.failing_since: float | None = None
        self.polling = False
        self._connected_at: float | None = None
        self._events = 0
        self._reconnect_now = False

    # --- what happened ----------------------------------------------------

    def attempt_started(self) -> None:
        """A new connection attempt begins."""
        self._connected_at = None
        self._events = 0

    def connected(self, now: float) -> None:
        """The attempt got a usable response; polling, if on, ends."""
        self._connected_at = now
        self.polling = False

    def event_delivered(self) -> None:
        """The current connection delivered an event."""
        self._events += 1

    def server_retry(self, milliseconds: int) -> None:
        """The server's ``retry:`` replaces the base interval for later connections."""
        self.base = milliseconds / 1000.0

    def reconnect_now(self) -> None:
        """The current connection is being dropped on purpose: reconnect without waiting."""
        self._reconnect_now = True

    # --- what to do -------------------------------------------------------

    def delay(self, jitter: float) -> float:
        """The wait after the current failure count, ``jitter`` drawn from [0.75, 1.25]."""
        return min(self.base * BACKOFF_MULTIPLIER**self.failures, self.maximum) * jitter

    def after_attempt(
        self,
        error: BaseException | None,
        action: FailureAction | None,
        now: float,
        jitter: float,
    ) -> Decision:
        """Decide what follows an attempt that ended with ``error`` (None: a clean close)."""
        if action in (FailureAction.PERMANENT_FAILURE, FailureAction.RETRY_AUTH):
            return Decision(Step.STOP, action=action)
        if self._reconnect_now:
            self._reconnect_now = False
            return Decision(Step.WAIT, 0.0, action)
        if self._succeeded(now):
            self.failures = 0
            self.failing_since = None
            return Decision(Step.WAIT, self.delay(jitter), action)
        if self.failing_since is None:
            self.failing_since = now
        delay = self.delay(jitter)
        self.failures += 1
        retry_after = getattr(error, "retry_after", None)
        if action is FailureAction.RESPECT_SERVER and retry_after is not None:
            delay = max(float(retry_after), 0.0)
        if self.polling:
            return Decision(Step.POLL, self.poll_interval, action)
        return Decision(Step.WAIT, delay, action)

    def should_start_polling(self, now: float) -> bool:
        """After a backoff wait: has the run of failures lasted long enough to poll?"""
        if self.polling_after is None or self.failing_since is None:
            return False
        if now - self.failing_since >= self.polling_after:
            self.polling = True
        return self.polling

    def _succeeded(self, now: float) -> bool:
        if self._events:
            return True
        return self._connected_at is not None and now - self._connected_at >= self.stable_after


class ReconnectEngine:
    """Runs connection attempts until stopped, waiting between them as the policy says.

    States: ``DISCONNECTED → CONNECTING → CONNECTED → (drop) → BACKOFF → CONNECTING``,
    ``CONNECTING → BACKOFF → CONNECTING``, ``BACKOFF → POLLING → CONNECTING``
    (while polling, a failed attempt goes back to POLLING). Every change is logged
    and passed to ``on_state_change``.

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
            self._set_state(ConnectionState.CONNECTING)
            policy.attempt_started()
            error: Exception | None = None
            try:
                await attempt()
            except Exception as exc:
                error = exc
            if self._stop_requested:
                return
            action = self._classify(error) if error is not None else None
            decision = policy.after_attempt(error, action, self._clock(), self._jitter())
            if error is not None:
                await self._report(error, decision)
            if decision.step is Step.STOP:
                assert error is not None
                if decision.action is FailureAction.RETRY_AUTH and self.on_auth_failure:
                    self.on_auth_failure()
                raise error
            if decision.step is Step.POLL:
                await self._poll_then_wait(decision.delay)
                continue
            self._set_state(ConnectionState.BACKOFF, delay=decision.delay)
            await self._sleep(decision.delay)
            if not self._stop_requested and policy.should_start_polling(self._clock()):
                await self._poll_then_wait(policy.poll_interval)

    async def _poll_then_wait(self, interval: float) -> None:
        self._set_state(ConnectionState.POLLING, delay=interval)
        if self.poll is not None:
            try:
                await self.poll()
            except Exception as exc:
                self._log.warning(
                    "poll failed: %s: %s", type(exc).__name__, exc, extra={"error": str(exc)}
                )
        if not self._stop_requested:
            await self._sleep(interval)

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
            self.on_state_change(state)
