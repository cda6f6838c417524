"""Facade support, above the wire types: :class:`EventDispatcher` hands each verified
event to the handlers registered for its type (``SSEStream`` calls it)."""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Awaitable, Callable

from ._envelope import SignedEnvelope
from .errors import printable

EventHandler = Callable[[SignedEnvelope], Awaitable[None] | None]
"""An event handler: a plain function of the envelope, or an ``async def`` one."""


class EventDispatcher:
    """Calls the handlers of an event's type one after another, in registration order.

    A handler may be ``async def`` or a plain function. A handler that raises is
    logged and the next one still runs. Default handlers (:meth:`register_default`)
    run for every event, after the handlers of its type; an event that has neither is
    dropped (logged at debug level). Registration is thread-safe.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("plexd.api")
        # Copy-on-write tuples: dispatch reads without a lock, register swaps whole tuples.
        # _handlers is what dispatch reads: per type, its own handlers then the defaults
        # (merged at registration, so that dispatch costs one lookup either way).
        self._typed: dict[str, tuple[EventHandler, ...]] = {}
        self._defaults: tuple[EventHandler, ...] = ()
        self._handlers: dict[str, tuple[EventHandler, ...]] = {}
        self._lock = threading.Lock()

    def register(self, event_type: str, handler: EventHandler) -> None:
        """Add ``handler`` for ``event_type`` (an :class:`EventType` or any string)."""
        key = str(event_type)
        with self._lock:
            typed = self._typed[key] = (*self._typed.get(key, ()), handler)
            self._handlers[key] = typed + self._defaults

    def register_default(self, handler: EventHandler) -> None:
        """Add ``handler`` for every event, whatever its type (unknown types included);
        it runs after the handlers registered for the event's type."""
        with self._lock:
            defaults = self._defaults = (*self._defaults, handler)
            for key, typed in self._typed.items():
                self._handlers[key] = typed + defaults

    async def dispatch(self, envelope: SignedEnvelope) -> None:
        """Run every handler of the envelope's type, then every default handler; returns
        when the last one finished."""
        pending = self.dispatch_now(envelope)
        if pending is not None:
            await pending

    def dispatch_now(self, envelope: SignedEnvelope) -> Awaitable[None] | None:
        """:meth:`dispatch` without a coroutine while the handlers are plain functions:
        runs them here and returns None, or, from the first handler that returns an
        awaitable on, returns what finishes the work (await it at once)."""
        handlers = self._handlers.get(envelope.event_type) or self._defaults
        if not handlers:
            self._log.debug(
                "no handler for event type %s; event %s dropped",
                printable(envelope.event_type),
                printable(envelope.event_id),
                extra={"event_type": envelope.event_type, "event_id": envelope.event_id},
            )
            return None
        for index, handler in enumerate(handlers):
            try:
                result = handler(envelope)
                if result is not None and inspect.isawaitable(result):
                    return self._finish(envelope, handlers, index, result)
            except Exception as exc:
                self._handler_failed(envelope, index, exc)
        return None

    async def _finish(
        self,
        envelope: SignedEnvelope,
        handlers: tuple[EventHandler, ...],
        index: int,
        pending: Awaitable[None],
    ) -> None:
        try:
            await pending
        except Exception as exc:
            self._handler_failed(envelope, index, exc)
        for later in range(index + 1, len(handlers)):
            try:
                result = handlers[later](envelope)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self._handler_failed(envelope, later, exc)

    def _handler_failed(self, envelope: SignedEnvelope, index: int, exc: Exception) -> None:
        self._log.error(
            "handler %d for %s event %s raised %s: %s",
            index,
            printable(envelope.event_type),
            printable(envelope.event_id),
            type(exc).__name__,
            exc,
            exc_info=exc,
            extra={
                "event_type": envelope.event_type,
                "event_id": envelope.event_id,
                "handler_index": index,
            },
        )
