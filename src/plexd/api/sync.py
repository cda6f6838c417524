"""The blocking face of plexd-api, for programs that do not use asyncio.

:class:`ControlPlane`, :class:`SSEManager` and :class:`EventSource` take the same
arguments as their asyncio namesakes in :mod:`plexd.api` and block instead of
returning coroutines::

    from plexd.api import Config, HeartbeatRequest
    from plexd.api.sync import ControlPlane

    with ControlPlane(Config(base_url="https://cp.example"), "1.0.0") as cp:
        cp.set_auth_token(token)
        answer = cp.heartbeat(node_id, HeartbeatRequest(node_id=node_id))

They are a thin layer over the asyncio API, which does all the work: one event loop,
in one background daemon thread, serves every object of this module in the process.
The thread starts with the first object and stops when the last one is closed (or at
interpreter exit); nothing of asyncio shows in the caller's code. Each object is a
context manager; using one after :meth:`close` raises :class:`ClientClosedError`.
Every error is the exception the asyncio API raised, raised again in the caller's
thread. User code (event handlers, the poll function, callbacks) runs in the caller's
thread, never in the loop's.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import os
import queue
import signal
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from os import PathLike
from types import FrameType, TracebackType
from typing import Any, Concatenate, Final, Literal, ParamSpec, Self, TypeVar, cast, overload

from . import _client, _eventsource, _http, _manager
from ._artifact import ArtifactDownload
from ._config import Config
from ._dispatch import EventHandler
from ._envelope import SignedEnvelope
from ._reconnect import ConnectionState
from ._sse import SSEEvent
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    ClientClosedError,
    EventLoopError,
    PlexdError,
)

__all__ = [
    "LOOP_THREAD_NAME",
    "ArtifactStream",
    "ControlPlane",
    "EventSource",
    "EventStreamResponse",
    "SSEManager",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")

_log = logging.getLogger("plexd.api")

# The background thread's name, as threading.enumerate() shows it.
LOOP_THREAD_NAME: Final = "plexd-api-loop"
# How long the loop, when it stops, lets what is still running finish (a close in
# flight) before cancelling it.
_STOP_GRACE = 1.0
# The signals SSEManager.run turns into shutdown() when it runs in the main thread.
_SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# --- the background loop ------------------------------------------------------------------


class _Portal:
    """One background event loop in its daemon thread, and the calls into it.

    Counted: every object of this module holds it from construction to close; the
    last release stops the loop. A portal that stopped (or that a fork left behind)
    refuses calls with :class:`ClientClosedError` instead of hanging.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.users = 0
        self.closed = False
        self._lock = threading.Lock()
        # Calls submitted and not finished: completed with an error if the loop stops
        # under them, so that no caller waits for ever.
        self._pending: weakref.WeakSet[concurrent.futures.Future[Any]] = weakref.WeakSet()
        started = threading.Event()
        self.thread = threading.Thread(
            target=self._serve, args=(started,), name=LOOP_THREAD_NAME, daemon=True
        )
        self.thread.start()
        started.wait()

    def _serve(self, started: threading.Event) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
            loop.run_until_complete(self._finish())
        finally:
            loop.close()
            for future in list(self._pending):
                # Not cancelled through its task (it ignored the cancellation, or
                # never started): its caller must not wait for ever.
                if not future.cancel():
                    with contextlib.suppress(concurrent.futures.InvalidStateError):
                        future.set_exception(ClientClosedError("the background loop stopped"))

    async def _finish(self) -> None:
        this = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not this]
        if tasks:
            _, running = await asyncio.wait(tasks, timeout=_STOP_GRACE)
            for task in running:
                task.cancel()
            if running:
                await asyncio.wait(running, timeout=_STOP_GRACE)
        await self.loop.shutdown_asyncgens()
        await self.loop.shutdown_default_executor()

    def in_loop_thread(self) -> bool:
        """Whether the caller is the loop's own thread."""
        return threading.current_thread() is self.thread

    def submit(self, coro: Coroutine[Any, Any, _R]) -> concurrent.futures.Future[_R]:
        """Schedule ``coro`` on the loop; :class:`ClientClosedError` once it stopped."""
        with self._lock:
            if self.closed:
                coro.close()
                raise ClientClosedError("the background event loop of plexd.api.sync stopped")
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self._pending.add(future)
        return future

    def call(self, coro: Coroutine[Any, Any, _R]) -> _R:
        """Run ``coro`` on the loop and wait for its result in the caller's thread."""
        if self.in_loop_thread():
            coro.close()
            raise _loop_thread_error()
        return _wait(self.submit(coro))

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the loop soon, without waiting; nothing once it stopped."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to do
            self.loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        """Stop the loop (what runs gets a short grace) and, from another thread, wait
        for its thread to end."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop_thread():
            self.thread.join()

    def forget_after_fork(self) -> None:
        # In a forked child the thread does not exist: nothing may wait for it.
        self._lock = threading.Lock()
        self.closed = True


def _wait(future: concurrent.futures.Future[_R]) -> _R:
    """The result of a call on the loop, raised again here; an interrupt of the waiting
    thread (Ctrl-C) cancels the call."""
    try:
        return future.result()
    except concurrent.futures.CancelledError:
        raise ClientClosedError("the call was cancelled: the background loop stopped") from None
    except BaseException:
        future.cancel()
        raise


def _loop_thread_error() -> EventLoopError:
    return EventLoopError(
        "a plexd.api.sync object was used from its own event loop thread (from an async "
        "handler?): use the asyncio API there"
    )


_portal_lock = threading.Lock()
_portal: _Portal | None = None


def _acquire_portal() -> _Portal:
    """The process's portal, started if there is none; the caller must release it."""
    global _portal
    with _portal_lock:
        portal = _portal
        if portal is None or portal.closed:
            portal = _portal = _Portal()
        portal.users += 1
        return portal


