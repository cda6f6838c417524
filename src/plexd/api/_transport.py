"""I/O layer, the lowest: the TLS settings and the aiohttp connector every client uses.

An idle event stream should cost little, so one process can hold thousands of
them. Three things make a TLS connection expensive in asyncio + OpenSSL 3, and
this module deals with each:

- asyncio's 256 KiB read buffer per TLS connection: connections of one thread
  share one (:func:`share_tls_read_buffer`);
- OpenSSL's 16 KiB write buffer, set up to read a TLS 1.3 server's session
  tickets and kept until the next write, which an event stream never makes
  (:func:`release_tls_write_buffer`);
- heap fragmentation: every handshake briefly needs ~32 KiB, and a thousand at
  once interleave that with what the connections keep, leaving ~19 KiB of
  unusable heap per connection. :class:`LeanConnector` runs at most
  :data:`TLS_HANDSHAKE_LIMIT` TLS connection set-ups per server at a time.

It also cleans up after the transport: :func:`scrub_transport_error` takes the
token and URL passwords out of an aiohttp exception, and
:meth:`LeanConnector.close_orphaned` (:func:`release_orphaned_session`) closes the
sockets of a connector whose event loop is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import ssl
import threading
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._config import Config, redact_url, validate_proxy
from .errors import MASK, ArgumentError, ConfigError

TLS_HANDSHAKE_LIMIT = 16
"""Concurrent TLS connection set-ups (TCP connect + handshake) per server and event loop,
by default (:func:`set_tls_handshake_limit` changes it). The handshakes run on the loop's
thread anyway: a queue this long keeps a LAN's throughput (1,000 connections come up
faster than with no limit) while the heap stays compact."""

_handshake_limit = TLS_HANDSHAKE_LIMIT
_handshake_slots: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Semaphore]
] = weakref.WeakKeyDictionary()
_handshake_slots_lock = threading.Lock()


def set_tls_handshake_limit(limit: int) -> None:
    """Allow ``limit`` concurrent TLS connection set-ups per server and event loop.

    The default, :data:`TLS_HANDSHAKE_LIMIT`, suits a LAN; over a link with a long
    round trip, a process that opens thousands of connections at once comes up
    sooner with a higher limit, at the cost of memory. 0 means no limit. Applies to
    connections opened after the call.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ArgumentError(f"limit: must be an int, not negative, got {limit!r}")
    global _handshake_limit
    with _handshake_slots_lock:
        _handshake_limit = limit
        _handshake_slots.clear()


def _handshake_slot(server: tuple[str, int]) -> asyncio.Semaphore | None:
    loop = asyncio.get_running_loop()
    with _handshake_slots_lock:
        if _handshake_limit == 0:
            return None
        slots = _handshake_slots.setdefault(loop, {})
        slot = slots.get(server)
        if slot is None:
            slot = slots[server] = asyncio.Semaphore(_handshake_limit)
        return slot


