"""Facade layer: :class:`ControlPlane`, the client of the control plane: its session,
the JSON request pipeline (:meth:`ControlPlane._call` / :meth:`ControlPlane._send`)
and one method per endpoint of WIRE.md. Response reading and error mapping are
``_http``'s; the paths are ``_paths``'.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gzip
import logging
import random
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar, overload

import aiohttp
import msgspec
from yarl import URL

from . import _types as t
from ._artifact import ArtifactDownload, RetrySettings, check_sha256_argument
from ._artifact import download as download_artifact
from ._checks import check_client_arguments, is_header_value
from ._config import Config
from ._http import (
    EVENT_STREAM,
    TRANSPORT_ERRORS,
    ArtifactStream,
    EventStreamResponse,
    StreamingResponse,
    failure_of,
    map_transport_error,
    raise_for_status,
    read_capped_body,
    transport_failure,
)
from ._paths import artifact_path, execution_path, node_path, path_segment
from ._retry import (
    Failure,
    FailureKind,
    attempt_timeout,
    log_retry,
    retry_delay,
    time_left,
)
from ._session import LoopBoundSession
from ._transport import LeanConnector, proxy_for, ssl_context_for
from ._wire import JSON_DECODE_ERRORS, JSON_ENCODE_ERRORS, check_times
from .errors import (
    APIError,
    ArgumentError,
    ArgumentTypeError,
    ConfigError,
    PlexdError,
    ResponseError,
    printable,
)

T = TypeVar("T")

# API.md: "A JSON request body over 1024 bytes is gzip-compressed".
GZIP_THRESHOLD = 1024
# API.md: "A JSON response body, gzip or not, is never read past 10 MiB (decompressed)".
MAX_RESPONSE_SIZE = 10 * 1024 * 1024

_JSON = "application/json"
_NO_BODY: Final = object()
# The result type of a call whose answer is any 2xx: its body is not read.
_UNREAD: Final = object()
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_CONTENT_TYPE = ("Content-Type",)


@dataclasses.dataclass(frozen=True)
class _JSONHeaders:
    """The header sets of JSON calls for one token, built once per token, not per call."""

    no_body: Mapping[str, str]
    body: Mapping[str, str]
    gzip_body: Mapping[str, str]


class ControlPlane:
    """An asyncio client of the Plexsphere control plane.

    One aiohttp session per client; use it as ``async with ControlPlane(...) as cp``
    or call :meth:`aclose` to release every connection.

    ``ssl_context``, when given, is used for every TLS connection instead of the one
    built from ``config`` (system CAs, TLS 1.2 minimum), e.g. to trust a private CA;
    ``tls_insecure_skip_verify`` is then ignored. A client that does not verify the
    server's certificate logs one warning when it is constructed. ``config`` also
    says how failed calls are retried (``max_retries``), which proxy to go through,
    and which CA file and client certificate to load.
    """

    def __init__(
        self,
        config: Config,
        version: str,
        logger: logging.Logger | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ):
        check_client_arguments(config, version, ssl_context)
        config = dataclasses.replace(config)
        config.apply_defaults()
        config.validate()
        if ssl_context is not None and (config.ca_file or config.client_cert):
            raise ConfigError(
                "ca_file, client_cert: load them into the ssl_context you pass "
                "(load_verify_locations, load_cert_chain), or pass no ssl_context"
            )
        self.config = config
        self._log = logger or logging.getLogger("plexd.api")
        self._base = str(URL(config.base_url.rstrip("/")))
        self._user_agent = f"plexd/{version}"
        self._token_lock = threading.Lock()
        self._token = ""
        self._json_headers = self._build_json_headers(self._token)
        self.set_auth_token(config.token)
        self._ssl = ssl_context or ssl_context_for(config)
        self._proxy = proxy_for(config)
        self._max_retries = config.max_retries
        # Every retry wait is drawn from this; a test may replace it.
        self._random: Callable[[], float] = random.random
        self._session = LoopBoundSession(self._new_session, "ControlPlane")
        # aiohttp's total timeout bounds a JSON call, body read included; a stream has
        # none (its reader bounds it) and request_timeout bounds only its head.
        self._call_timeout = aiohttp.ClientTimeout(
            total=config.request_timeout, sock_connect=config.connect_timeout
        )
        self._stream_timeout = aiohttp.ClientTimeout(sock_connect=config.connect_timeout)
        self._encoder = msgspec.json.Encoder()
        self._decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
        if self._ssl.verify_mode == ssl.CERT_NONE:
            self._log.warning(
                "TLS certificate verification is disabled; "
                "the control plane's identity is not checked",
                extra={"base_url": self._base},
            )

    def __repr__(self) -> str:
        # Config.validate() refused user information: the base URL holds no secret.
        return f"ControlPlane(base_url={self._base!r})"

    # --- lifecycle --------------------------------------------------------

    async def __aenter__(self) -> ControlPlane:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session and every connection it holds. Safe to call twice.

        From another event loop than the client's: when the client's loop is closed its
        connections are released at once; when it runs in another thread the session is
        closed there. A client's loop that is open but not running cannot be reached:
        :class:`EventLoopError`.
        """
        await self._session.aclose()

    def set_auth_token(self, token: str) -> None:
        """Set the bearer token of later requests (thread-safe; "" sends none).

        Raises :class:`ConfigError` for a token that cannot go into a header (CR, LF,
        another control character): it would fail every request.
        """
        if not isinstance(token, str):
            raise ConfigError(f"token: must be a str, got {type(token).__name__}")
        if not is_header_value(token):
            # Never echo the token: the message may be logged.
            raise ConfigError(
                "token: holds a character an HTTP header cannot carry (a control "
                "character such as CR, LF, NUL or DEL, or a lone surrogate); token not set"
            )
        headers = self._build_json_headers(token)
        with self._token_lock:
            self._token = token
            self.config.token = token
            self._json_headers = headers

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=LeanConnector(ssl=self._ssl),
            timeout=self._call_timeout,
            auto_decompress=False,
            # Proxies from the environment were resolved once (proxy_for): aiohttp's
            # trust_env would also read ~/.netrc and add a second Authorization.
            trust_env=False,
            proxy=self._proxy,
            # The control plane authenticates by token; cookies would only be state
            # that leaks between calls (and memory, for thousands of clients).
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    def _headers(self, accept: str, token: str | None = None) -> dict[str, str]:
        headers = {"User-Agent": self._user_agent, "Accept": accept}
        token = self._token if token is None else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _build_json_headers(self, token: str) -> _JSONHeaders:
        no_body = self._headers(_JSON, token)
        no_body["Accept-Encoding"] = "gzip"
        body = {**no_body, "Content-Type": _JSON}
        return _JSONHeaders(no_body, body, {**body, "Content-Encoding": "gzip"})

    def _url(self, path: str) -> URL:
        # Every path comes percent-encoded (``_paths``, :meth:`_caller_path`): yarl takes
        # it as is, so an encoded "%2E%2E" segment stays a name.
        return URL(self._base + path, encoded=True)

    def _caller_path(self, path: str) -> str:
        # A path given to get_json/post_json: checked, then encoded and normalised as
        # yarl does it for the whole URL, and taken back relative to the base URL.
        if not isinstance(path, str):
            raise ArgumentTypeError(f"path must be a str, got {type(path).__name__}")
        if not is_header_value(path):
            raise ArgumentError(f"path {path!r}: holds a control character")
        try:
            url = str(URL(self._base + "/" + path.lstrip("/")))
        except ValueError as exc:
            raise ArgumentError(f"path {path!r}: {exc}") from None
        if not url.startswith(self._base):
            raise ArgumentError(f"path {path!r}: leads out of the base URL")
        return url[len(self._base) :]

    def _decoder(self, result_type: Any) -> msgspec.json.Decoder[Any]:
        decoder = self._decoders.get(result_type)
        if decoder is None:
            decoder = self._decoders[result_type] = msgspec.json.Decoder(result_type)
        return decoder

    # --- the request pipeline --------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Any,
        result_type: type[T],
        max_retries: int | None = None,
        idempotent: bool = True,
    ) -> Awaitable[T]:
        """One JSON call whose answer is decoded into ``result_type``."""
        return self._request(method, path, body, result_type, max_retries, idempotent)

    def _send(
        self,
        method: str,
        path: str,
        body: Any = _NO_BODY,
        max_retries: int | None = None,
        idempotent: bool = True,
    ) -> Awaitable[None]:
        """One JSON call whose answer is any 2xx; its body is not read."""
        return self._request(method, path, body, _UNREAD, max_retries, idempotent)

    async def _request(
        self,
        method: str,
        path: str,
        body: Any,
        result_type: Any,
        max_retries: int | None = None,
        idempotent: bool = True,
    ) -> Any:
        """Every call goes through here: encoding, gzip, headers, status, transport
        errors, decoding, retries. ``result_type`` None decodes any JSON value (None for
        an empty body); ``_UNREAD`` reads nothing. (:meth:`_call` and :meth:`_send` give
        it types at no cost: they return this coroutine, they add no frame.)

        A failure the retry rules (``_retry``) allow is tried again, up to
        ``max_retries`` times (None: the config's), all within
        ``request_timeout * (max_retries + 1)``; a call that is not ``idempotent`` only
        when the server surely did not act on it.
        """
        started = time.monotonic()
        retries = self._max_retries if max_retries is None else _checked_retries(max_retries)
        call = f"{method} {path}"
        json_headers = self._json_headers
        data = None
        skip_auto_headers = None
        if body is _NO_BODY:
            headers = json_headers.no_body
            if method in _BODY_METHODS:
                # aiohttp would label a body-less POST application/octet-stream. Only
                # here: a skip list puts aiohttp on a slower path for every request.
                skip_auto_headers = _CONTENT_TYPE
        else:
            data = self._encode(body, call)
            headers = json_headers.body
            if len(data) > GZIP_THRESHOLD:
                data = gzip.compress(data, compresslevel=6)
                headers = json_headers.gzip_body
        session = await self._session.get()
        url = self._url(path)
        timeout = self._call_timeout
        attempt = 1
        while True:
            try:
                async with session.request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    skip_auto_headers=skip_auto_headers,
                    allow_redirects=False,
                    timeout=timeout,
                ) as response:
                    await raise_for_status(response, method, path)
                    if result_type is _UNREAD:
                        return None
                    raw = await read_capped_body(response, MAX_RESPONSE_SIZE, call)
                    content_type = response.headers.get("Content-Type", "")
                    break
            except TRANSPORT_ERRORS as exc:
                error = map_transport_error(exc, call)
                delay = self._retry_delay(
                    transport_failure(exc), attempt, retries, idempotent, started
                )
                if delay is None:
                    raise error from exc
            except APIError as exc:
                failure = Failure(FailureKind.STATUS, exc.status_code, exc.retry_after)
                delay = self._retry_delay(failure, attempt, retries, idempotent, started)
                if delay is None:
                    raise
                error = exc
            except PlexdError:
                raise
            except ValueError as exc:
                # aiohttp refusing what it was given (a URL, a header value): our checks
                # should have caught it first.
                raise ArgumentError(f"{call}: cannot send the request: {exc}") from None
            attempt += 1
            log_retry(self._log, call, error, attempt, retries + 1, delay)
            await asyncio.sleep(delay)
            # Closed while waiting: ClientClosedError, not aiohttp's RuntimeError.
            session = await self._session.get()
            timeout = self._attempt_timeout(started, retries)
        return self._decode(raw, result_type, call, content_type)

    def _retry_delay(
        self, failure: Failure, attempt: int, retries: int, idempotent: bool, started: float
    ) -> float | None:
        config = self.config
        return retry_delay(
            failure,
            attempt=attempt,
            max_retries=retries,
            idempotent=idempotent,
            remaining=time_left(started, time.monotonic(), config.request_timeout, retries),
            random=self._random,
            base=config.retry_base_delay,
            cap=config.retry_max_delay,
        )

    def _attempt_timeout(self, started: float, retries: int) -> aiohttp.ClientTimeout:
        # A retry gets what is left of the call's time, at most request_timeout.
        config = self.config
        left = time_left(started, time.monotonic(), config.request_timeout, retries)
        if left >= config.request_timeout:
            return self._call_timeout
        total = attempt_timeout(left, config.request_timeout)
        return aiohttp.ClientTimeout(total=total, sock_connect=min(config.connect_timeout, total))

    def _encode(self, body: Any, call: str) -> bytes:
        try:
            check_times(body)
            return self._encoder.encode(body)
        except RecursionError:
            raise ArgumentError(f"{call}: cannot encode request body: nested too deep") from None
        except JSON_ENCODE_ERRORS as exc:
            raise ArgumentError(f"{call}: cannot encode request body: {exc}") from None

    def _decode(self, raw: bytes, result_type: Any, call: str, content_type: str) -> Any:
        name = getattr(result_type, "__name__", "value")
        if not raw.strip():
            if result_type is None:
                return None
            raise ResponseError(f"{call}: empty response body, expected a JSON {name}")
        try:
            return self._decoder(Any if result_type is None else result_type).decode(raw)
        except msgspec.ValidationError as exc:
            detail = printable(str(exc))
            raise ResponseError(f"{call}: response is not a valid {name}: {detail}") from None
        except JSON_DECODE_ERRORS as exc:
            shown = f" (Content-Type: {printable(content_type)})" if content_type else ""
            raise ResponseError(f"{call}: response is not valid JSON{shown}: {exc}") from None

    @contextlib.asynccontextmanager
    async def _stream(
        self,
        path: str,
        headers: dict[str, str],
        make_response: Callable[[aiohttp.ClientResponse, str], StreamingResponse],
        retries: int = 0,
    ) -> AsyncIterator[Any]:
        """A streaming GET; its opening (up to the response head) is tried again
        ``retries`` times as a request call is, never once a byte went to the caller."""
        call = f"GET {path}"
        # The chunks go to the caller as they arrive: ask for them unencoded.
        headers["Accept-Encoding"] = "identity"
        started = time.monotonic()
        timeout = self.config.request_timeout
        attempt = 1
        while True:
            try:
                response = await self._open_stream(path, headers, call, timeout)
                break
            except PlexdError as error:
                failure = failure_of(error)
                delay = self._retry_delay(failure, attempt, retries, True, started)
                if delay is None:
                    raise
                failed = error
            attempt += 1
            log_retry(self._log, call, failed, attempt, retries + 1, delay)
            await asyncio.sleep(delay)
            left = time_left(started, time.monotonic(), self.config.request_timeout, retries)
            timeout = attempt_timeout(left, self.config.request_timeout)
        try:
            yield make_response(response, call)
        finally:
            response.close()

    async def _open_stream(
        self, path: str, headers: dict[str, str], call: str, wait_at_most: float
    ) -> aiohttp.ClientResponse:
        session = await self._session.get()
        try:
            async with asyncio.timeout(wait_at_most):
                response = await session.get(
                    self._url(path),
                    headers=headers,
                    allow_redirects=False,
                    timeout=self._stream_timeout,
                )
                try:
                    await raise_for_status(response, "GET", path)
                except BaseException:
                    response.close()
                    raise
        except TRANSPORT_ERRORS as exc:
            raise map_transport_error(exc, call) from exc
        return response

    # --- generic calls ----------------------------------------------------

    # Every endpoint method takes ``max_retries``: None uses ``Config.max_retries``, 0
    # makes one attempt only.

    async def ping(self, *, max_retries: int | None = None) -> None:
        """Check that the control plane answers (``GET /v1/ping``)."""
        await self._send("GET", "/v1/ping", _NO_BODY, max_retries)

    async def get_json(
        self, path: str, result_type: type[T] | None = None, *, max_retries: int | None = None
    ) -> Any:
        """GET ``path`` (relative to the base URL) and decode the JSON answer.

        With ``result_type`` None the decoded JSON value is returned (None for an empty body).
        """
        path = self._caller_path(path)
        return await self._request("GET", path, _NO_BODY, result_type, max_retries)

    async def post_json(
        self,
        path: str,
        body: Any,
        result_type: type[T] | None = None,
        *,
        max_retries: int | None = None,
    ) -> Any:
        """POST ``body`` as JSON to ``path`` and decode the JSON answer.

        A ``body`` of None sends no body at all (as Go's client does for a nil body).
        Retried only when the server surely did not act on it (see the README).
        """
        payload = _NO_BODY if body is None else body
        path = self._caller_path(path)
        return await self._request("POST", path, payload, result_type, max_retries, False)

    # --- the endpoints of WIRE.md -----------------------------------------

    async def register(
        self, req: t.RegisterRequest, *, max_retries: int | None = None
    ) -> t.RegisterResponse:
        """Register this node with a bootstrap token."""
        return await self._call("POST", "/v1/register", req, t.RegisterResponse, max_retries, False)

    async def heartbeat(
        self, node_id: str, req: t.HeartbeatRequest, *, max_retries: int | None = None
    ) -> t.HeartbeatResponse:
        """Report liveness; the answer says whether to reconcile or rotate keys."""
        path = node_path(node_id, "/heartbeat")
        return await self._call("POST", path, req, t.HeartbeatResponse, max_retries)

    async def deregister(self, node_id: str, *, max_retries: int | None = None) -> None:
        """Remove this node from the control plane."""
        path = node_path(node_id, "/deregister")
        await self._send("POST", path, _NO_BODY, max_retries, False)

    async def fetch_state(self, node_id: str, *, max_retries: int | None = None) -> t.StateResponse:
        """The node's full desired state."""
        path = node_path(node_id, "/state")
        return await self._call("GET", path, _NO_BODY, t.StateResponse, max_retries)

    def connect_sse(
        self, node_id: str, last_event_id: str = ""
    ) -> contextlib.AbstractAsyncContextManager[EventStreamResponse]:
        """Open the node's event stream; the error mapping happens on entry.

        The stream is not cut by ``request_timeout``: the reader bounds it with an idle
        timeout. It is not retried here: reconnecting is the caller's (``SSEManager``,
        ``EventSource``), with its own backoff.
        """
        path = node_path(node_id, "/events")
        if not isinstance(last_event_id, str) or not is_header_value(last_event_id):
            raise ArgumentError(
                f"last_event_id {last_event_id!r}: not a valid header value (control character)"
            )
        headers = self._headers(EVENT_STREAM)
        headers["Cache-Control"] = "no-cache"
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        make_response = functools.partial(
            EventStreamResponse, read_timeout=self.config.sse_idle_timeout, decode_content=True
        )
        return self._stream(path, headers, make_response)

    async def rotate_keys(
        self, req: t.KeyRotateRequest, *, max_retries: int | None = None
    ) -> t.KeyRotateResponse:
        """Announce the node's new public key."""
        return await self._call(
            "POST", "/v1/keys/rotate", req, t.KeyRotateResponse, max_retries, False
        )

    async def update_capabilities(
        self, node_id: str, caps: t.CapabilitiesPayload, *, max_retries: int | None = None
    ) -> None:
        """Publish what the node can do."""
        await self._send("PUT", node_path(node_id, "/capabilities"), caps, max_retries)

    async def report_endpoint(
        self, node_id: str, req: t.EndpointReport, *, max_retries: int | None = None
    ) -> t.EndpointResponse:
        """Report the node's public endpoint; the answer has the peers' endpoints."""
        path = node_path(node_id, "/endpoint")
        return await self._call("PUT", path, req, t.EndpointResponse, max_retries)

    async def report_drift(
        self, node_id: str, req: t.DriftReport, *, max_retries: int | None = None
    ) -> None:
        """Report corrections made to drifted state."""
        await self._send("POST", node_path(node_id, "/drift"), req, max_retries)

    async def fetch_secret(
        self, node_id: str, key: str, *, max_retries: int | None = None
    ) -> t.SecretResponse:
        """Fetch one encrypted secret."""
        path = node_path(node_id, "/secrets/", path_segment(key, "key"))
        return await self._call("GET", path, _NO_BODY, t.SecretResponse, max_retries)

    async def sync_reports(
        self, node_id: str, req: t.ReportSyncRequest, *, max_retries: int | None = None
    ) -> None:
        """Sync the node's reports."""
        await self._send("POST", node_path(node_id, "/report"), req, max_retries)

    async def ack_execution(
        self,
        node_id: str,
        execution_id: str,
        req: t.ExecutionAck,
        *,
        max_retries: int | None = None,
    ) -> None:
        """Acknowledge an action request."""
        path = execution_path(node_id, execution_id, "/ack")
        await self._send("POST", path, req, max_retries, False)

    async def report_result(
        self,
        node_id: str,
        execution_id: str,
        req: t.ExecutionResult,
        *,
        max_retries: int | None = None,
    ) -> None:
        """Report the outcome of an execution."""
        path = execution_path(node_id, execution_id, "/result")
        await self._send("POST", path, req, max_retries, False)

    async def report_metrics(
        self, node_id: str, batch: Sequence[t.MetricPoint], *, max_retries: int | None = None
    ) -> None:
        """Send a batch of metric points."""
        await self._send("POST", node_path(node_id, "/metrics"), _batch(batch), max_retries)

    async def report_logs(
        self, node_id: str, batch: Sequence[t.LogEntry], *, max_retries: int | None = None
    ) -> None:
        """Send a batch of log entries."""
        await self._send("POST", node_path(node_id, "/logs"), _batch(batch), max_retries)

    async def report_audit(
        self, node_id: str, batch: Sequence[t.AuditEntry], *, max_retries: int | None = None
    ) -> None:
        """Send a batch of audit entries."""
        await self._send("POST", node_path(node_id, "/audit"), _batch(batch), max_retries)

    @overload
    def fetch_artifact(
        self, version: str, os: str, arch: str, *, max_retries: int | None = None
    ) -> contextlib.AbstractAsyncContextManager[ArtifactStream]: ...

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
    ) -> Awaitable[ArtifactDownload]: ...

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
    ) -> contextlib.AbstractAsyncContextManager[ArtifactStream] | Awaitable[ArtifactDownload]:
        """Download a plexd binary; each read is bounded by ``request_timeout``.

        Without ``dest``: an async context manager of the streaming response (its
        opening retried as a request call is; a broken body is the caller's). With
        ``dest``: a coroutine that downloads to that file and returns an
        :class:`ArtifactDownload`. The file appears only once complete and its SHA-256
        matched ``sha256`` (hex) or, when not given, the server's ``X-Checksum-SHA256``
        (both, when both are there; :class:`ChecksumError` otherwise); until then it is
        ``<dest>.part``. A download that breaks off keeps ``<dest>.part`` and the next one
        resumes it with ``Range``. ``progress(done, total)`` is called with the bytes
        written so far and the artifact's size (None when unknown) as they arrive. A
        failed attempt is retried as any call is (``max_retries``), resuming.
        """
        path = artifact_path(version, os, arch)
        retries = self._max_retries if max_retries is None else _checked_retries(max_retries)
        if dest is None:
            if sha256 is not None or progress is not None:
                raise ArgumentError("fetch_artifact: sha256 and progress need dest=")
            return self._open_artifact(path, {}, retries)
        if not isinstance(dest, str | PathLike):
            raise ArgumentTypeError(f"dest: must be a path, got {type(dest).__name__}")
        if progress is not None and not callable(progress):
            raise ArgumentTypeError(f"progress: must be callable, got {type(progress).__name__}")
        settings = RetrySettings(
            retries,
            self.config.retry_base_delay,
            self.config.retry_max_delay,
            self._random,
            self._log,
        )
        return download_artifact(
            functools.partial(self._open_artifact, path),
            Path(dest),
            sha256=check_sha256_argument(sha256),
            progress=progress,
            retry=settings,
            what=f"GET {path}",
        )

    def _open_artifact(
        self, path: str, extra_headers: Mapping[str, str], retries: int = 0
    ) -> contextlib.AbstractAsyncContextManager[ArtifactStream]:
        # retries: of the opening; a download to a file retries whole attempts instead.
        headers = self._headers("application/octet-stream, */*")
        headers.update(extra_headers)
        make_response = functools.partial(ArtifactStream, read_timeout=self.config.request_timeout)
        return self._stream(path, headers, make_response, retries)


def _checked_retries(max_retries: object) -> int:
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ArgumentError(f"max_retries: must be an int, not negative, got {max_retries!r}")
    return max_retries


def _batch(batch: Sequence[Any]) -> list[Any]:
    try:
        return list(batch)
    except TypeError:
        raise ArgumentTypeError(f"batch must be a sequence, got {type(batch).__name__}") from None
