"""Facade layer: :class:`SSEManager`, the node's event connection that stays up for
months: an :class:`SSEStream` driven by a :class:`ReconnectEngine`, with the polling
fallback and the verifier following key rotations.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._checks import check_intervals, check_polling
from ._client import ControlPlane
from ._dispatch import EventDispatcher, EventHandler
from ._reconnect import ConnectionState, ReconnectEngine, ReconnectPolicy
from ._stream import SSEStream, check_verify_threads
from ._types import EventType, SigningKeys
from ._verify import DEFAULT_STALENESS_WINDOW, EventVerifier, NoOpVerifier
from .errors import ArgumentError, PlexdError, printable

# The signals run_until_signal turns into shutdown().
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
    control plane's current keys. With ``refresh_keys=True`` it also takes the keys
    of ``fetch_state(node_id).signing_keys`` before the first connection and before
    reconnecting after an outage longer than the verifier's staleness window: the
    rotation event replayed after such an outage is too old to verify, and a node
    that missed it would refuse every later event (``signature does not verify``).

    ``verify_threads``: how many threads check Ed25519 signatures while the event loop
    parses and dispatches (default: one per CPU but one, at most 8; ``0`` verifies on
    the loop); see :class:`SSEStream`.
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
        refresh_keys: bool = False,
        verify_threads: int | None = None,
    ) -> None:
        self._verify_threads = check_verify_threads(verify_threads)
        self._client = client
        self._verifier: EventVerifier = verifier if verifier is not None else NoOpVerifier()
        self._log = logger or logging.getLogger("plexd.api")
        self._take_keys = _key_refresher(self._verifier, refresh_keys)
        self._key_window = float(
            getattr(self._verifier, "staleness_window", DEFAULT_STALENESS_WINDOW)
        )
        # The monotonic time up to which the verifier's keys are known current: the
        # end of the last connection (rotation events kept them current while it was
        # up) or the last refresh. None: never.
        self._keys_current_at: float | None = None
        self._connected = False
        self._on_state_change = on_state_change
        self._clock = clock
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
            on_state_change=self._state_changed,
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

    def register_default_handler(self, handler: EventHandler) -> None:
        """Call ``handler`` for every verified event, whatever its type, unknown types
        included, after the handlers of its type (thread-safe)."""
        self._dispatcher.register_default(handler)

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
            verify_threads=self._verify_threads,
        )
        stream.last_event_id = self._last_event_id
        self._stream = stream
        self._engine.poll = self._poll_func or self._default_poll(node_id)

        async def attempt() -> None:
            if self._take_keys is not None and self._keys_may_be_stale():
                await self._refresh_keys(node_id)
            try:
                await stream.connect(node_id)
            finally:
                if self._connected:
                    self._connected = False
                    self._keys_current_at = self._clock()

        release_threads = stream.hold_verify_threads()  # warm across reconnects
        try:
            await self._engine.run(attempt)
        except PlexdError:
            raise
        except Exception as exc:
            # A bug, here or in a verifier the caller wrote: it stops the stream (looping
            # on it would hide it), as a PlexdError that keeps the original as its cause.
            raise PlexdError(
                f"event stream stopped by an unexpected {type(exc).__name__}: {printable(str(exc))}"
            ) from exc
        finally:
            release_threads()
            self._last_event_id = stream.last_event_id
            self._stream = None

    async def run_until_signal(self, node_id: str) -> None:
        """:meth:`start`, with SIGINT and SIGTERM calling :meth:`shutdown`: returns None
        on either signal, as on shutdown.

        The signal handlers are those of the running loop, installed where the platform
        and the thread allow (the main thread, not Windows' default loop; elsewhere this
        is :meth:`start` alone), and the previous handlers are put back on return.
        """
        loop = asyncio.get_running_loop()
        previous: dict[signal.Signals, Any] = {}
        for signum in SHUTDOWN_SIGNALS:
            old = signal.getsignal(signum)
            try:
                loop.add_signal_handler(signum, self._shutdown_on_signal, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            previous[signum] = old
        try:
            await self.start(node_id)
        finally:
            for signum, old in previous.items():
                loop.remove_signal_handler(signum)
                # remove_signal_handler leaves the default action, not what was there
                # (None: a handler not set from Python, which cannot be put back).
                if old is not None:
                    signal.signal(signum, old)

    def _shutdown_on_signal(self, signum: signal.Signals) -> None:
        self._log.info("%s received: shutting down the event stream", signum.name)
        self.shutdown()

    def shutdown(self) -> None:
        """Make :meth:`start` return promptly from any state (thread-safe)."""
        self._engine.stop()

    def _state_changed(self, state: ConnectionState) -> None:
        if state is ConnectionState.CONNECTED:
            self._connected = True
        if self._on_state_change is not None:
            self._on_state_change(state)

    def _keys_may_be_stale(self) -> bool:
        current_at = self._keys_current_at
        return current_at is None or self._clock() - current_at > self._key_window

    async def _refresh_keys(self, node_id: str) -> None:
        # Before connecting: a failure here is logged, and the connection is tried all
        # the same (its own error decides the next step; the refresh is tried again).
        try:
            state = await self._client.fetch_state(node_id)
        except PlexdError as exc:
            self._log.warning(
                "could not refresh the signing keys before connecting: %s",
                exc,
                extra={"reason": str(exc)},
            )
            return
        self._take_state_keys(state.signing_keys)

    def _take_state_keys(self, keys: SigningKeys | None) -> None:
        if self._take_keys is None:
            return
        if keys is None or not keys.current:
            self._log.warning("the control plane's state holds no signing key; keys kept")
            return
        try:
            self._take_keys(keys)
        except PlexdError as exc:
            self._log.warning("the state's signing keys are unusable, keys kept: %s", exc)
            return
        self._keys_current_at = self._clock()
        self._log.info("signing keys refreshed from the control plane's state")

    def _default_poll(self, node_id: str) -> Callable[[], Awaitable[None]]:
        async def poll() -> None:
            state = await self._client.fetch_state(node_id)
            self._take_state_keys(state.signing_keys)
            self._log.info(
                "polled state while the event stream is down",
                extra={"peers": len(state.peers), "policies": len(state.policies)},
            )

        return poll


def _key_refresher(
    verifier: EventVerifier, refresh_keys: bool
) -> Callable[[SigningKeys], None] | None:
    """The verifier's ``update_from_signing_keys`` when keys are to be refreshed."""
    if not isinstance(refresh_keys, bool):
        raise ArgumentError(f"refresh_keys must be a bool, got {type(refresh_keys).__name__}")
    if not refresh_keys:
        return None
    update: Callable[[SigningKeys], None] | None = getattr(
        verifier, "update_from_signing_keys", None
    )
    if not callable(update):
        raise ArgumentError(
            "refresh_keys=True needs a verifier with update_from_signing_keys "
            f"(an Ed25519Verifier), not {type(verifier).__name__}"
        )
    return update
