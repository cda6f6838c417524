"""The options of a client: Config.from_env, a proxy (given or from the environment),
mutual TLS with a client certificate, a CA file, and the package logger's defaults."""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from yarl import URL

from conftest import ForwardProxy
from plexd.api import (
    CONFIG_ENV_VARIABLES,
    APIConnectionError,
    Config,
    ConfigError,
    ControlPlane,
)
from plexd.api._transport import proxy_for

# --- Config.from_env --------------------------------------------------------------------


def test_from_env_reads_every_plexd_variable(tmp_path: Path) -> None:
    environ = {
        "PLEXD_BASE_URL": "https://cp.example",
        "PLEXD_TOKEN": "node-secret",
        "PLEXD_CA_FILE": "/etc/ca.pem",
        "PLEXD_CLIENT_CERT": "/etc/node.pem",
        "PLEXD_CLIENT_KEY": "/etc/node.key",
        "PLEXD_PROXY": "http://proxy.example:3128",
        "PLEXD_TRUST_ENV": "yes",
        "PLEXD_TIMEOUT": "2.5",
        "PLEXD_MAX_RETRIES": "5",
        "HOME": "/root",
    }
    config = Config.from_env(environ)
    assert config == Config(
        base_url="https://cp.example",
        token="node-secret",
        ca_file="/etc/ca.pem",
        client_cert="/etc/node.pem",
        client_key="/etc/node.key",
        proxy="http://proxy.example:3128",
        trust_env=True,
        request_timeout=2.5,
        max_retries=5,
    )
    assert set(CONFIG_ENV_VARIABLES.values()) == {k for k in environ if k.startswith("PLEXD_")}
    assert "node-secret" not in repr(config)


def test_from_env_takes_the_defaults_for_unset_and_empty_variables() -> None:
    config = Config.from_env({"PLEXD_BASE_URL": "http://127.0.0.1:8080", "PLEXD_TOKEN": ""})
    assert config == Config(base_url="http://127.0.0.1:8080")


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLEXD_BASE_URL", "http://from-os-environ.example")
    assert Config.from_env().base_url == "http://from-os-environ.example"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PLEXD_BASE_URL", ""),
        ("PLEXD_TIMEOUT", "soon"),
        ("PLEXD_MAX_RETRIES", "2.5"),
        ("PLEXD_TRUST_ENV", "maybe"),
    ],
)
def test_from_env_names_the_variable_it_cannot_read(variable: str, value: str) -> None:
    environ = {"PLEXD_BASE_URL": "http://cp.example", variable: value}
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        Config.from_env(environ)


async def test_a_client_of_from_env_sends_the_token(loopback: Any) -> None:
    server = await loopback()
    config = Config.from_env({"PLEXD_BASE_URL": server.url, "PLEXD_TOKEN": "t0k3n"})
    async with ControlPlane(config, "1.0") as client:
        await client.ping()
    assert server.last.headers["Authorization"] == "Bearer t0k3n"


def test_a_token_no_header_can_carry_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError, match=r"^token: ") as caught:
        ControlPlane(Config(base_url="http://cp.example", token="se\ncret"), "1.0")
    assert "se\ncret" not in str(caught.value)


# --- a forward proxy ----------------------------------------------------------------------


async def test_a_proxy_carries_plain_http_requests(loopback: Any, proxy: ForwardProxy) -> None:
    server = await loopback()
    async with server.client(proxy=proxy.url) as client:
        await client.ping()
    assert proxy.requests == [f"GET {server.url}/v1/ping HTTP/1.1"]
    assert len(server.received) == 1


async def test_https_goes_through_a_connect_tunnel(
    loopback: Any, proxy: ForwardProxy, authority: trustme.CA, tmp_path: Path
) -> None:
    server = await loopback(ssl_context=server_context(authority))
    ca_file = write_ca(authority, tmp_path)
    async with server.client(proxy=proxy.url, ca_file=ca_file) as client:
        client.set_auth_token("tunnelled-token")
        await client.ping()
    port = URL(server.url).port
    assert proxy.requests == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"]
    # The token went inside the tunnel, never to the proxy.
    assert "tunnelled-token" not in proxy.seen[0]
    assert server.last.headers["Authorization"] == "Bearer tunnelled-token"


async def test_a_proxy_password_goes_to_the_proxy_only_and_is_never_shown(
    loopback: Any, proxy: ForwardProxy, authority: trustme.CA, tmp_path: Path
) -> None:
    server = await loopback(ssl_context=server_context(authority))
    proxy_url = proxy.url.replace("http://", "http://user:hunter2@")
    ca_file = write_ca(authority, tmp_path)
    async with server.client(proxy=proxy_url, ca_file=ca_file) as client:
        assert "hunter2" not in repr(client.config)
        await client.ping()
    assert "Proxy-Authorization: Basic dXNlcjpodW50ZXIy" in proxy.seen[0]
    assert "Proxy-Authorization" not in server.last.headers