def _release_portal(portal: _Portal) -> None:
    """Done with ``portal``: the last user stops it."""
    global _portal
    with _portal_lock:
        portal.users -= 1
        if portal.users > 0:
            return
        if _portal is portal:
            _portal = None
    portal.stop()


def _stop_at_exit() -> None:
    # Objects never closed still hold the loop: stop it before the interpreter goes.
    global _portal
    with _portal_lock:
        portal, _portal = _portal, None
    if portal is not None:
        portal.stop()


def _forget_portal_in_child() -> None:
    global _portal, _portal_lock
    _portal_lock = threading.Lock()
    if _portal is not None:
        _portal.forget_after_fork()
    _portal = None


atexit.register(_stop_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_portal_in_child)


class _Resource:
    """What every object of this module has: a portal held until :meth:`close`, and a
    close that runs once, from any thread, and also when the object is collected."""

    _portal: _Portal
    _closed: bool

    def _hold(self, aclose: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._portal = _acquire_portal()
        self._closed = False
        self._close_lock = threading.Lock()
        # Collected without close(): close in the background, then let the loop go.
        self._finalizer = weakref.finalize(self, _close_collected, self._portal, aclose)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError(f"{type(self).__name__} is closed")

    def __enter__(self) -> Self:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close it and release the background loop. Safe to call twice, from any thread."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        held = self._finalizer.detach()
        if held is None:  # collected meanwhile: closed by the finalizer
            return
        _, _, (portal, aclose), _ = held
        try:
            portal.call(aclose())
        finally:
            _release_portal(portal)


def _close_collected(portal: _Portal, aclose: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with contextlib.suppress(PlexdError):
        portal.submit(aclose())
    _release_portal(portal)


# --- ControlPlane ---------------------------------------------------------------------


def _init_like(
    target: Callable[_P, object],
) -> Callable[[Callable[..., None]], Callable[Concatenate[Any, _P], None]]:
    """Type an ``__init__(self, *args, **kwargs)`` with ``target``'s parameters, so that
    the signature is written once and callers are still checked."""

    def decorate(init: Callable[..., None]) -> Callable[Concatenate[Any, _P], None]:
        init.__signature__ = _with_self(target)  # type: ignore[attr-defined]
        return init

    return decorate


def _with_self(target: Callable[..., object]) -> inspect.Signature:
    signature = inspect.signature(target)
    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    return signature.replace(parameters=[this, *signature.parameters.values()])


def _blocking(
    method: Callable[Concatenate[_client.ControlPlane, _P], Awaitable[_R]],
) -> Callable[Concatenate[ControlPlane, _P], _R]:
    """The blocking twin of an ``async def`` method of the asyncio ControlPlane: same
    parameters (keyword arguments added there come along), same result and errors."""

    def call(self: ControlPlane, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        self._check_open()
        return self._portal.call(_call(method, self._client, *args, **kwargs))

    functools.update_wrapper(call, method)
    return call


async def _call(method: Callable[..., Awaitable[_R]], *args: Any, **kwargs: Any) -> _R:
    # The method is called on the loop: a call refused before it runs leaves no
    # coroutine behind that was never awaited.
    return await method(*args, **kwargs)


class EventStreamResponse:
    """An open event stream of :meth:`ControlPlane.connect_sse`, read by blocking calls;
    leaving its ``with`` block closes the connection."""

    def __init__(self, response: _http.StreamingResponse, portal: _Portal) -> None:
        self._response = response
        self._portal = portal
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers

    def iter_chunks(self) -> Iterator[bytes]:
        """The body as it arrives, in chunks of whatever size the socket delivers."""
        chunks = self._response.iter_chunks()
        try:
            while True:
                try:
                    yield self._portal.call(_next_chunk(chunks))
                except StopAsyncIteration:
                    return
        finally:
            with contextlib.suppress(PlexdError):
                self._portal.call(_close_iterator(chunks))


class ArtifactStream(EventStreamResponse):
    """A download of :meth:`ControlPlane.fetch_artifact`, read by blocking calls;
    ``content_length`` is None when the server gave none."""

    def __init__(self, response: _http.ArtifactStream, portal: _Portal) -> None:
        super().__init__(response, portal)
        self.content_length: int | None = response.content_length


async def _next_chunk(chunks: AsyncIterator[bytes]) -> bytes:
    return await anext(chunks)


async def _close_iterator(chunks: AsyncIterator[bytes]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


class _BlockingContext(contextlib.AbstractContextManager[_T]):
    """An asyncio context manager entered and left on the loop, by blocking calls."""

    def __init__(
        self,
        portal: _Portal,
        make: Callable[[], contextlib.AbstractAsyncContextManager[Any]],
        wrap: Callable[[Any, _Portal], _T],
    ) -> None:
        self._portal = portal
        self._make = make
        self._wrap = wrap
        self._context: contextlib.AbstractAsyncContextManager[Any] | None = None

    def __enter__(self) -> _T:
        if self._context is not None:
            raise ClientClosedError("this stream was entered already; open a new one")

        async def enter() -> Any:
            context = self._make()
            value = await context.__aenter__()
            self._context = context
            return value

        return self._wrap(self._portal.call(enter()), self._portal)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        context = self._context
        if context is not None:
            self._portal.call(_call(context.__aexit__, exc_type, exc, tb))


def _blocking_stream(
    method: Callable[Concatenate[_client.ControlPlane, _P], object],
    wrap: Callable[[Any, _Portal], _T],
) -> Callable[Concatenate[ControlPlane, _P], contextlib.AbstractContextManager[_T]]:
    """The blocking twin of a streaming method (``connect_sse``, ``fetch_artifact``
    without ``dest``): a ``with`` block of a stream read by blocking calls."""

    def call(
        self: ControlPlane, /, *args: _P.args, **kwargs: _P.kwargs
    ) -> contextlib.AbstractContextManager[_T]:
        self._check_open()
        portal = self._portal
        made: Any = portal.call(_made(method, self._client, *args, **kwargs))
        return _BlockingContext(portal, lambda: made, wrap)

    functools.update_wrapper(call, method)
    return call


async def _made(method: Callable[..., object], *args: Any, **kwargs: Any) -> object:
    # Called on the loop: the method may check its arguments or bind to the loop.
    return method(*args, **kwargs)


class ControlPlane(_Resource):
    """The control plane client, blocking: the constructor and methods of
    :class:`plexd.api.ControlPlane`, each call returning its result (or raising its
    error) in the calling thread. Safe to share between threads.

    ``connect_sse`` and ``fetch_artifact`` return ``with`` blocks whose value has
    ``status``, ``headers`` (and ``content_length``) and a blocking ``iter_chunks()``.
    """

    @_init_like(_client.ControlPlane)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._client = _client.ControlPlane(*args, **kwargs)
        self._hold(self._client.aclose)

    def __repr__(self) -> str:
        return f"sync.{self._client!r}"

    @property
    def config(self) -> Config:
        """The client's :class:`Config`, its defaults applied."""
        return self._client.config

    def set_auth_token(self, token: str) -> None:
        """Set the bearer token of later requests (thread-safe; "" sends none)."""
        self._client.set_auth_token(token)

    ping = _blocking(_client.ControlPlane.ping)
    get_json = _blocking(_client.ControlPlane.get_json)
    post_json = _blocking(_client.ControlPlane.post_json)
    register = _blocking(_client.ControlPlane.register)
    heartbeat = _blocking(_client.ControlPlane.heartbeat)
    deregister = _blocking(_client.ControlPlane.deregister)
    fetch_state = _blocking(_client.ControlPlane.fetch_state)
    rotate_keys = _blocking(_client.ControlPlane.rotate_keys)
    update_capabilities = _blocking(_client.ControlPlane.update_capabilities)
    report_endpoint = _blocking(_client.ControlPlane.report_endpoint)
    report_drift = _blocking(_client.ControlPlane.report_drift)
    fetch_secret = _blocking(_client.ControlPlane.fetch_secret)
    sync_reports = _blocking(_client.ControlPlane.sync_reports)
    ack_execution = _blocking(_client.ControlPlane.ack_execution)
    report_result = _blocking(_client.ControlPlane.report_result)
    report_metrics = _blocking(_client.ControlPlane.report_metrics)
    report_logs = _blocking(_client.ControlPlane.report_logs)
    report_audit = _blocking(_client.ControlPlane.report_audit)
    connect_sse = _blocking_stream(_client.ControlPlane.connect_sse, EventStreamResponse)
    _open_artifact = _blocking_stream(_client.ControlPlane.fetch_artifact, ArtifactStream)

    @overload
    def fetch_artifact(
        self, version: str, os: str, arch: str, *, max_retries: int | None = None
    ) -> contextlib.AbstractContextManager[ArtifactStream]: ...

    @overload
    def fetch_artifact(
        self,
        version: str,
        os: str,
        arch: str,
        *,
        dest: str | PathLike[str],
        sha256: str | None = None,
        progress: Callable[[int, int | None], object] | None = None,
        max_retries: int | None = None,
    ) -> ArtifactDownload: ...

    def fetch_artifact(
        self,
        version: str,
        os: str,
        arch: str,
        *,
        dest: str | PathLike[str] | None = None,
        sha256: str | None = None,
        progress: Callable[[int, int | None], object] | None = None,
        max_retries: int | None = None,
    ) -> contextlib.AbstractContextManager[ArtifactStream] | ArtifactDownload:
        """Download a plexd binary, as :meth:`plexd.api.ControlPlane.fetch_artifact`.

        Without ``dest``: a ``with`` block of the streaming response. With ``dest``: the
        download to that file, checked and resumable, returning its
        :class:`~plexd.api.ArtifactDownload` when done; ``progress`` is then called on
        the background loop's thread (keep it short and thread-safe).
        """
        if dest is None:
            if sha256 is not None or progress is not None:
                raise ArgumentError("fetch_artifact: sha256 and progress need dest=")
            return self._open_artifact(version, os, arch, max_retries=max_retries)
        self._check_open()
        client = self._client

        async def download() -> ArtifactDownload:
            return await client.fetch_artifact(
                version, os, arch, dest=dest, sha256=sha256, progress=progress,
                max_retries=max_retries,
            )  # fmt: skip

        return self._portal.call(download())


# --- calls into the caller's thread ----------------------------------------------------


class _Done:
    __slots__ = ("future",)

    def __init__(self, future: concurrent.futures.Future[Any]) -> None:
        self.future = future


class _Inbox:
    """User code the loop hands to the caller's thread: that thread, while it waits for
    a call on the loop, runs what arrives, in order (:meth:`serve`).

    ``on_stop`` is what a stop asked for by that user code (:meth:`stop_after_current`)
    calls once it returned, on the loop, in the task that waited for it: so that the
    event it handled counts as handled, as when an asyncio handler calls shutdown().
    """

    def __init__(self, portal: _Portal, on_stop: Callable[[], None] | None = None) -> None:
        self._portal = portal
        self._on_stop = on_stop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._busy_in: int | None = None
        self._stop_asked = False

    # On the loop.

    async def call(self, fn: Callable[..., _R], *args: Any) -> _R:
        """Run ``fn(*args)`` in the serving thread; its result or exception comes back."""
        answer: asyncio.Future[tuple[Any, BaseException | None, bool]]
        answer = asyncio.get_running_loop().create_future()
        self._queue.put((fn, args, answer))
        result, error, stop = await answer
        if stop and self._on_stop is not None:
            self._on_stop()
        if error is not None:
            raise error
        return cast(_R, result)

    def post(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` in the serving thread, not waiting; an exception is logged."""
        self._queue.put((fn, args, None))

    # In the caller's thread.

    def stop_after_current(self) -> bool:
        """Called from user code that this inbox runs now: ask for ``on_stop`` once it
        returned, and say True. Anywhere else: False, nothing done."""
        if self._on_stop is None or self._busy_in != threading.get_ident():
            return False
        self._stop_asked = True
        return True

    def serve(
        self, future: concurrent.futures.Future[_R], on_interrupt: Callable[[], object]
    ) -> _R:
        """Run what the loop sends until ``future`` is done; then its result.

        An exception that is not an ``Exception`` (SystemExit from user code, an
        interrupt) calls ``on_interrupt``, waits for ``future`` and propagates.
        """
        future.add_done_callback(lambda done: self._queue.put(_Done(done)))
        while True:
            try:
                item = self._queue.get()
                if isinstance(item, _Done):
                    if item.future is future:
                        break
                    continue
                self._run(*item)
            except BaseException:
                on_interrupt()
                self._drain(future)
                raise
        return _wait(future)

    def _run(self, fn: Callable[..., object], args: tuple[Any, ...], answer: Any) -> None:
        if answer is not None and answer.cancelled():
            # Its caller on the loop is gone (a shutdown): the event is replayed later.
            return
        result: object = None
        error: Exception | None = None
        self._busy_in = threading.get_ident()
        try:
            result = fn(*args)
        except Exception as exc:
            error = exc
        except BaseException:
            if answer is not None:
                self._portal.call_soon(answer.cancel)
            raise
        finally:
            self._busy_in = None
            stop, self._stop_asked = self._stop_asked, False
        if answer is not None:
            self._portal.call_soon(functools.partial(_settle, answer, (result, error, stop)))
            return
        if error is not None:
            _log.error("callback %r raised %s", fn, type(error).__name__, exc_info=error)
        if stop and self._on_stop is not None:
            self._portal.call_soon(self._on_stop)

    def _drain(self, future: concurrent.futures.Future[Any]) -> None:
        # Nothing more runs here: what arrives is refused until the call ended.
        while True:
            item = self._queue.get()
            if isinstance(item, _Done):
                if item.future is future:
                    return
                continue
            answer = item[2]
            if answer is not None:
                self._portal.call_soon(answer.cancel)


def _settle(answer: asyncio.Future[Any], outcome: object) -> None:
    if not answer.done():
        answer.set_result(outcome)


# --- SSEManager ---------------------------------------------------------------------------


def _manager_init_like(
    target: Callable[Concatenate[_client.ControlPlane, _P], object],
) -> Callable[[Callable[..., None]], Callable[Concatenate[Any, ControlPlane, _P], None]]:
    """Type the sync SSEManager's ``__init__`` as the asyncio one's, with a sync client."""

    def decorate(init: Callable[..., None]) -> Callable[Concatenate[Any, ControlPlane, _P], None]:
        init.__signature__ = _with_self(target)  # type: ignore[attr-defined]
        return init

    return decorate


class SSEManager:
    """The node's event connection, blocking: the constructor and the ``set_`` and
    ``register_`` methods of :class:`plexd.api.SSEManager`, with a blocking :meth:`run`
    in place of ``start``.

    Handlers (plain functions; an ``async def`` one runs on the background loop), the
    poll function, ``on_state_change`` and the auth-failure callback all run in the
    thread that called :meth:`run`, one at a time, in stream order; an event's handlers
    have finished before the next event is read, as in the asyncio API.
    """

    @_manager_init_like(_manager.SSEManager)
    def __init__(self, client: ControlPlane, *args: Any, **kwargs: Any) -> None:
        if not isinstance(client, ControlPlane):
            raise ArgumentTypeError(
                f"client must be a plexd.api.sync.ControlPlane, got {type(client).__name__}"
            )
        client._check_open()
        self._client = client
        self._inbox = inbox = _Inbox(client._portal, self._stop_from_handler)
        on_state_change = kwargs.get("on_state_change")
        if on_state_change is not None:
            kwargs["on_state_change"] = functools.partial(inbox.post, on_state_change)
        self._manager = _manager.SSEManager(client._client, *args, **kwargs)
        self._running = threading.Lock()

    def __repr__(self) -> str:
        return f"sync.SSEManager(client={self._client!r}, state={self.state.name})"

    @property
    def state(self) -> ConnectionState:
        """Where the connection is now."""
        return self._manager.state

    @property
    def last_event_id(self) -> str:
        """The id of the last event whose handlers finished; survives reconnects."""
        return self._manager.last_event_id

    @last_event_id.setter
    def last_event_id(self, value: str) -> None:
        self._manager.last_event_id = value

    def register_handler(self, event_type: str, handler: EventHandler) -> None:
        """Call ``handler`` in :meth:`run`'s thread for every verified event of
        ``event_type`` (thread-safe)."""
        self._manager.register_handler(event_type, self._in_run_thread(handler))

    def register_default_handler(self, handler: EventHandler) -> None:
        """Call ``handler`` in :meth:`run`'s thread for every verified event, whatever
        its type, after the handlers of its type (thread-safe)."""
        self._manager.register_default_handler(self._in_run_thread(handler))

    def set_poll_func(self, fn: Callable[[], object]) -> None:
        """What to call, in :meth:`run`'s thread, while polling (default:
        ``fetch_state(node_id)``, result discarded)."""
        inbox = self._inbox

        async def poll() -> None:
            result = await inbox.call(fn)
            if inspect.isawaitable(result):
                await result

        self._manager.set_poll_func(poll)

    def set_reconnect_intervals(self, base: float, max: float) -> None:
        """Backoff base and cap, in seconds (defaults 1 and 60)."""
        self._manager.set_reconnect_intervals(base, max)

    def set_polling_fallback(self, after: float, interval: float) -> None:
        """Poll after ``after`` seconds of continuous failure, every ``interval`` seconds."""
        self._manager.set_polling_fallback(after, interval)

    def set_on_auth_failure(self, fn: Callable[[], None]) -> None:
        """Called once on a 401 (in :meth:`run`'s thread), before :meth:`run` raises
        UnauthorizedError."""
        self._manager.set_on_auth_failure(functools.partial(self._inbox.post, fn))

    def run(self, node_id: str) -> None:
        """Run the event connection for ``node_id``, blocking, until :meth:`shutdown`,
        SIGINT or SIGTERM (when called in the main thread: the previous handlers are
        put back on return), which return None, or a permanent failure, raised as in
        ``plexd.api.SSEManager.start``."""
        self._client._check_open()
        if self._client._portal.in_loop_thread():
            raise _loop_thread_error()
        if not self._running.acquire(blocking=False):
            raise PlexdError("SSEManager.run is already running in another thread")
        try:
            with self._signals_shut_down():
                future = self._client._portal.submit(self._manager.start(node_id))
                self._inbox.serve(future, self.shutdown)
        finally:
            self._running.release()

    def shutdown(self) -> None:
        """Make :meth:`run` return promptly, from any thread (a signal handler too).

        From a handler, the event being handled counts as handled (it is not replayed
        on the next run), as with the asyncio API.
        """
        if self._inbox.stop_after_current():
            return
        # Through the loop: the engine's stop takes a lock that the thread a signal
        # interrupts might hold.
        self._client._portal.call_soon(self._manager.shutdown)

    def _stop_from_handler(self) -> None:
        # On the loop, in the task running the stream: the engine stops it after the
        # current event instead of cancelling it.
        self._manager.shutdown()

    @contextlib.contextmanager
    def _signals_shut_down(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[signal.Signals, Any] = {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            _log.info("%s received: shutting down the event stream", signal.Signals(signum).name)
            self.shutdown()

        try:
            for signum in _SHUTDOWN_SIGNALS:
                try:
                    previous[signum] = signal.signal(signum, on_signal)
                except (ValueError, OSError):  # not the main interpreter, or unsupported
                    continue
            yield
        finally:
            for signum, old in previous.items():
                # None: a handler not set from Python, which cannot be put back.
                signal.signal(signum, old if old is not None else signal.SIG_DFL)

    def _in_run_thread(self, handler: EventHandler) -> EventHandler:
        inbox = self._inbox

        async def in_run_thread(envelope: SignedEnvelope) -> None:
            result = await inbox.call(handler, envelope)
            if result is not None and inspect.isawaitable(result):
                await result

        return in_run_thread


# --- EventSource --------------------------------------------------------------------------


class EventSource(_Resource):
    """A server-sent events client for any URL, blocking: the constructor of
    :class:`plexd.api.EventSource`, iterated with ``for``::

        with EventSource("https://example.com/stream") as source:
            for event in source:
                print(event.type, event.id, event.data)

    ``on_comment`` and ``on_error`` run in the iterating thread, in stream order
    relative to the events. :meth:`close`, from any thread or a callback, ends the
    iteration (as ``aclose()`` ends an ``async for``); entering or restarting a closed
    one raises :class:`ClientClosedError`.
    """

    @_init_like(_eventsource.EventSource)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        callbacks = _Callbacks(kwargs.pop("on_comment", None), kwargs.pop("on_error", None))
        # The source knows the callbacks, not this object: a source that held this
        # object alive would keep it from ever being collected (and closed).
        self._source = _eventsource.EventSource(
            *args, on_comment=callbacks.comment, on_error=callbacks.error, **kwargs
        )
        self._hold(self._source.aclose)
        self._callbacks = callbacks
        self._inbox = callbacks.inbox = _Inbox(self._portal)

    @property
    def on_comment(self) -> Callable[[str], None] | None:
        """Called with the text of every comment line, in the iterating thread."""
        return self._callbacks.on_comment

    @on_comment.setter
    def on_comment(self, fn: Callable[[str], None] | None) -> None:
        self._callbacks.on_comment = fn

    @property
    def on_error(self) -> Callable[[BaseException], None] | None:
        """Called with every error before a reconnect or the end, in the iterating thread."""
        return self._callbacks.on_error

    @on_error.setter
    def on_error(self, fn: Callable[[BaseException], None] | None) -> None:
        self._callbacks.on_error = fn

    def __repr__(self) -> str:
        return f"sync.{self._source!r}"

    def __iter__(self) -> Iterator[SSEEvent]:
        return self

    def __next__(self) -> SSEEvent:
        if self._closed:
            # As the asyncio iteration after aclose(): close() ends a loop over it.
            raise StopIteration
        if self._portal.in_loop_thread():
            raise _loop_thread_error()
        future = self._portal.submit(_next_event(self._source))
        try:
            return self._inbox.serve(future, future.cancel)
        except StopAsyncIteration:
            raise StopIteration from None

    @property
    def last_event_id(self) -> str:
        """What ``Last-Event-ID`` carries on the next connection ("" sends none)."""
        return self._source.last_event_id

    @property
    def ready_state(self) -> Literal["connecting", "open", "closed"]:
        """``"connecting"``, ``"open"`` or ``"closed"``."""
        return self._source.ready_state

    def restart(self) -> None:
        """Drop the current connection now and reconnect at once, reporting no error."""
        self._check_open()
        self._portal.call_soon(self._source.restart)


class _Callbacks:
    """An EventSource's callbacks, handed to the iterating thread."""

    inbox: _Inbox

    def __init__(
        self,
        on_comment: Callable[[str], None] | None,
        on_error: Callable[[BaseException], None] | None,
    ) -> None:
        self.on_comment = on_comment
        self.on_error = on_error

    def comment(self, text: str) -> None:
        if self.on_comment is not None:
            self.inbox.post(self.on_comment, text)

    def error(self, error: BaseException) -> None:
        if self.on_error is not None:
            self.inbox.post(self.on_error, error)


async def _next_event(source: _eventsource.EventSource) -> SSEEvent:
    return await anext(source)
