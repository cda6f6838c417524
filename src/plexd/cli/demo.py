"""CLI, demo layer: the plexd-api demo, the whole library against an in-process emulator,
checked step by step.

``plexd-api demo`` and ``make demo`` run it (``python -m plexd.cli.demo`` too). It starts an
emulator on an ephemeral 127.0.0.1 port, registers a node, sends a heartbeat, fetches the
state, fetches a secret and decrypts it with the node's secret key, streams events of all 12
types through :class:`SSEManager` with an :class:`Ed25519Verifier` built from the
registration, registers a second node (the first sees the control plane's own
``peer_added`` about it), has the server drop the stream and
refuse two reconnects while it publishes more events (they must arrive once each after the
reconnect), rotates the signing key (the verifier follows the ``signing_key_rotated`` event),
sends one event with a corrupted signature (it must be skipped and logged while the stream
goes on), and deregisters. Each step prints one ``[ok]`` line or a ``[FAIL]`` line; the
run stops at the first failure. The output is plain text, readable in a log file.

This module runs the steps of :mod:`.demo_scenario` and reports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable

from plexd.api import EventType, PlexdError
from plexd.emulator import Emulator

from .demo_scenario import DemoFailed, DemoReport, Scenario

OK = "[ok]"
FAIL = "[FAIL]"


class _LogCapture(logging.Handler):
    """Keeps the library's warnings of the run, to show them under the step that caused them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        records, self.records = self.records, []
        return [f"{record.levelname.lower()}: {record.getMessage()}" for record in records]


async def run_demo(
    say: Callable[[str], None] = print, *, emulator: Emulator | None = None
) -> DemoReport:
    """Run the scenario, reporting each step through ``say``; never raises for a failed step.

    It runs against ``emulator`` when one is given (started; the caller stops it), else
    against its own on an ephemeral 127.0.0.1 port. Returns the report;
    :attr:`DemoReport.passed` tells whether every expectation held.
    """
    report = DemoReport()

    def line(text: str) -> None:
        report.lines.append(text)
        say(text)

    started = time.monotonic()
    capture = _LogCapture()
    logger = logging.getLogger("plexd.demo")
    logger.addHandler(capture)
    # The demo shows the library's warnings under the step that caused them, not twice.
    propagate, logger.propagate = logger.propagate, False
    try:
        async with contextlib.AsyncExitStack() as stack:
            if emulator is None:
                emulator = await stack.enter_async_context(Emulator())
            line(f"plexd-api demo: control plane emulator on {emulator.url}")
            scenario = Scenario(emulator, logger)
            try:
                await _run_steps(scenario, line, capture, report)
            finally:
                await _clean_up(scenario, line, report)
            if not report.failure:
                _check_accounting(scenario, line, report)
    finally:
        logger.removeHandler(capture)
        logger.propagate = propagate
    report.seconds = time.monotonic() - started
    line(_summary(report))
    line("demo passed" if report.passed else f"demo FAILED: {report.failure}")
    return report


async def _run_steps(
    scenario: Scenario,
    line: Callable[[str], None],
    capture: _LogCapture,
    report: DemoReport,
) -> None:
    for step in scenario.steps():
        try:
            outcome = await step()
        except (DemoFailed, PlexdError) as exc:
            report.failure = f"{step.__name__.replace('_', ' ')}: {exc}"
            line(f"{FAIL} {report.failure}")
        except Exception as exc:  # a bug the smoke test found: report it, do not crash
            report.failure = f"{step.__name__.replace('_', ' ')}: {type(exc).__name__}: {exc}"
            line(f"{FAIL} {report.failure}")
        else:
            line(f"{OK} {outcome}")
        for logged in capture.take():
            line(f"       log {logged}")
        if report.failure:
            return


async def _clean_up(scenario: Scenario, line: Callable[[str], None], report: DemoReport) -> None:
    try:
        await scenario.aclose()
    except DemoFailed as exc:
        if not report.failure:
            report.failure = f"clean-up: {exc}"
            line(f"{FAIL} {report.failure}")
    scenario.fill(report)


def _check_accounting(scenario: Scenario, line: Callable[[str], None], report: DemoReport) -> None:
    lost, duplicated = scenario.account()
    if lost or duplicated:
        report.failure = f"events lost: {lost or 'none'}; delivered twice: {duplicated or 'none'}"
        line(f"{FAIL} {report.failure}")
    else:
        line(
            f"{OK} every published event was delivered exactly once, "
            "except the tampered one, which was rejected"
        )


def _summary(report: DemoReport) -> str:
    return (
        f"summary: {len(report.event_types)}/{len(EventType)} event types verified; "
        f"{report.published} events published, {report.delivered} delivered, "
        f"{report.rejected} rejected; {report.connections} stream connections; "
        f"{report.seconds:.2f} s"
    )


def main() -> int:
    """Run the demo with plain output; 0 when every expectation held, 1 otherwise."""
    report = asyncio.run(run_demo())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
