"""Emulator, server layer: :class:`Emulator` is the :class:`~.state.EmulatorState`
served over aiohttp.web. This module owns the lifecycle (start, stop, the context
manager, :func:`serve`), TLS (the generated CA, the client side's context), the
middleware (the call record, injected status faults, the admin guard) and what a
client needs to reach it (:attr:`Emulator.url`, :meth:`Emulator.client`).

Everything is driven from the event loop the emulator runs on: call its methods
from that loop's thread (from another thread, go through
``loop.call_soon_threadsafe`` or the admin API).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from plexd.api import Config, ControlPlane

from . import faults as f
from .admin import ADMIN_PREFIX, AdminAPI
from .calls import RecordedCall, bearer_token
from .exchange import (
    MAX_REQUEST_BODY,
    RECORD_KEY,
    Rejected,
    copy_headers,
    problem_response,
)
from .node_api import EVENTS_ROUTE, NodeAPI
from .nodes import DEFAULT_ARTIFACT_SIZE
from .state import (
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_MAX_ARTIFACT_BYTES,
    DEFAULT_MAX_CALLS,
    DEFAULT_MAX_EVENTS,
    DEFAULT_MAX_RECORDED_BYTES,
    EmulatorState,
)

# How long stop() lets requests still in flight finish before cancelling them.
SHUTDOWN_TIMEOUT = 1.0
# Addresses that mean "every interface": not a host a client can reach or a certificate names.
_ANY_ADDRESS = ("", "0.0.0.0", "::")

_log = logging.getLogger("plexd.emulator")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Emulator(EmulatorState):
    """A local control plane implementing every endpoint of WIRE.md.

    The state and its Python API (nodes, publishing, faults, …) are those of
    :class:`~.state.EmulatorState`, whose other arguments ``tokens``,
    ``keepalive_interval``, ``retry_ms``, ``signing_seed``, ``artifact_size``,
    ``peer_events`` and the memory bounds (``max_events``, ``max_calls``,
    ``max_recorded_bytes``, ``max_artifact_bytes``) are.
    ``admin_token`` guards the admin API under ``/_emulator/`` (None: open to loopback
    clients only). ``tls`` serves HTTPS with a certificate from a CA generated at start,
    written to :attr:`ca_file` (in ``tls_dir``, or a temporary directory removed at
    stop). ``access_log`` logs every request to ``aiohttp.access``.
    """

    def __init__(
        self,
        *,
        tokens: Iterable[str] | None = None,
        admin_token: str | None = None,
        tls: bool = False,
        tls_dir: str | os.PathLike[str] | None = None,
        keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL,
        retry_ms: int | None = None,
        signing_seed: bytes | None = None,
        artifact_size: int = DEFAULT_ARTIFACT_SIZE,
        access_log: bool = False,
        peer_events: bool = True,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_calls: int = DEFAULT_MAX_CALLS,
        max_recorded_bytes: int = DEFAULT_MAX_RECORDED_BYTES,
        max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
    ) -> None:
        super().__init__(
            tokens=tokens,
            keepalive_interval=keepalive_interval,
            retry_ms=retry_ms,
            signing_seed=signing_seed,
            artifact_size=artifact_size,
            peer_events=peer_events,
            max_events=max_events,
            max_calls=max_calls,
            max_recorded_bytes=max_recorded_bytes,
            max_artifact_bytes=max_artifact_bytes,
        )
        self.admin_token = admin_token
        self.tls = tls
        self.ca_file: Path | None = None
        self.host = ""
        self.port = 0
        # Absolute: the CA path is printed for other processes, maybe in other directories.
        self._tls_dir = Path(tls_dir).absolute() if tls_dir is not None else None
        self._own_tls_dir: Path | None = None
        self._access_log = access_log
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"Emulator(url={self.url if self._runner else None!r}, nodes={len(self.nodes)})"

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (port 0: an ephemeral port, see :attr:`port`)."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        runner = web.AppRunner(
            self._application(),
            # A client that leaves cancels its handler: open streams end at once.
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            access_log=logging.getLogger("aiohttp.access") if self._access_log else None,
        )
        await runner.setup()
        try:
            ssl_context = self._make_tls(host) if self.tls else None
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            self._remove_own_tls_dir()
            raise
        self._runner = runner
        self.host = host
        self.port = int(runner.addresses[0][1])
        _log.info("emulator listening", extra={"url": self.url})

    def _application(self) -> web.Application:
        admin = AdminAPI(self, self.admin_token)
        app = web.Application(
            middlewares=[_middleware(self, admin)], client_max_size=MAX_REQUEST_BODY
        )
        NodeAPI(self).add_routes(app)
        admin.add_routes(app)
        return app

    async def stop(self) -> None:
        """End every stream, close the listener and every connection. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.close_all_streams()
        await runner.cleanup()
        self._remove_own_tls_dir()

    async def __aenter__(self) -> Emulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- TLS ----------------------------------------------------------------------------

    def _make_tls(self, host: str) -> ssl.SSLContext:
        from .tls import generate_certificates, server_ssl_context

        directory = self._tls_dir
        if directory is None:
            directory = self._own_tls_dir = Path(tempfile.mkdtemp(prefix="plexd-emulator-"))
        hosts = [h for h in (host, "localhost", "127.0.0.1", "::1") if h not in _ANY_ADDRESS]
        files = generate_certificates(directory, hosts)
        self.ca_file = files.ca_file
        return server_ssl_context(files)

    def _remove_own_tls_dir(self) -> None:
        if self._own_tls_dir is not None:
            shutil.rmtree(self._own_tls_dir, ignore_errors=True)
            self._own_tls_dir = None
            self.ca_file = None

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context trusting the emulator's CA (TLS mode only)."""
        from .tls import client_ssl_context

        if self.ca_file is None:
            raise RuntimeError("the emulator is not serving TLS")
        return client_ssl_context(self.ca_file)

    # --- reaching it ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL clients use (``http://127.0.0.1:<port>`` or ``https://…``)."""
        if self._runner is None:
            raise RuntimeError("the emulator is not running")
        host = self.host if self.host not in _ANY_ADDRESS else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def admin_url(self) -> str:
        """Where the admin API lives: ``<url>/_emulator/``."""
        return self.url + ADMIN_PREFIX

    def client(self, token: str = "", *, version: str = "0.0.0-emulator") -> ControlPlane:
        """A :class:`ControlPlane` for this emulator (plain HTTP), with ``token`` set.

        The caller closes it (``async with emulator.client(token) as cp:``).
        """
        client = ControlPlane(Config(base_url=self.url), version)
        client.set_auth_token(token)
        return client


