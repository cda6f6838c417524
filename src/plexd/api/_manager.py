"""Facade layer: :class:`SSEManager`, the node's event connection that stays up for
months: an :class:`SSEStream` driven by a :class:`ReconnectEngine`, with the polling
fallback and the verifier following key rotations.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ._checks import check_intervals, check_polling
from ._client import ControlPlane
from ._dispatch import EventDispatcher, EventHandler
from ._reconnect import ConnectionState, ReconnectEngine, ReconnectPolicy
from ._stream import SSEStream
from ._types import EventType
from ._verify import EventVerifier, NoOpVerifier
from .errors import PlexdError, printable


class SSEManager:
    """Keeps the node's event stream connected and hands verified events to handlers.

    ``start(node_id)`` connects, reconnects with backoff after every drop (sending
    ``Last-Event-ID`` so the server replays exactly what was missed), falls back to
    polling after a long run of failures, and blocks until :meth:`shutdown` (returns
    None), until its task is cancelled (the cancellation propagates), or until a
    permanent failure, which it raises: :class:`UnauthorizedError` (401, after
    ``on_auth_failure``), another 4xx than 408, 425 and 429 or an unfollowed 3xx
    (:class:`APIError`), :class:`ClientClosedError` (the client was closed), or any
    other error that is not a network, timeout or stream problem (see
    :func:`classify_error`). Network errors, idle timeouts, 5xx, 408, 425 and 429 are
    retried for as long as it takes; 429 and 503 wait at least their Retry-After
    (at most an hour).

    With an :class:`Ed25519Verifier` the manager follows ``signing_key_rotated``
    events itself (before user handlers run), so the verifier always holds the
    control plane's current keys.
    """

    def __init__(
        self,
        client: ControlPlane,
        verifier: EventVerifier | None = None,
        logger: logging.Logger | None = None,
        *,
        on_state_change: Callable[[ConnectionState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        self._client = client
        self._verifier: EventVerifier = verifier if verifier is not None else NoOpVerifier()
        self._log = logger or logging.getLogger("plexd.api")
        self._dispatcher = EventDispatcher(self._log)
        follow_rotation = getattr(self._verifier, "update_from_event", None)
        if callable(follow_rotation):
            # A rotation event verifies with the key it replaces; taking its keys first
            # keeps every later event verifiable without a restart.
            self._dispatcher.register(EventType.SIGNING_KEY_ROTATED, follow_rotation)
        self._poll_func: Callable[[], Awaitable[None]] | None = None
        self._policy = ReconnectPolicy()
        self._engine = ReconnectEngine(
            policy=self._policy,
            on_state_change=on_state_change,
            logger=self._log,
            clock=clock,
            sleep=sleep,
            jitter=jitter,
        )
        self._stream: SSEStream | None = None
        self._last_event_id = ""

    @property
    def state(self) -> ConnectionState:
        """Where the connection is now."""
        return self._engine.state

    @property
    def last_event_id(self) -> str:
        """The id of the last event whose handlers finished; survives reconnects."""
        if self._stream is not None:
            return self._stream.last_event_id
        return self._last_event_id

    @last_event_id.setter
    def last_event_id(self, value: str) -> None:
        self._last_event_id = value
        if self._stream is not None:
            self._stream.last_event_id = value

    @property
    def dispatcher(self) -> EventDispatcher:
        """The dispatcher events go to."""
        return self._dispatcher

    def register_handler(self, event_type: str, handler: EventHandler) -> None:
        """Call ``handler`` for every verified event of ``event_type`` (thread-safe)."""
        self._dispatcher.register(event_type, handler)

    def set_poll_func(self, fn: Callable[[], Awaitable[None]]) -> None:
        """What to call while polling (default: ``fetch_state(node_id)``, result discarded)."""
        self._poll_func = fn

    def set_reconnect_intervals(self, base: float, max: float) -> None:
        """Backoff base and cap, in seconds (defaults 1 and 60).

        ``0 <= base <= max``, both finite, else :class:`ArgumentError`. A base of 0
        reconnects at once (the caller's choice); a server's ``retry:`` replaces the
        base later, never below 0.1 s.
        """
        check_intervals(base, max)
        self._policy.base = base
        self._policy.maximum = max

    def set_polling_fallback(self, after: float, interval: float) -> None:
        """Poll after ``after`` seconds of continuous failure, every ``interval`` seconds.

        ``after >= 0`` and ``interval > 0``, both finite, else :class:`ArgumentError`.
        """
        check_polling(after, interval)
        self._policy.polling_after = after
        self._policy.poll_interval = interval

    def set_on_auth_failure(self, fn: Callable[[], None]) -> None:
        """Called once on a 401, before :meth:`start` raises UnauthorizedError."""
        self._engine.on_auth_failure = fn

    async def start(self, node_id: str) -> None:
        """Run the event connection for ``node_id`` until shutdown or a permanent failure."""
        stream = SSEStream(
            self._client,
            self._verifier,
            self._dispatcher,
            self._client.config.sse_idle_timeout,
            self._log,
            engine=self._engine,
        )
        stream.last_event_id = self._last_event_id
        self._stream = stream
        self._engine.poll = self._poll_func or self._default_poll(node_id)
        try:
            await self._engine.run(lambda: stream.connect(node_id))
        except PlexdError:
            raise
        except Exception as exc:
            # A bug, here or in a verifier the caller wrote: it stops the stream (looping
            # on it would hide it), as a PlexdError that keeps the original as its cause.
            raise PlexdError(
                f"event stream stopped by an unexpected {type(exc).__name__}: {printable(str(exc))}"
            ) from exc
        finally:
            self._last_event_id = stream.last_event_id
            self._stream = None

    def shutdown(self) -> None:
        """Make :meth:`start` return promptly from any state (thread-safe)."""
        self._engine.stop()

    def _default_poll(self, node_id: str) -> Callable[[], Awaitable[None]]:
        async def poll() -> None:
            state = await self._client.fetch_state(node_id)
            self._log.info(
                "polled state while the event stream is down",
                extra={"peers": len(state.peers), "policies": len(state.policies)},
            )

        return poll