async def test_trust_env_takes_the_proxy_from_the_environment(
    loopback: Any, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await loopback()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with server.client() as direct:
        await direct.ping()
    assert proxy.requests == []
    async with server.client(trust_env=True) as client:
        await client.ping()
    assert proxy.requests == [f"GET {server.url}/v1/ping HTTP/1.1"]
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    async with server.client(trust_env=True) as bypassing:
        await bypassing.ping()
    assert len(proxy.requests) == 1


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"HTTPS_PROXY": "http://p:1"}, "http://p:1"),
        ({"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1"}, "http://lower:1"),
        ({"ALL_PROXY": "http://all:1"}, "http://all:1"),
        ({"HTTP_PROXY": "http://plain-only:1"}, None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"}, None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".example.com"}, None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "cp.example.com:8443"}, None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "cp.example.com:9999"}, "http://p:1"),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "ample.com, other"}, "http://p:1"),
    ],
)
def test_the_environments_proxy_for_the_base_url(
    environ: dict[str, str], expected: str | None
) -> None:
    config = Config(base_url="https://cp.example.com:8443", trust_env=True)
    assert proxy_for(config, environ) == expected


@pytest.mark.parametrize("proxy_url", ["socks5://p:1080", "http://", "http://p:0", "p:3128"])
def test_an_unusable_proxy_is_a_config_error(proxy_url: str) -> None:
    with pytest.raises(ConfigError, match=r"^proxy: "):
        ControlPlane(Config(base_url="http://cp.example", proxy=proxy_url), "1.0")


# --- mutual TLS and a CA file ---------------------------------------------------------------


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


def server_context(authority: trustme.CA, *, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        authority.configure_trust(context)
    return context


def write_ca(authority: trustme.CA, directory: Path) -> str:
    path = directory / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return str(path)


def write_client_cert(authority: trustme.CA, directory: Path) -> tuple[str, str]:
    leaf = authority.issue_cert("node-1@plexd.example")
    cert, key = directory / "node.pem", directory / "node.key"
    for index, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(str(cert), append=index > 0)
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


async def test_a_client_certificate_is_shown_to_a_server_that_requires_one(
    loopback: Any, authority: trustme.CA, tmp_path: Path
) -> None:
    seen: list[Any] = []

    async def who(request: web.Request) -> web.StreamResponse:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        seen.append(ssl_object.getpeercert() if ssl_object else None)
        return web.json_response({})

    server = await loopback(who, ssl_context=server_context(authority, require_client_cert=True))
    ca_file = write_ca(authority, tmp_path)
    cert, key = write_client_cert(authority, tmp_path)
    async with server.client(ca_file=ca_file, client_cert=cert, client_key=key) as client:
        await client.ping()
    [peer] = seen
    assert ("email", "node-1@plexd.example") in peer["subjectAltName"]
    async with server.client(ca_file=ca_file, max_retries=0) as anonymous:
        with pytest.raises(APIConnectionError):
            await anonymous.ping()
    assert len(seen) == 1


async def test_a_ca_file_is_trusted_besides_the_system_store(
    loopback: Any, authority: trustme.CA, tmp_path: Path
) -> None:
    server = await loopback(ssl_context=server_context(authority))
    async with server.client(ca_file=write_ca(authority, tmp_path)) as client:
        await client.ping()
    async with server.client(max_retries=0) as untrusting:
        with pytest.raises(APIConnectionError, match="certificate"):
            await untrusting.ping()


def test_unusable_certificate_files_are_config_errors(
    authority: trustme.CA, tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"^ca_file "):
        ControlPlane(Config(base_url="https://cp.example", ca_file=missing), "1.0")
    with pytest.raises(ConfigError, match=r"^client_cert "):
        ControlPlane(Config(base_url="https://cp.example", client_cert=missing), "1.0")
    with pytest.raises(ConfigError, match=r"^client_key: given without client_cert"):
        ControlPlane(Config(base_url="https://cp.example", client_key=missing), "1.0")
    with pytest.raises(ConfigError, match="ssl_context"):
        ControlPlane(
            Config(base_url="https://cp.example", ca_file=write_ca(authority, tmp_path)),
            "1.0",
            ssl_context=ssl.create_default_context(),
        )


def test_an_encrypted_client_key_is_refused_without_a_prompt(
    authority: trustme.CA, tmp_path: Path
) -> None:
    cert, key = write_client_cert(authority, tmp_path)
    private = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    Path(key).write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    config = Config(base_url="https://cp.example", client_cert=cert, client_key=key)
    with pytest.raises(ConfigError, match="encrypted"):
        ControlPlane(config, "1.0")


# --- logging ------------------------------------------------------------------------------


def test_the_package_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("plexd.api").handlers
    assert any(isinstance(handler, logging.NullHandler) for handler in handlers)


LOG_SCRIPT = """
import logging, plexd.api
log = logging.getLogger("plexd.api")
log.debug("a debug line")
log.info("an info line")
log.warning("a warning line")
"""


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        ("debug", ["a debug line", "an info line", "a warning line"]),
        ("INFO", ["an info line", "a warning line"]),
        ("", []),
        ("verbose", []),
    ],
)
def test_plexd_log_turns_on_logging_to_stderr(level: str, shown: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOG_SCRIPT],
        env={"PLEXD_LOG": level, "PYTHONPATH": ":".join(sys.path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    lines = [line for line in result.stderr.splitlines() if "line" in line]
    assert [line.rsplit(": ", 1)[1] for line in lines] == shown
    assert all("plexd.api" in line for line in lines)