def build_ssl_context(insecure_skip_verify: bool = False) -> ssl.SSLContext:
    """The TLS settings of every connection: system CAs, TLS 1.2 minimum."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@functools.lru_cache(maxsize=2)
def shared_ssl_context(insecure_skip_verify: bool = False) -> ssl.SSLContext:
    """One :func:`build_ssl_context` per setting for the whole process.

    Loading the system CA store costs hundreds of KiB; a process that simulates
    thousands of nodes must not do it once per client.
    """
    return build_ssl_context(insecure_skip_verify)


def ssl_context_for(config: Config) -> ssl.SSLContext:
    """The TLS settings of a client of ``config``: the process's shared context, or,
    when ``config`` names a CA file or a client certificate, a context of its own with
    them loaded (:class:`ConfigError` naming the field when one cannot be used)."""
    if config.ca_file is None and config.client_cert is None:
        return shared_ssl_context(config.tls_insecure_skip_verify)
    context = build_ssl_context(config.tls_insecure_skip_verify)
    if config.ca_file is not None:
        try:
            context.load_verify_locations(cafile=config.ca_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"ca_file {os.fspath(config.ca_file)!r}: not a usable CA certificate "
                f"file (PEM): {_reason(exc)}"
            ) from None
    if config.client_cert is not None:
        _load_client_certificate(context, config.client_cert, config.client_key)
    return context


def proxy_for(config: Config, environ: Mapping[str, str] | None = None) -> str | None:
    """The proxy a client of ``config`` goes through: ``config.proxy``, else with
    ``trust_env`` the one the environment (default: ``os.environ``) names for the base
    URL's scheme (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, any case) unless
    ``NO_PROXY`` covers its host; None for a direct connection."""
    if config.proxy is not None or not config.trust_env:
        return config.proxy
    proxies = _environment_proxies(os.environ if environ is None else environ)
    url = URL(config.base_url)
    proxy = proxies.get(url.scheme.lower()) or proxies.get("all")
    if not proxy or _bypassed(url.host or "", url.port, proxies.get("no", "")):
        return None
    try:
        validate_proxy(proxy)
    except ConfigError as exc:
        raise ConfigError(f"the environment's proxy for {url.scheme}: {exc}") from None
    return proxy


def _environment_proxies(environ: Mapping[str, str]) -> dict[str, str]:
    # As curl and urllib read them: NAME_PROXY in any case, the lowercase one winning.
    found: dict[str, str] = {}
    for name, value in environ.items():
        if value and name.lower().endswith("_proxy"):
            scheme = name[: -len("_proxy")].lower()
            if name.islower() or scheme not in found:
                found[scheme] = value
    return found


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    host = host.lower().rstrip(".")
    for entry in no_proxy.replace(" ", ",").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry_host, _, entry_port = entry.rpartition(":") if _has_port(entry) else (entry, "", "")
        if entry_port and str(port) != entry_port:
            continue
        entry_host = entry_host.lstrip(".").rstrip(".").strip("[]")
        if host.strip("[]") == entry_host or host.endswith("." + entry_host):
            return True
    return False


def _has_port(entry: str) -> bool:
    # "host:8080" or "[::1]:8080"; a bare IPv6 address ("::1") has colons but no port.
    head, _, tail = entry.rpartition(":")
    return bool(head) and tail.isdigit() and (entry.count(":") == 1 or head.endswith("]"))


def _load_client_certificate(
    context: ssl.SSLContext,
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str] | None,
) -> None:
    asked_for_password = False

    def no_password() -> bytes:
        # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
        nonlocal asked_for_password
        asked_for_password = True
        return b""

    try:
        context.load_cert_chain(cert, key, password=no_password)
    except (OSError, ssl.SSLError, ValueError) as exc:
        if asked_for_password:
            reason = "the key is encrypted; give an unencrypted key (protect it by file mode)"
        else:
            reason = _reason(exc)
        key_shown = f" with client_key {os.fspath(key)!r}" if key is not None else ""
        raise ConfigError(
            f"client_cert {os.fspath(cert)!r}{key_shown}: not a usable certificate and "
            f"private key (PEM): {reason}"
        ) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# The buffer only carries bytes from recv_into() to the TLS object within one
# synchronous callback, so connections of one thread's event loop can share one
# buffer of the same size: no throughput is lost.
_tls_read_buffers = threading.local()


def share_tls_read_buffer(transport: asyncio.BaseTransport) -> None:
    """Make a TLS transport read through its thread's shared buffer."""
    # asyncio internals, guarded: another event loop (uvloop) is simply left alone.
    protocol = getattr(transport, "_ssl_protocol", None)
    buffer = getattr(protocol, "_ssl_buffer", None)
    if not isinstance(buffer, bytearray) or getattr(protocol, "max_size", 0) != len(buffer):
        return
    shared = getattr(_tls_read_buffers, "view", None)
    if shared is None or len(shared) != len(buffer):
        shared = _tls_read_buffers.view = memoryview(buffer)
        return  # this connection's own buffer becomes the shared one
    protocol._ssl_buffer = shared.obj  # type: ignore[union-attr]
    protocol._ssl_buffer_view = shared  # type: ignore[union-attr]


def release_tls_write_buffer(response: aiohttp.ClientResponse) -> None:
    """Free the TLS write buffer of a response's connection, if it has one.

    Call it once the response head has arrived: a TLS 1.3 server sends its session
    tickets before that, and reading them made OpenSSL set up the buffer. An empty
    write frees it (and sends any key-update reply that is due, as any write would).
    """
    connection = response.connection
    transport = connection.transport if connection is not None else None
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if isinstance(ssl_object, ssl.SSLObject):
        with contextlib.suppress(ssl.SSLError):
            ssl_object.write(b"")


