"""Months in seconds: ReconnectEngine on a fake clock through 30+ days of hostile weather.

A seeded generator plays phases (healthy streams, outages, rate limiting with every
kind of Retry-After, flapping, ``retry:`` lines from 0 to absurd); every attempt,
wait and poll goes into a trace, and a small independent model of the API.md rules
replays the trace and checks every step: the exact wait after each attempt, never 0
after a server-caused failure (unless the caller chose 0), never above the maximum
except an honoured Retry-After of at most an hour, no attempt before a Retry-After
deadline, polling on time, an attempt after each poll, bounded counters, and a run
that ends only by stop() or the permanent error.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable

import pytest

from _virtual_time import DAY, DAYS, HOUR, Model, Outcome, Setup, Trace
from plexd.api import ConnectionState, ReconnectEngine
from plexd.api._reconnect import MAX_BACKOFF_EXPONENT
from plexd.api.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ClientClosedError,
    ForbiddenError,
    RateLimitError,
    ServerError,
    SSEIdleTimeoutError,
    SSEProtocolError,
)

# Tens of thousands of failures a month: logging them all would be most of the time.
SILENT = logging.getLogger("plexd.api.test.months")
SILENT.disabled = True
# --- the weather -------------------------------------------------------------------

RETRY_AFTERS: list[float | None] = [
    None,
    0.0,  # Retry-After: 0
    -3.0,  # nonsense a parser might let through
    math.nan,
    0.0,  # a date in the past parses as 0
    0.4,
    7.0,
    45.0,
    600.0,
    3599.0,
    5000.0,
    1e12,
    math.inf,  # Retry-After: 999...9 (400 digits) parses as inf
]
RETRY_MS = [0, 1, 50, 99, 100, 250, 1000, 5000, 60_000, 10**9, 2**63 - 1]


def healthy(rng: random.Random) -> Outcome:
    roll = rng.random()
    end = rng.choice([None, SSEIdleTimeoutError("idle"), APIConnectionError("reset")])
    if roll < 0.6:  # a stream that delivers events for a long while
        uptime = rng.uniform(0, 2 * DAY)
        return Outcome(0.01, True, uptime, rng.randint(1, 50), error=end)
    if roll < 0.75:  # a quiet stream that stays up past 60 s
        return Outcome(0.01, True, rng.uniform(60, 4 * HOUR), 0, error=end)
    if roll < 0.9:  # a retry: line, then the stream goes on or not
        events = rng.choice([0, 0, 3])
        return Outcome(0.01, True, rng.uniform(0, 120), events, rng.choice(RETRY_MS), end)
    return flapping(rng)


OUTAGE_FAILURES: list[tuple[float, Callable[[], Exception]]] = [
    (0.001, lambda: APIConnectionError("connection refused")),
    (10.0, lambda: APITimeoutError("connect timed out")),
    (0.01, lambda: ServerError(500, "")),
    (0.01, lambda: ServerError(502, "")),
    (0.01, lambda: APIError(408, "")),
    (0.01, lambda: SSEProtocolError("text/html")),
]


def outage(rng: random.Random) -> Outcome:
    duration, failure = rng.choice(OUTAGE_FAILURES)
    return Outcome(duration, error=failure())


def rate_limited(rng: random.Random) -> Outcome:
    retry_after = rng.choice(RETRY_AFTERS)
    if rng.random() < 0.5:
        return Outcome(0.01, error=RateLimitError(429, "", retry_after=retry_after))
    return Outcome(0.01, error=ServerError(503, "", retry_after=retry_after))


def flapping(rng: random.Random) -> Outcome:
    roll = rng.random()
    if roll < 0.5:  # 200, then the server closes before any event
        return Outcome(0.01, True, rng.uniform(0, 5), 0)
    if roll < 0.8:  # 200, then the stream breaks before 60 s
        return Outcome(0.01, True, rng.uniform(0, 59), 0, error=SSEIdleTimeoutError("idle"))
    return Outcome(0.01, True, rng.uniform(0, 30), rng.randint(1, 3), error=None)


def mixed(rng: random.Random) -> Outcome:
    return rng.choice([healthy, outage, rate_limited, flapping])(rng)


PHASES: list[tuple[Callable[[random.Random], Outcome], float, float]] = [
    (healthy, HOUR, 3 * DAY),
    (outage, 600, 2 * DAY),
    (rate_limited, 300, DAY),
    (flapping, 600, DAY),
    (mixed, HOUR, DAY),
]


def weather(rng: random.Random, days: float) -> list[tuple[float, Callable[..., Outcome]]]:
    """Phases as (ends at, outcome generator), back to back over ``days``."""
    phases, t = [], 0.0
    while t < days * DAY:
        generate, shortest, longest = rng.choice(PHASES)
        t += rng.uniform(shortest, longest)
        phases.append((t, generate))
    return phases


# --- the run and its trace -------------------------------------------------------


SETUPS = {
    "defaults": Setup(),
    "slow": Setup(base=0.5, maximum=300, polling_after=120, poll_interval=30),
    "eventsource": Setup(base=1.0, maximum=60, polling_after=None),
    "caller-zero": Setup(base=0.0, maximum=30, polling_after=900, min_attempt=0.5),
}
ENDINGS = ["stop-in-attempt", "stop-in-poll", "stop-in-sleep", "forbidden", "closed", "bug"]


class Simulation:
    """Runs one engine through the weather on a fake clock, recording a trace."""

    def __init__(self, seed: int, setup: Setup, ending: str, days: float = DAYS) -> None:
        self.rng = random.Random(seed)
        self.setup = setup
        self.ending = ending
        self.phases = weather(self.rng, days)
        self.days = days
        self.trace = Trace()
        self.final_error: Exception | None = None
        self.stopping = False
        self.engine = ReconnectEngine(
            policy=setup.policy(),
            logger=SILENT,
            poll=self.poll,
            clock=lambda: self.trace.now,
            sleep=self.sleep,
            jitter=self.jitter,
        )

    async def run(self) -> None:
        async with asyncio.timeout(60):  # a hang guard, far above the real seconds used
            await self.engine.run(self.attempt)

    # --- the engine's world ---

    def jitter(self) -> float:
        value = self.rng.uniform(0.75, 1.25)
        self.trace.add("jitter", value)
        return value

    async def sleep(self, delay: float) -> None:
        self.trace.add("sleep", delay)
        if self.stopping and self.ending == "stop-in-sleep":
            self.engine.stop()
            await asyncio.sleep(3600)  # stop() cancels it
        self.trace.now += delay
        await asyncio.sleep(0)

    async def poll(self) -> None:
        assert self.engine.state is ConnectionState.POLLING
        self.trace.add("poll")
        if self.stopping and self.ending == "stop-in-poll":
            self.engine.stop()
            await asyncio.sleep(3600)
        self.trace.now += self.rng.choice([0.0, 0.0, 0.3, 4.0])  # a poll takes time
        self.trace.add("polled")

    async def attempt(self) -> None:
        assert self.engine.state is ConnectionState.CONNECTING
        policy = self.engine.policy
        assert 0 <= policy.failures <= MAX_BACKOFF_EXPONENT
        assert math.isfinite(policy.base) and policy.base >= 0
        self.trace.add("start")
        if self.trace.now >= self.days * DAY and not self.stopping:
            self.stopping = True
            await self.finish()
        outcome = self.outcome()
        self.trace.now += max(outcome.connect_time, self.setup.min_attempt)
        if outcome.connected:
            self.engine.connected()
            assert self.engine.state is ConnectionState.CONNECTED
            if outcome.retry_ms is not None:
                self.engine.server_retry(outcome.retry_ms)
            for _ in range(outcome.events):
                self.engine.event_delivered()
            self.trace.now += outcome.uptime
        self.trace.add("end", outcome)
        if outcome.error is not None:
            raise outcome.error

    async def finish(self) -> None:
        ending = self.ending
        if ending == "stop-in-attempt":
            self.engine.stop()
            await asyncio.sleep(3600)
        if ending in ("forbidden", "closed", "bug"):
            self.final_error = {
                "forbidden": ForbiddenError(403, "no"),
                "closed": ClientClosedError("ControlPlane is closed"),
                "bug": KeyError("a bug"),
            }[ending]
            self.trace.add("end", Outcome(error=self.final_error))
            raise self.final_error

    def outcome(self) -> Outcome:
        if self.stopping:  # fail until the poll or the sleep that stops the run
            return Outcome(0.01, error=APIConnectionError("refused"))
        for ends_at, generate in self.phases:
            if self.trace.now < ends_at:
                return generate(self.rng)
        return mixed(self.rng)


async def simulate(seed: int, setup: Setup, ending: str, days: float = DAYS) -> Simulation:
    """Run to the end; run() must end by stop() (None) or raise the permanent error."""
    simulation = Simulation(seed, setup, ending, days)
    try:
        result = await simulation.run()
    except Exception as exc:
        assert exc is simulation.final_error  # the permanent error itself, nothing else
    else:
        assert result is None
        assert simulation.final_error is None
    assert simulation.stopping, "run() ended before the scenario did"
    assert simulation.engine.state is ConnectionState.DISCONNECTED
    return simulation


CASES = [
    (seed, setup, ENDINGS[seed % len(ENDINGS)])
    for seed, setup in enumerate(
        ["defaults", "defaults", "slow", "eventsource", "caller-zero", "defaults", "slow"]
    )
]


@pytest.mark.parametrize(("seed", "setup_name", "ending"), CASES)
async def test_a_month_of_weather_follows_the_rules_at_every_step(
    seed: int, setup_name: str, ending: str
) -> None:
    setup = SETUPS[setup_name]
    if ending == "stop-in-poll" and setup.polling_after is None:
        ending = "stop-in-sleep"
    simulation = await simulate(seed, setup, ending)
    trace = simulation.trace
    assert trace.now >= DAYS * DAY
    model = Model(setup)
    model.check(trace)
    kinds = [kind for kind, _, _ in trace.entries]
    # The weather really was mixed: a poll fallback, Retry-After beyond the maximum.
    if setup.polling_after is not None:
        assert kinds.count("poll") > 10
    assert max(model.waits) > setup.maximum * 1.25


async def test_a_month_long_outage_waits_like_its_tenth_failure() -> None:
    # No success for 30 days: 2.0**n overflowed at the 1025th failure (17 hours).
    setup = Setup(polling_after=None)
    simulation = Simulation(11, setup, "stop-in-attempt")
    simulation.phases = [(math.inf, outage)]
    assert await simulation.run() is None
    Model(setup).check(simulation.trace)
    waits = [v for kind, _, v in simulation.trace.entries if kind == "sleep"]
    assert len(waits) > 30_000
    assert all(isinstance(w, float) and 45 <= w <= 75 for w in waits[10:])
    assert simulation.engine.policy.failures == MAX_BACKOFF_EXPONENT
