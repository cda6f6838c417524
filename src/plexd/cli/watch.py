"""CLI, command layer: ``plexd-api watch``, the node's events through SSEManager, one
JSON line each."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from plexd.api import ControlPlane, EventVerifier, SignedEnvelope, SSEManager

from .output import event_line


class EventPrinter:
    """The default handler, called for every event whatever its type: prints and
    counts (SSEManager itself follows signing key rotations).

    With ``limit`` it stops ``manager`` once that many events were printed. A reader
    that goes away (a closed pipe, as with ``| head``) stops it too.
    """

    def __init__(
        self,
        manager: SSEManager,
        logger: logging.Logger,
        *,
        limit: int | None = None,
        write: Callable[[str], None] | None = None,
        show_secrets: bool = False,
    ) -> None:
        self._manager = manager
        self._log = logger
        self._limit = limit
        self._show_secrets = show_secrets
        self._write = write or _write_stdout
        self.printed = 0
        self.done = False

    def __call__(self, envelope: SignedEnvelope) -> None:
        if self.done:
            # shutdown() takes effect at the manager's next wait: the rest of an
            # already received chunk is still dispatched, and must not be printed.
            return
        try:
            self._write(event_line(envelope, show_secrets=self._show_secrets))
        except BrokenPipeError:
            self._stop()
            return
        self.printed += 1
        if self._limit is not None and self.printed >= self._limit:
            self._stop()

    def _stop(self) -> None:
        self.done = True
        self._manager.shutdown()


def _write_stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def watch_events(
    client: ControlPlane,
    node_id: str,
    verifier: EventVerifier | None,
    logger: logging.Logger,
    *,
    last_event_id: str = "",
    limit: int | None = None,
    reconnect_delay: float | None = None,
    max_reconnect_delay: float | None = None,
    show_secrets: bool = False,
) -> int:
    """Stream the node's events until ``limit`` events, shutdown or a permanent failure
    (raised). Returns how many events were printed; secrets in payloads are masked
    unless ``show_secrets``."""
    manager = SSEManager(client, verifier, logger)
    if reconnect_delay is not None and max_reconnect_delay is not None:
        manager.set_reconnect_intervals(reconnect_delay, max_reconnect_delay)
    manager.last_event_id = last_event_id
    printer = EventPrinter(manager, logger, limit=limit, show_secrets=show_secrets)
    # Every verified event, the types this version does not know included: a newer
    # control plane's events are shown, not silently dropped.
    manager.register_default_handler(printer)
    await manager.start(node_id)
    return printer.printed