class LeanConnector(aiohttp.TCPConnector):
    """A TCPConnector for many long-lived TLS connections: they share their thread's
    read buffer, and set-ups to one server queue for :data:`TLS_HANDSHAKE_LIMIT` slots.

    Time spent waiting for a slot counts against the connect timeout.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()

    async def _wrap_create_connection(self, *args: Any, **kwargs: Any) -> Any:
        async with _set_up_slot(kwargs):
            transport, protocol = await super()._wrap_create_connection(*args, **kwargs)
        share_tls_read_buffer(transport)
        self._transports.add(transport)
        return transport, protocol

    def close_orphaned(self) -> None:
        """Close the sockets of every connection once the event loop they ran on is closed.

        ``close()`` cannot: a transport closes through its loop. Left alone, each would
        warn (ResourceWarning) when collected. A no-op while the loop is open.
        """
        if not self._loop.is_closed():
            return
        for transport in list(self._transports):
            _close_orphaned_transport(transport)
        self._transports.clear()


async def release_orphaned_session(session: aiohttp.ClientSession) -> None:
    """Close a session whose event loop is closed: its sockets are closed directly, then
    ``close()`` only marks the session closed (it no longer touches that loop)."""
    connector = session.connector
    if isinstance(connector, LeanConnector):
        connector.close_orphaned()
    await session.close()


def _close_orphaned_transport(transport: asyncio.BaseTransport) -> None:
    # asyncio internals, guarded as in share_tls_read_buffer: a TLS transport wraps the
    # socket transport; both warn in __del__ unless marked closed.
    ssl_protocol = getattr(transport, "_ssl_protocol", None)
    if ssl_protocol is not None:
        if hasattr(transport, "_closed"):
            transport._closed = True
        transport = getattr(ssl_protocol, "_transport", None) or transport
    sock = getattr(transport, "_sock", None)
    if isinstance(sock, socket.socket):
        transport._sock = None  # type: ignore[attr-defined]
        sock.close()


@contextlib.asynccontextmanager
async def _set_up_slot(set_up: dict[str, Any]) -> AsyncIterator[None]:
    # ``set_up``: the keyword arguments aiohttp passes to _wrap_create_connection.
    request = set_up.get("req")
    slot = _handshake_slot((request.host, request.port)) if set_up.get("ssl") and request else None
    if slot is None:
        yield
        return
    timeout: aiohttp.ClientTimeout | None = set_up.get("timeout")
    async with asyncio.timeout(timeout.sock_connect if timeout else None):
        await slot.acquire()
    try:
        yield
    finally:
        slot.release()


# --- secrets in transport exceptions ------------------------------------------------

_SECRET_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie")


def scrub_transport_error(exc: BaseException) -> None:
    """Remove the token and URL passwords from ``exc`` and every exception chained to it.

    In place, so that the exception stays the ``__cause__`` (and ``__context__``) of the
    PlexdError raised for it: aiohttp's ClientResponseError carries the request's
    headers (``Authorization``) and URL in its ``request_info``, its ``history`` and its
    repr.
    """
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        _scrub_one(current)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)


def _scrub_one(exc: BaseException) -> None:
    state = getattr(exc, "__dict__", {})
    for name, value in list(state.items()):
        cleaned = _scrubbed(value)
        if cleaned is not value:
            state[name] = cleaned
    args = tuple(_scrubbed(arg) for arg in exc.args)
    if any(new is not old for new, old in zip(args, exc.args, strict=True)):
        exc.args = args


def _scrubbed(value: Any) -> Any:
    """``value`` without secrets (the same object when it holds none)."""
    if isinstance(value, aiohttp.RequestInfo):
        return _scrubbed_request_info(value)
    if isinstance(value, URL):
        # All the user information: a token may stand in the user's place.
        return value.with_user(MASK).with_password(None) if value.user else value
    if isinstance(value, str):
        cleaned = redact_url(value)
        return value if cleaned == value else cleaned
    if isinstance(value, aiohttp.ClientResponse):
        # A redirect's response: its request_info holds the headers. Only a summary stays.
        return f"<{value.status} {_scrubbed(value.url)}>"
    if isinstance(value, tuple) and any(_scrubbed(item) is not item for item in value):
        return tuple(_scrubbed(item) for item in value)
    return value


def _scrubbed_request_info(info: aiohttp.RequestInfo) -> aiohttp.RequestInfo:
    headers = CIMultiDict(info.headers)
    for name in _SECRET_HEADERS:
        if name in headers:
            headers[name] = MASK
    return aiohttp.RequestInfo(
        _scrubbed(info.url), info.method, CIMultiDictProxy(headers), _scrubbed(info.real_url)
    )
