"""ControlPlane against real loopback servers: headers, TLS, timeouts, redirects, concurrency,
transport failures and connection lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from plexd.api import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    Config,
    ConfigError,
    ControlPlane,
    HeartbeatRequest,
    HeartbeatResponse,
    PlexdError,
    RegisterRequest,
    UnauthorizedError,
    build_ssl_context,
)

JSON_CALL_HEADERS = {"Host", "User-Agent", "Accept", "Accept-Encoding"}


# --- headers ---------------------------------------------------------------------


async def test_json_call_with_body_sends_exactly_the_documented_headers(loopback: Any) -> None:
    server = await loopback()
    async with server.client() as cp:
        cp.set_auth_token("tok-1")
        await cp.heartbeat("n1", HeartbeatRequest(node_id="n1"))
    headers = server.last.headers
    assert set(headers) == JSON_CALL_HEADERS | {"Authorization", "Content-Type", "Content-Length"}
    assert headers["User-Agent"] == "plexd/1.2.3"
    assert headers["Authorization"] == "Bearer tok-1"
    assert headers["Accept"] == "application/json"
    assert headers["Accept-Encoding"] == "gzip"
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Length"] == str(len(server.last.body))


async def test_body_less_post_has_no_content_type(loopback: Any) -> None:
    server = await loopback()
    async with server.client() as cp:
        await cp.deregister("n1")
    headers = server.last.headers
    assert set(headers) <= JSON_CALL_HEADERS | {"Content-Length"}
    assert "Content-Type" not in headers
    assert headers.get("Content-Length", "0") == "0"


async def test_get_has_no_body_headers(loopback: Any) -> None:
    server = await loopback()
    async with server.client() as cp:
        await cp.fetch_state("n1")
    assert set(server.last.headers) == JSON_CALL_HEADERS


async def test_no_authorization_header_without_a_token(loopback: Any) -> None:
    server = await loopback()
    async with server.client() as cp:
        await cp.ping()
        cp.set_auth_token("tok-1")
        await cp.ping()
        cp.set_auth_token("")
        await cp.ping()
    first, second, third = server.received
    assert "Authorization" not in first.headers
    assert second.headers["Authorization"] == "Bearer tok-1"
    assert "Authorization" not in third.headers


async def test_set_auth_token_from_other_threads_never_tears_a_header(loopback: Any) -> None:
    tokens = [f"tok-{i}" for i in range(50)]
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for token in tokens:
                cp.set_auth_token(token)
                time.sleep(0)  # let the event loop's thread run between swaps

    server = await loopback()
    async with server.client() as cp:
        cp.set_auth_token(tokens[0])
        threads = [threading.Thread(target=churn) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            await asyncio.gather(*(cp.ping() for _ in range(100)))
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        cp.set_auth_token("final")
        await cp.ping()
    sent = [r.headers["Authorization"] for r in server.received]
    assert set(sent[:-1]) <= {f"Bearer {token}" for token in tokens}
    assert sent[-1] == "Bearer final"


async def test_streams_send_their_own_accept_and_ask_for_identity_encoding(loopback: Any) -> None:
    server = await loopback()
    async with server.client() as cp:
        cp.set_auth_token("tok-1")
        async with cp.connect_sse("n1"):
            pass
        async with cp.connect_sse("n1", last_event_id="ev-9"):
            pass
        async with cp.fetch_artifact("1.4.0", "linux", "amd64"):
            pass
    first, resumed, artifact = (r.headers for r in server.received)
    assert first["Accept"] == "text/event-stream"
    assert first["Cache-Control"] == "no-cache"
    assert "Last-Event-ID" not in first
    assert resumed["Last-Event-ID"] == "ev-9"
    for headers in (first, resumed, artifact):
        assert headers["User-Agent"] == "plexd/1.2.3"
        assert headers["Authorization"] == "Bearer tok-1"
        assert headers["Accept-Encoding"] == "identity"
        assert "Content-Type" not in headers


# --- TLS ---------------------------------------------------------------------------


async def test_tls_verified_against_a_trusted_ca(tls_contexts: Any, loopback: Any) -> None:
    server = await loopback(ssl_context=tls_contexts.server())
    cp = ControlPlane(Config(base_url=server.url), "1.2.3", ssl_context=tls_contexts.client())
    async with cp:
        await cp.heartbeat("n1", HeartbeatRequest())
    assert server.url.startswith("https://")
    assert server.last.raw_path == "/v1/nodes/n1/heartbeat"


async def test_untrusted_certificate_is_a_connection_error(
    tls_contexts: Any, loopback: Any
) -> None:
    server = await loopback(ssl_context=tls_contexts.server())
    async with server.client() as cp:
        with pytest.raises(APIConnectionError) as info:
            await cp.ping()
    assert not isinstance(info.value, APITimeoutError)
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectorCertificateError)
    assert "certificate verify failed" in str(info.value)
    assert server.received == []


async def test_certificate_for_another_host_name_is_refused(
    tls_contexts: Any, loopback: Any
) -> None:
    server = await loopback(ssl_context=tls_contexts.server())
    port = server.url.rsplit(":", 1)[1]
    cp = ControlPlane(
        Config(base_url=f"https://localhost:{port}"),
        "1.2.3",
        ssl_context=tls_contexts.client(),
    )
    async with cp:
        with pytest.raises(APIConnectionError):
            await cp.ping()
    assert server.received == []


async def test_insecure_skip_verify_works_and_warns_once(
    tls_contexts: Any, loopback: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await loopback(ssl_context=tls_contexts.server())
    cp = server.client(tls_insecure_skip_verify=True)
    async with cp:
        await cp.ping()
        await cp.ping()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "plexd.api"
    assert "verification is disabled" in warnings[0].getMessage()
    assert len(server.received) == 2


def test_verifying_client_is_warning_free(
    tls_contexts: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ControlPlane(Config(base_url="https://cp.example"), "1.2.3")
    # A given verifying context wins over tls_insecure_skip_verify.
    ControlPlane(
        Config(base_url="https://cp.example", tls_insecure_skip_verify=True),
        "1.2.3",
        ssl_context=tls_contexts.client(),
    )
    assert caplog.records == []


def test_a_given_context_that_does_not_verify_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    ControlPlane(Config(base_url="https://cp.example"), "1.2.3", ssl_context=context)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_tls_context_verifies_and_requires_tls_1_2() -> None:
    context = build_ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert build_ssl_context(insecure_skip_verify=True).verify_mode == ssl.CERT_NONE


# --- timeouts -------------------------------------------------------------------------
# (One attempt per call in these tests, max_retries=0: what is under test is how an attempt
# ends. tests/test_retry.py tries again.)


async def test_connect_timeout_when_the_listener_never_accepts(full_backlog: Any) -> None:
    config = Config(
        base_url=f"http://{full_backlog}", connect_timeout=0.2, request_timeout=60, max_retries=0
    )
    async with ControlPlane(config, "1.2.3") as cp:
        with pytest.raises(APITimeoutError, match="connect") as info:
            await cp.ping()
    assert isinstance(info.value.__cause__, aiohttp.ConnectionTimeoutError)


async def test_connect_timeout_covers_a_tls_handshake_that_never_completes(
    silent_server: Any,
) -> None:
    url = f"https://{silent_server.address}"
    config = Config(base_url=url, connect_timeout=0.2, request_timeout=60, max_retries=0)
    async with ControlPlane(config, "1.2.3") as cp:
        with pytest.raises(APITimeoutError, match="connect") as info:
            await cp.ping()
    assert isinstance(info.value.__cause__, aiohttp.ConnectionTimeoutError)


@contextlib.asynccontextmanager
async def stalling_server(
    loopback: Any, send_head: bool
) -> AsyncIterator[tuple[Any, asyncio.Event]]:
    """A server that stalls (before answering, or after half a body) until released."""
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        if not send_head:
            await release.wait()
            return web.json_response({})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 100
        await response.prepare(request)
        await response.write(b'{"reconcile":')
        await release.wait()
        return response

    server = await loopback(stall)
    try:
        yield server, release
    finally:
        release.set()


@pytest.mark.parametrize("send_head", [False, True], ids=["no-answer", "half-a-body"])
async def test_request_timeout_bounds_the_whole_call(loopback: Any, send_head: bool) -> None:
    async with (
        stalling_server(loopback, send_head) as (server, release),
        server.client(request_timeout=0.2, max_retries=0) as cp,
    ):
        with pytest.raises(APITimeoutError) as info:
            await cp.heartbeat("n1", HeartbeatRequest())
        release.set()
    assert isinstance(info.value.__cause__, TimeoutError)
    assert "POST /v1/nodes/n1/heartbeat" in str(info.value)


async def test_sse_stream_is_not_cut_by_request_timeout(loopback: Any) -> None:
    async def slow_events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": first\n\n")
        await asyncio.sleep(0.5)
        await response.write(b": second\n\n")
        return response

    server = await loopback(slow_events)
    async with (
        server.client(request_timeout=0.2) as cp,
        cp.connect_sse("n1") as stream,
    ):
        body = b"".join([chunk async for chunk in stream.iter_chunks()])
    assert body == b": first\n\n: second\n\n"


async def test_artifact_read_that_stalls_times_out(loopback: Any) -> None:
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"\x7fELF")
        await release.wait()
        return response

    server = await loopback(stall)
    async with server.client(request_timeout=0.2) as cp:
        async with cp.fetch_artifact("1.4.0", "linux", "amd64") as artifact:
            assert artifact.content_length == 1000
            with pytest.raises(APITimeoutError):
                async for _chunk in artifact.iter_chunks():
                    pass
        release.set()


# --- redirects -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_is_not_followed_and_the_token_stays_home(
    loopback: Any, status: int
) -> None:
    elsewhere = await loopback()

    async def redirect(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": elsewhere.url + request.raw_path})

    server = await loopback(redirect)
    async with server.client() as cp:
        cp.set_auth_token("tok-1")
        with pytest.raises(APIError) as info:
            await cp.heartbeat("n1", HeartbeatRequest())
        with pytest.raises(APIError):
            async with cp.connect_sse("n1"):
                pass
    assert type(info.value) is APIError
    assert info.value.status_code == status
    assert len(server.received) == 2
    assert elsewhere.received == []


# --- concurrency and lifecycle ---------------------------------------------------------


async def test_200_concurrent_calls_on_one_client(loopback: Any) -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        node_id = request.match_info["tail"].split("/")[2]
        return web.json_response({"reconcile": node_id.endswith("7"), "rotate_keys": True})

    server = await loopback(echo)
    async with server.client() as cp:
        answers = await asyncio.gather(
            *(cp.heartbeat(f"n{i}", HeartbeatRequest(node_id=f"n{i}")) for i in range(200))
        )
    assert answers == [
        HeartbeatResponse(reconcile=str(i).endswith("7"), rotate_keys=True) for i in range(200)
    ]
    assert sorted(r.raw_path for r in server.received) == sorted(
        f"/v1/nodes/n{i}/heartbeat" for i in range(200)
    )


async def wait_until_closed(server: Any) -> int:
    """Let the server notice closed connections; returns how many are still open."""
    for _ in range(500):
        if server.open_connections == 0:
            break
        await asyncio.sleep(0.01)
    return server.open_connections


async def test_leaving_async_with_releases_every_connection(loopback: Any) -> None:
    server = await loopback()
    async with server.client() as cp:
        await asyncio.gather(*(cp.ping() for _ in range(20)))
        assert server.open_connections > 0
    assert await wait_until_closed(server) == 0
    with pytest.raises(PlexdError, match="closed"):
        await cp.ping()
    await cp.aclose()


async def test_aclose_without_any_call_and_twice_is_fine() -> None:
    cp = ControlPlane(Config(base_url="http://127.0.0.1:9"), "1.2.3")
    await cp.aclose()
    await cp.aclose()


async def test_leaving_a_stream_early_closes_its_connection(loopback: Any) -> None:
    disconnected = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:
                await response.write(b"data: x\n\n")
                await asyncio.sleep(0.01)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            disconnected.set()
        return response

    server = await loopback(endless)
    async with server.client() as cp:
        async with cp.connect_sse("n1") as stream:
            assert stream.status == 200
            assert stream.headers["Content-Type"] == "text/event-stream"
            async for chunk in stream.iter_chunks():
                assert chunk.startswith(b"data: x")
                break
        await asyncio.wait_for(disconnected.wait(), 10)
        assert await wait_until_closed(server) == 0


async def test_stream_error_status_is_mapped_on_entry(loopback: Any) -> None:
    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.Response(status=401, text="token revoked")

    server = await loopback(refuse)
    async with server.client() as cp:
        with pytest.raises(UnauthorizedError, match="token revoked"):
            async with cp.connect_sse("n1"):
                pytest.fail("entered the block of a 401 stream")
        with pytest.raises(UnauthorizedError):
            async with cp.fetch_artifact("1", "linux", "amd64"):
                pytest.fail("entered the block of a 401 download")
    assert await wait_until_closed(server) == 0


async def test_artifact_streams_its_bytes(loopback: Any) -> None:
    blob = bytes(range(256)) * 4096

    async def artifact(request: web.Request) -> web.StreamResponse:
        return web.Response(body=blob, content_type="application/octet-stream")

    server = await loopback(artifact)
    async with (
        server.client() as cp,
        cp.fetch_artifact("1.4.0", "linux", "amd64") as download,
    ):
        assert download.status == 200
        assert download.content_length == len(blob)
        chunks = [chunk async for chunk in download.iter_chunks()]
    assert b"".join(chunks) == blob


# --- transport failures never leak the transport's exceptions ------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_connection_refused_is_a_connection_error() -> None:
    config = Config(base_url=f"http://127.0.0.1:{free_port()}", max_retries=0)
    async with ControlPlane(config, "1.2.3") as cp:
        with pytest.raises(APIConnectionError) as info:
            await cp.ping()
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectorError)
    assert "GET /v1/ping" in str(info.value)


async def test_unknown_host_is_a_connection_error() -> None:
    config = Config(base_url="http://plexd-test.invalid", request_timeout=5, max_retries=0)
    async with ControlPlane(config, "1.2.3") as cp:
        with pytest.raises(APIConnectionError) as info:
            await cp.ping()
    assert isinstance(info.value.__cause__, aiohttp.ClientError | TimeoutError)


async def test_connection_reset_is_a_connection_error() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = Config(base_url=f"http://127.0.0.1:{port}", max_retries=0)
        async with ControlPlane(config, "1.2.3") as cp:
            with pytest.raises(APIConnectionError) as info:
                await cp.heartbeat("n1", HeartbeatRequest())
    finally:
        server.close()
        await server.wait_closed()
    assert not isinstance(info.value, APITimeoutError)
    assert isinstance(info.value.__cause__, aiohttp.ClientError | OSError)


@pytest.mark.parametrize(
    "response",
    [
        b"this is not HTTP\r\n\r\n",
        b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"reconcile":',
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"rec',
        b"",
    ],
    ids=["garbage", "short-body", "cut-chunked", "closed"],
)
async def test_broken_http_is_a_connection_error(raw_server: Any, response: bytes) -> None:
    address = await raw_server(response)
    async with ControlPlane(Config(base_url=f"http://{address}", max_retries=0), "1.2.3") as cp:
        with pytest.raises(APIConnectionError) as info:
            await cp.heartbeat("n1", HeartbeatRequest())
    assert isinstance(info.value.__cause__, aiohttp.ClientError | OSError | EOFError)


# --- secrets ----------------------------------------------------------------------------------


async def test_no_secret_in_repr_str_or_log(
    loopback: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/register"):
            return web.json_response(
                {
                    "node_id": "n1",
                    "node_secret_key": "NODE-SECRET",
                    "peers": [{"psk": "PSK-SECRET"}],
                }
            )
        if "/secrets/" in request.path:
            return web.json_response({"key": "db", "ciphertext": "CIPHER-SECRET"})
        return web.Response(status=401, text="who are you")

    server = await loopback(answer)
    cp = server.client(tls_insecure_skip_verify=True)
    async with cp:
        cp.set_auth_token("TOKEN-SECRET")
        registered = await cp.register(RegisterRequest(token="BOOTSTRAP-SECRET"))
        secret = await cp.fetch_secret("n1", "db")
        with pytest.raises(UnauthorizedError) as info:
            await cp.ping()
        shown = [repr(cp), str(cp), repr(registered), str(registered), repr(secret)]
        shown += [str(info.value), repr(info.value)]
    assert registered.node_secret_key == "NODE-SECRET"
    assert secret.ciphertext == "CIPHER-SECRET"
    shown += [record.getMessage() for record in caplog.records]
    shown += [repr(record.__dict__) for record in caplog.records]
    for text in shown:
        assert "SECRET" not in text


def test_credentials_in_the_base_url_are_refused_without_showing_them() -> None:
    config = Config(base_url="https://user:hunter2@cp.example/api")
    assert "hunter2" not in repr(config)
    with pytest.raises(ConfigError, match="user or password") as info:
        ControlPlane(config, "1.0")
    assert "hunter2" not in str(info.value)
