"""Virtual time for the months-in-seconds simulations: a trace of what a reconnect loop
did on a fake clock, and a plain model of API.md's reconnection rules that replays it.

The model knows nothing of ReconnectPolicy's code: it recomputes, from the outcomes of
the attempts and the jitter drawn, the exact wait the rules give after every attempt,
and checks every wait, poll and attempt of the trace against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from plexd.api import MAX_RETRY_AFTER, MIN_SERVER_RETRY, ReconnectPolicy
from plexd.api._reconnect import STABLE_CONNECTION

DAY = 86_400.0
HOUR = 3_600.0
DAYS = 30
EPS = 1e-6


def close(value: float, expected: float) -> bool:
    """Equal but for float rounding (virtual times reach millions of seconds)."""
    return math.isclose(value, expected, rel_tol=1e-9, abs_tol=EPS)


@dataclass(frozen=True)
class Outcome:
    """One scripted attempt: how long it takes, what it delivers, how it ends."""

    connect_time: float = 0.0
    connected: bool = False
    uptime: float = 0.0
    events: int = 0
    retry_ms: int | None = None
    error: Exception | None = None  # None: a clean close by the server

    @property
    def succeeded(self) -> bool:
        """API.md: an event, or 60 s up, makes the connection a success."""
        return self.connected and (self.events > 0 or self.uptime >= STABLE_CONNECTION)

    @property
    def retry_after(self) -> float:
        """The wait the error's Retry-After asks for, as API.md reads it."""
        value = getattr(self.error, "retry_after", None)
        if value is None or math.isnan(value) or value <= 0:
            return 0.0
        return float(min(value, MAX_RETRY_AFTER))


@dataclass
class Trace:
    """What the engine did, in order, on virtual time."""

    now: float = 0.0
    entries: list[tuple[str, float, object]] = field(default_factory=list)

    def add(self, kind: str, value: object = None) -> None:
        self.entries.append((kind, self.now, value))


@dataclass
class Setup:
    """The caller's settings (the policy's constructor) for one simulated node."""

    base: float = 1.0
    maximum: float = 60.0
    polling_after: float | None = 300.0
    poll_interval: float = 60.0
    min_attempt: float = 0.0  # with a base of 0, attempts must take time for time to pass

    def policy(self) -> ReconnectPolicy:
        return ReconnectPolicy(
            self.base,
            self.maximum,
            polling_after=self.polling_after,
            poll_interval=self.poll_interval,
        )


# --- the model that checks the trace -------------------------------------------------


@dataclass
class Pending:
    """What the model expects after an attempt ended at ``ended``."""

    ended: float
    backoff: float  # min(base * 2**n, max) * jitter: the wait the rules give
    retry_after: float  # the honoured Retry-After (0: none)
    succeeded: bool


class Model:
    """The rules of API.md, written plainly, replayed over a trace."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.base = setup.base
        self.failures = 0
        self.failing_since: float | None = None
        self.polling = False
        self.pending: Pending | None = None
        self.polls: list[tuple[float, float]] = []  # (start, end) since the last attempt
        self.poll_started = 0.0
        self.waits: list[float] = []
        self.attempts = 0
        self.max_wait = 0.0

    def check(self, trace: Trace) -> None:
        entries = trace.entries
        for index, (kind, at, value) in enumerate(entries):
            where = f"step {index} at {at:.6f} s ({at / DAY:.2f} days): {kind}"
            if kind == "start":
                self.attempt_started(at, where)
            elif kind == "end":
                assert isinstance(value, Outcome)
                jitter = entries[index + 1][2] if index + 1 < len(entries) else 1.0
                assert isinstance(jitter, float)
                self.attempt_ended(at, value, jitter)
            elif kind == "poll":
                self.poll_starts(at, where)
            elif kind == "polled":
                self.polls.append((self.poll_started, at))
            elif kind == "sleep":
                assert isinstance(value, float)
                self.slept(value, where)

    def slept(self, delay: float, where: str) -> None:
        # WAIT is never 0 (the policy connects or polls instead), and no wait is ever
        # longer than the longest thing the rules can ask for.
        assert delay > 0, where
        longest = max(self.setup.maximum * 1.25, MAX_RETRY_AFTER, self.setup.poll_interval)
        assert delay <= longest + EPS, (where, delay)
        self.max_wait = max(self.max_wait, delay)

    def polling_starts_at(self) -> float:
        if self.setup.polling_after is None or self.failing_since is None:
            return math.inf
        return self.failing_since + self.setup.polling_after

    def poll_starts(self, at: float, where: str) -> None:
        assert self.setup.polling_after is not None, where
        assert self.pending is not None and not self.pending.succeeded, where
        interval = self.setup.poll_interval
        if not self.polling:
            # Polling starts on time: when the run of failures has lasted `after`, or at
            # the end of the attempt that was in flight then; never earlier.
            expected = max(self.polling_starts_at(), self.pending.ended)
            assert close(at, expected), (where, expected)
            self.polling = True
        elif self.polls:
            assert close(at, self.polls[-1][1] + interval), where
        else:
            # While polling, a failed attempt is followed by a poll at once.
            assert close(at, self.pending.ended), where
        self.poll_started = at

    def attempt_started(self, at: float, where: str) -> None:
        self.attempts += 1
        pending, polls = self.pending, self.polls
        self.polls = []
        if pending is None:
            assert at == 0.0, where
            return
        gap = at - pending.ended
        self.waits.append(gap)
        # Never before a Retry-After deadline, whatever else happens.
        assert gap >= pending.retry_after - EPS, (where, gap, pending)
        # Never a wait of 0 (after a failure the server caused, or any), unless the
        # caller chose a base of 0 and no server's retry: replaced it since.
        if self.base > 0:
            assert gap > 0, where
        if polls:
            # An attempt follows the last poll one interval later (Retry-After permitting:
            # the polls go on until its deadline).
            expected = polls[-1][1] + self.setup.poll_interval
            assert close(at, expected), (where, expected)
            return
        # No poll in between: the exact wait of the rules, and polling was not due.
        expected = max(pending.backoff, pending.retry_after)
        assert close(gap, expected), (where, gap, pending)
        assert at <= self.polling_starts_at() + EPS, where
        # Above the maximum only for an honoured Retry-After (at most an hour).
        if gap > self.setup.maximum * 1.25 + EPS:
            assert close(gap, pending.retry_after), where
            assert gap <= MAX_RETRY_AFTER + EPS, where

    def attempt_ended(self, at: float, outcome: Outcome, jitter: float) -> None:
        if outcome.connected:
            self.polling = False  # the first connection ends polling
        if outcome.retry_ms is not None:
            self.base = max(outcome.retry_ms / 1000, MIN_SERVER_RETRY)
        if outcome.succeeded:
            self.failures = 0
            self.failing_since = None
        nominal = self.setup.maximum
        if self.failures < 1000:  # 2.0**n overflows from 1024 on; the cap is long reached
            nominal = min(self.base * 2.0**self.failures, self.setup.maximum)
        self.pending = Pending(
            ended=at,
            backoff=nominal * jitter,
            retry_after=0.0 if outcome.succeeded else outcome.retry_after,
            succeeded=outcome.succeeded,
        )
        if not outcome.succeeded:
            self.failures += 1
            if self.failing_since is None:
                self.failing_since = at