def _middleware(state: EmulatorState, admin: AdminAPI) -> Middleware:
    """The middleware of every request: admin requests go through the admin guard; node
    API requests are recorded in ``state.calls``, may be answered by a status fault, and
    a :class:`Rejected` becomes its problem document."""

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path.startswith(ADMIN_PREFIX):
            return await admin.guarded(request, handler)
        node_id = request.match_info.get("node_id")
        record = RecordedCall(
            method=request.method,
            path=request.rel_url.raw_path,
            node_id=node_id,
            headers=copy_headers(request),
        )
        request[RECORD_KEY] = record
        state.record_call(record)
        try:
            # The body is the handler's to read, once it knows who is calling.
            response = _fault_response(state, request, node_id) or await handler(request)
        except Rejected as rejected:
            response = problem_response(rejected)
        except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413, …
            record.status = exc.status
            raise
        record.status = response.status
        return response

    return middleware


def _fault_response(
    state: EmulatorState, request: web.Request, node_id: str | None
) -> web.Response | None:
    """The answer of an injected status fault for this request, None when none fires."""
    if node_id is None:
        caller = state.node_for_token(bearer_token(request.headers))
        node_id = caller.id if caller else None
    is_stream = request.match_info.route.name == EVENTS_ROUTE
    answer = f.take_status(state.applicable_faults(node_id), is_stream)
    if answer is None:
        return None
    headers = {"Retry-After": answer.retry_after} if answer.retry_after is not None else None
    return problem_response(Rejected(answer.status, "injected fault", headers))


async def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    tls: bool = False,
    tokens: Iterable[str] | None = None,
    ready: Callable[[Emulator], None] | None = None,
    **options: Any,
) -> None:
    """Run an emulator until cancelled; ``ready(emulator)`` is called once it listens.

    ``options`` are the other keyword arguments of :class:`Emulator`.
    """
    emulator = Emulator(tokens=tokens, tls=tls, **options)
    await emulator.start(host, port)
    try:
        if ready is not None:
            ready(emulator)
        await asyncio.Event().wait()
    finally:
        await emulator.stop()
