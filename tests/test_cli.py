"""The plexd-api command, run as a subprocess (python -m plexd.cli) against an emulator
started in the test process; plus its output helpers, in process."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from nacl.signing import SigningKey

from conftest import ForwardProxy
from plexd.api import (
    APIConnectionError,
    APITimeoutError,
    ConfigError,
    ForbiddenError,
    NotFoundError,
    Peer,
    PlexdError,
    RegisterResponse,
    ServerError,
    StateResponse,
    UnauthorizedError,
    sign_envelope,
)
from plexd.cli.errors import (
    EXIT_AUTH,
    EXIT_CONNECTION,
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    error_line,
    exit_code_for,
)
from plexd.cli.output import MASK, event_line, is_secret_key, json_document, masked_payload
from plexd.emulator import Emulator

# Bounds every wait on a subprocess, so that a hanging command fails instead of blocking.
WAIT = 20.0
BOOTSTRAP = "boot-token"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return msgspec.json.decode(self.stdout)


def cli_env(**variables: str) -> dict[str, str]:
    """The test process's environment without any PLEXD_* setting, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLEXD_")}
    env.update(variables)
    return env


async def start_cli(*args: str, env: Mapping[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "plexd.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
    )


async def finish(process: asyncio.subprocess.Process) -> Result:
    try:
        async with asyncio.timeout(WAIT):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.communicate()
        raise
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def run_cli(*args: str, env: Mapping[str, str]) -> Result:
    return await finish(await start_cli(*args, env=env))


def assert_one_error_line(result: Result) -> str:
    """The command failed with exactly one line on stderr and no traceback."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("plexd-api: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(tokens=[BOOTSTRAP]) as running:
        yield running


@pytest.fixture
def base_env(emulator: Emulator) -> dict[str, str]:
    return cli_env(PLEXD_BASE_URL=emulator.url, PLEXD_BOOTSTRAP_TOKEN=BOOTSTRAP)


@pytest.fixture
def node_env(emulator: Emulator, base_env: dict[str, str]) -> dict[str, str]:
    node_id, token = emulator.register_node("cli-node")
    return {
        **base_env,
        "PLEXD_NODE_ID": node_id,
        "PLEXD_TOKEN": token,
        "PLEXD_VERIFY_KEY": emulator.signing_public_key,
    }


def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- requests ---------------------------------------------------------------------------


async def test_ping_reports_the_control_plane_is_up(
    emulator: Emulator, base_env: dict[str, str]
) -> None:
    result = await run_cli("ping", env=base_env)
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.strip() == f"{emulator.url} is up"


async def test_register_masks_the_token_in_json_and_prints_it_once_on_stderr(
    emulator: Emulator, base_env: dict[str, str]
) -> None:
    result = await run_cli("register", "--hostname", "web-1", "-m", "role=web", env=base_env)
    assert result.returncode == EXIT_OK, result.stderr
    registration = msgspec.json.decode(result.stdout, type=RegisterResponse)
    assert registration.node_secret_key == MASK
    assert registration.signing_public_key == emulator.signing_public_key
    node = emulator.node(registration.node_id)
    assert (node.hostname, node.metadata) == ("web-1", {"role": "web"})
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", result.stderr, re.MULTILINE))
    assert exports == {
        "PLEXD_NODE_ID": registration.node_id,
        "PLEXD_TOKEN": node.token,
        "PLEXD_VERIFY_KEY": emulator.signing_public_key,
    }
    assert (result.stdout + result.stderr).count(node.token) == 1


async def test_register_with_show_secrets_prints_the_token_in_the_json_only(
    emulator: Emulator, base_env: dict[str, str]
) -> None:
    result = await run_cli("register", "--show-secrets", env=base_env)
    assert result.returncode == EXIT_OK, result.stderr
    registration = msgspec.json.decode(result.stdout, type=RegisterResponse)
    token = emulator.node(registration.node_id).token
    assert registration.node_secret_key == token
    assert token not in result.stderr


async def test_register_with_env_file_writes_the_settings_to_a_private_file(
    emulator: Emulator, base_env: dict[str, str], tmp_path: Path
) -> None:
    env_file = tmp_path / "node.env"
    env_file.write_text("old contents")
    env_file.chmod(0o644)
    result = await run_cli("register", "--env-file", str(env_file), env=base_env)
    assert result.returncode == EXIT_OK, result.stderr
    registration = msgspec.json.decode(result.stdout, type=RegisterResponse)
    token = emulator.node(registration.node_id).token
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", env_file.read_text(), re.MULTILINE))
    assert exports == {
        "PLEXD_NODE_ID": registration.node_id,
        "PLEXD_TOKEN": token,
        "PLEXD_VERIFY_KEY": emulator.signing_public_key,
    }
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert token not in result.stdout + result.stderr
    assert str(env_file) in result.stderr


async def test_register_with_env_file_still_shows_its_error(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**base_env, "PLEXD_BOOTSTRAP_TOKEN": "not-the-token"}
    env_file = tmp_path / "node.env"
    result = await run_cli("register", "--env-file", str(env_file), env=env)
    assert result.returncode == EXIT_AUTH
    assert "401" in assert_one_error_line(result)
    assert not env_file.exists()


async def test_register_with_a_wrong_bootstrap_token_exits_3(base_env: dict[str, str]) -> None:
    env = {**base_env, "PLEXD_BOOTSTRAP_TOKEN": "not-the-token"}
    result = await run_cli("register", env=env)
    assert result.returncode == EXIT_AUTH
    assert "401" in assert_one_error_line(result)


async def test_register_rejects_metadata_without_equals_sign_as_usage_error(
    base_env: dict[str, str],
) -> None:
    result = await run_cli("register", "-m", "no-equals", env=base_env)
    assert result.returncode == EXIT_USAGE
    assert "KEY=VALUE" in assert_one_error_line(result)


async def test_heartbeat_is_recorded_and_prints_the_answer(
    emulator: Emulator, node_env: dict[str, str]
) -> None:
    node = emulator.node(node_env["PLEXD_NODE_ID"])
    node.reconcile = True
    result = await run_cli("heartbeat", "--status", "degraded", "--uptime", "5m", env=node_env)
    assert result.returncode == EXIT_OK, result.stderr
    assert result.json() == {"reconcile": True, "rotate_keys": False}
    [heartbeat] = node.heartbeats
    assert (heartbeat.node_id, heartbeat.status, heartbeat.uptime) == (node.id, "degraded", "5m")


async def test_state_prints_the_node_state_as_json(
    emulator: Emulator, node_env: dict[str, str]
) -> None:
    emulator.register_node("peer-node")
    emulator.put_data(node_env["PLEXD_NODE_ID"], "config", {"level": 3})
    result = await run_cli("state", env=node_env)
    assert result.returncode == EXIT_OK, result.stderr
    state = msgspec.json.decode(result.stdout, type=StateResponse)
    assert [peer.id for peer in state.peers] == ["node-2"]
    assert state.signing_keys is not None
    assert state.signing_keys.current == emulator.signing_public_key
    assert msgspec.json.decode(bytes(state.data[0].payload)) == {"level": 3}


async def test_secret_ciphertext_is_masked_unless_show_secrets(
    emulator: Emulator, node_env: dict[str, str]
) -> None:
    stored = emulator.put_secret(node_env["PLEXD_NODE_ID"], "db-password", "pa55word")
    masked, shown = await asyncio.gather(
        run_cli("secret", "db-password", env=node_env),
        run_cli("secret", "db-password", "--show-secrets", env=node_env),
    )
    assert masked.returncode == shown.returncode == EXIT_OK
    assert masked.json() == {
        "key": "db-password",
        "ciphertext": MASK,
        "nonce": stored.nonce,
        "version": 1,
    }
    assert stored.ciphertext not in masked.stdout + masked.stderr
    assert shown.json() == {**masked.json(), "ciphertext": stored.ciphertext}  # type: ignore[dict-item]


async def test_deregister_removes_the_node_and_its_token_stops_working(
    emulator: Emulator, node_env: dict[str, str]
) -> None:
    result = await run_cli("deregister", env=node_env)
    assert result.returncode == EXIT_OK, result.stderr
    assert node_env["PLEXD_NODE_ID"] not in emulator.nodes
    again = await run_cli("state", env=node_env)
    assert again.returncode == EXIT_AUTH


# --- failures: one line on stderr, the documented exit code -----------------------------


async def test_wrong_token_exits_3_with_one_line_and_no_traceback(
    node_env: dict[str, str],
) -> None:
    result = await run_cli("state", "--token", "wrong-token", env=node_env)
    assert result.returncode == EXIT_AUTH
    line = assert_one_error_line(result)
    assert "HTTP 401" in line and "PLEXD_TOKEN" in line
    assert "wrong-token" not in line
    assert result.stdout == ""


async def test_another_nodes_id_exits_3_forbidden(
    emulator: Emulator, node_env: dict[str, str]
) -> None:
    other, _ = emulator.register_node("other")
    result = await run_cli("heartbeat", "--node-id", other, env=node_env)
    assert result.returncode == EXIT_AUTH
    assert "HTTP 403" in assert_one_error_line(result)


async def test_missing_secret_exits_4(node_env: dict[str, str]) -> None:
    result = await run_cli("secret", "no-such-key", env=node_env)
    assert result.returncode == EXIT_NOT_FOUND
    assert "HTTP 404" in assert_one_error_line(result)


async def test_unreachable_url_exits_5() -> None:
    # PLEXD_MAX_RETRIES (Config.from_env): one attempt, no waits before the answer.
    env = cli_env(PLEXD_BASE_URL=f"http://127.0.0.1:{free_port()}", PLEXD_MAX_RETRIES="0")
    result = await run_cli("ping", env=env)
    assert result.returncode == EXIT_CONNECTION
    assert "PLEXD_BASE_URL" in assert_one_error_line(result)


async def test_missing_base_url_is_a_usage_error() -> None:
    result = await run_cli("ping", env=cli_env())
    assert result.returncode == EXIT_USAGE
    assert "--base-url" in assert_one_error_line(result)


async def test_missing_token_is_a_usage_error(base_env: dict[str, str]) -> None:
    result = await run_cli("state", "--node-id", "node-1", env=base_env)
    assert result.returncode == EXIT_USAGE
    assert "--token" in assert_one_error_line(result)


async def test_an_option_replaces_its_variable(emulator: Emulator) -> None:
    env = cli_env(PLEXD_BASE_URL=f"http://127.0.0.1:{free_port()}")
    result = await run_cli("ping", "--base-url", emulator.url, env=env)
    assert result.returncode == EXIT_OK, result.stderr


async def test_the_cli_reads_the_rest_of_the_config_from_the_environment(
    emulator: Emulator, base_env: dict[str, str], proxy: ForwardProxy
) -> None:
    # PLEXD_PROXY has no option: Config.from_env reads it for the CLI.
    result = await run_cli("ping", env={**base_env, "PLEXD_PROXY": proxy.url})
    assert result.returncode == EXIT_OK, result.stderr
    assert proxy.requests == [f"GET {emulator.url}/v1/ping HTTP/1.1"]


async def test_base_url_with_another_scheme_is_a_usage_error() -> None:
    result = await run_cli("ping", "--base-url", "ftp://example.com", env=cli_env())
    assert result.returncode == EXIT_USAGE
    assert "scheme" in assert_one_error_line(result)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://user:hunter2@127.0.0.1:9",
        "http://user:hunter2@",
        "http://user:hunter2@/path",
        "http://hunter2@127.0.0.1:9",
        "http://user:hunter2@:80",
    ],
)
async def test_ping_never_prints_the_base_url_password(base_url: str) -> None:
    result = await run_cli("ping", "--base-url", base_url, env=cli_env())
    assert result.returncode == EXIT_USAGE
    line = assert_one_error_line(result)
    assert "hunter2" not in result.stdout + result.stderr, line


async def test_ping_with_a_query_in_the_base_url_is_a_usage_error(emulator: Emulator) -> None:
    result = await run_cli("ping", "--base-url", f"{emulator.url}?tenant=7", env=cli_env())
    assert result.returncode == EXIT_USAGE
    assert "query" in assert_one_error_line(result)


async def test_server_error_exits_1(emulator: Emulator, node_env: dict[str, str]) -> None:
    emulator.set_faults(node_env["PLEXD_NODE_ID"], status=500, status_scope="all")
    result = await run_cli("state", env=node_env)
    assert result.returncode == EXIT_FAILURE
    assert "HTTP 500" in assert_one_error_line(result)


async def test_help_documents_exit_codes_and_environment() -> None:
    result = await run_cli("--help", env=cli_env())
    assert result.returncode == EXIT_OK
    for text in ("3  authentication refused", "5  connection failed", "PLEXD_VERIFY_KEY"):
        assert text in result.stdout


async def run_python(code: str) -> Result:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    return await finish(process)


async def test_missing_click_or_rich_prints_the_install_hint() -> None:
    result = await run_python(
        "import sys; sys.modules['rich'] = None\n"
        "from plexd.cli import main\n"
        "raise SystemExit(main(['--help']))"
    )
    assert result.returncode == EXIT_FAILURE
    assert "pip install 'plexd-api[cli]'" in assert_one_error_line(result)


async def test_importing_plexd_needs_neither_click_nor_rich() -> None:
    result = await run_python(
        "import sys, plexd.api, plexd.cli, plexd.cli.demo\n"
        "print(sorted({'click', 'rich'} & set(sys.modules)))"
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.strip() == "[]"


# --- watch ------------------------------------------------------------------------------


def parse_lines(stdout: str) -> list[dict[str, object]]:
    return [msgspec.json.decode(line) for line in stdout.splitlines()]


async def test_watch_prints_one_json_line_per_verified_event(
    emulator: Emulator, node_env: dict[str, str]
) -> None:
    node_id = node_env["PLEXD_NODE_ID"]
    published = emulator.publish(node_id, "peer_added", b'{\n  "id": "peer-1",\n  "n": 1\n}')
    emulator.publish(node_id, "policy_updated", {"id": "policy-1"})
    result = await run_cli("watch", "--last-event-id", "0", "--count", "2", env=node_env)
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.count("\n") == 2
    first, second = parse_lines(result.stdout)
    assert first == {
        "event_type": "peer_added",
        "event_id": "1",
        "issued_at": published.envelope.issued_at_text,
        "payload": {"id": "peer-1", "n": 1},
    }
    assert (second["event_type"], second["event_id"]) == ("policy_updated", "2")
    assert second["payload"] == {"id": "policy-1"}


SECRET_PAYLOAD = {
    "id": "peer-1",
    "psk": "psk-5ecret",
    "nested": [{"ciphertext": "c1pher", "key": "db-password"}],
    "bootstrapToken": "t0ken",
    "node_secret_key": "n0de",
    "empty_token": "",
    "public_key": "not-a-secret",
}


async def test_watch_masks_secret_fields_in_payloads_unless_show_secrets(
    emulator: Emulator, node_env: dict[str, str]
) -> None:
    emulator.publish(node_env["PLEXD_NODE_ID"], "peer_added", SECRET_PAYLOAD)
    masked = await run_cli("watch", "--last-event-id", "0", "--count", "1", env=node_env)
    assert masked.returncode == EXIT_OK, masked.stderr
    (line,) = parse_lines(masked.stdout)
    assert line["payload"] == {
        "id": "peer-1",
        "psk": MASK,
        "nested": [{"ciphertext": MASK, "key": "db-password"}],
        "bootstrapToken": MASK,
        "node_secret_key": MASK,
        "empty_token": "",
        "public_key": "not-a-secret",
    }
    for secret in ("psk-5ecret", "c1pher", "t0ken", "n0de"):
        assert secret not in masked.stdout + masked.stderr
    shown = await run_cli(
        "watch", "--last-event-id", "0", "--count", "1", "--show-secrets", env=node_env
    )
    assert shown.returncode == EXIT_OK, shown.stderr
    assert parse_lines(shown.stdout)[0]["payload"] == SECRET_PAYLOAD


async def read_lines(stream: asyncio.StreamReader | None, count: int) -> list[str]:
    assert stream is not None
    async with asyncio.timeout(WAIT):
        return [(await stream.readline()).decode() for _ in range(count)]


async def test_watch_follows_key_rotation_and_skips_a_tampered_event(
    emulator: Emulator, node_env: dict[str, str]
) -> None:
    node_id = node_env["PLEXD_NODE_ID"]
    emulator.publish(node_id, "peer_added", {"id": "peer-1"})
    emulator.rotate_signing_key(transition=0)
    emulator.publish(node_id, "peer_removed", {"id": "peer-1"})
    process = await start_cli("watch", "--last-event-id", "0", "--count", "4", env=node_env)
    try:
        printed = await read_lines(process.stdout, 3)
        # Corrupts the next event the stream writes: the first one published from here.
        emulator.set_faults(node_id, corrupt_signatures=1)
        emulator.publish(node_id, "policy_updated", {"id": "tampered"})
        emulator.publish(node_id, "rotate_keys", {})
    finally:
        result = await finish(process)
    assert result.returncode == EXIT_OK, result.stderr
    lines = parse_lines("".join(printed) + result.stdout)
    assert [(line["event_type"], line["event_id"]) for line in lines] == [
        ("peer_added", "1"),
        ("signing_key_rotated", "2"),
        ("peer_removed", "3"),
        ("rotate_keys", "5"),
    ]
    [warning] = result.stderr.splitlines()
    assert warning.startswith("plexd-api: warning: skipping unverifiable policy_updated event 4")


async def test_watch_with_an_unrelated_key_prints_nothing_and_warns_per_event(
    emulator: Emulator, node_env: dict[str, str]
) -> None:
    node_id = node_env["PLEXD_NODE_ID"]
    emulator.publish_many(node_id, [("peer_added", {}), ("peer_removed", {})])
    unrelated = base64.b64encode(SigningKey.generate().verify_key.encode()).decode()
    process = await start_cli(
        "watch", "--last-event-id", "0", "--verify-key", unrelated, env=node_env
    )
    try:
        warnings = await read_lines(process.stderr, 2)
        process.send_signal(signal.SIGINT)
    finally:
        result = await finish(process)
    assert result.returncode == EXIT_OK
    assert result.stdout == ""
    for event_id, warning in zip(("1", "2"), warnings, strict=True):
        assert warning.startswith("plexd-api: warning: skipping unverifiable ")
        assert f"event '{event_id}': signature does not verify" in warning


async def test_watch_resumes_after_a_dropped_stream_without_loss_or_duplicates(
    emulator: Emulator, node_env: dict[str, str]
) -> None:
    node_id = node_env["PLEXD_NODE_ID"]
    emulator.publish_many(node_id, [("peer_added", {"n": n}) for n in range(3)])
    process = await start_cli(
        "watch", "--last-event-id", "0", "--count", "6",
        "--reconnect-delay", "0.05", "--max-reconnect-delay", "0.1",
        env=node_env,
    )  # fmt: skip
    try:
        await read_lines(process.stdout, 3)
        emulator.disconnect_streams(node_id)
        emulator.publish_many(node_id, [("peer_removed", {"n": n}) for n in range(3)])
    finally:
        result = await finish(process)
    assert result.returncode == EXIT_OK, result.stderr
    ids = [line["event_id"] for line in parse_lines(result.stdout)]
    assert ids == ["4", "5", "6"]  # after the 3 lines read above
    resumed = [call for call in emulator.calls if call.path.endswith("/events")][-1]
    assert resumed.headers.get("Last-Event-ID") == "3"


async def test_watch_exits_0_on_sigint(emulator: Emulator, node_env: dict[str, str]) -> None:
    node_id = node_env["PLEXD_NODE_ID"]
    process = await start_cli("watch", env=node_env)
    try:
        async with asyncio.timeout(WAIT):
            await emulator.wait_for_streams(node_id)
        emulator.publish(node_id, "peer_added", {"id": "peer-1"})
        [line] = await read_lines(process.stdout, 1)
        assert msgspec.json.decode(line)["event_type"] == "peer_added"
        process.send_signal(signal.SIGINT)
    finally:
        result = await finish(process)
    assert result.returncode == EXIT_OK
    assert result.stderr == ""


async def test_watch_needs_a_verify_key_or_no_verify(node_env: dict[str, str]) -> None:
    env = {k: v for k, v in node_env.items() if k != "PLEXD_VERIFY_KEY"}
    result = await run_cli("watch", env=env)
    assert result.returncode == EXIT_USAGE
    assert "--verify-key" in assert_one_error_line(result)


async def test_watch_with_a_malformed_verify_key_is_a_usage_error(
    node_env: dict[str, str],
) -> None:
    result = await run_cli("watch", "--verify-key", "not base64!", env=node_env)
    assert result.returncode == EXIT_USAGE
    assert "--verify-key" in assert_one_error_line(result)


async def test_watch_with_a_revoked_token_exits_3(
    emulator: Emulator, node_env: dict[str, str]
) -> None:
    emulator.remove_node(node_env["PLEXD_NODE_ID"])
    result = await run_cli("watch", env=node_env)
    assert result.returncode == EXIT_AUTH
    assert "HTTP 401" in assert_one_error_line(result)


# --- artifact -----------------------------------------------------------------------------


def listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def test_artifact_is_downloaded_and_its_sha256_checked(
    emulator: Emulator, node_env: dict[str, str], tmp_path: Path
) -> None:
    target = tmp_path / "plexd"
    result = await run_cli("artifact", "1.2.3", "linux", "amd64", "-o", str(target), env=node_env)
    assert result.returncode == EXIT_OK, result.stderr
    blob = emulator.artifact("1.2.3", "linux", "amd64")
    assert target.read_bytes() == blob
    assert hashlib.sha256(blob).hexdigest() in result.stdout
    assert listing(tmp_path) == ["plexd"]


async def test_artifact_with_a_wrong_checksum_is_not_saved(
    node_env: dict[str, str], tmp_path: Path
) -> None:
    target = tmp_path / "plexd"
    wrong = "0" * 64
    args = ("artifact", "1.2.3", "linux", "arm64", "-o", str(target), "--sha256", wrong)
    result = await run_cli(*args, env=node_env)
    assert result.returncode == EXIT_FAILURE
    assert wrong in assert_one_error_line(result)
    assert listing(tmp_path) == []


async def test_artifact_corrupted_in_transit_is_not_saved(
    emulator: Emulator, node_env: dict[str, str], tmp_path: Path
) -> None:
    blob = emulator.artifact("2.0.0", "linux", "amd64")
    emulator.artifacts[("2.0.0", "linux", "amd64")] = blob[:-1] + bytes([blob[-1] ^ 1])
    # The emulator announces the checksum of what it sends: give the true one explicitly.
    args = ("artifact", "2.0.0", "linux", "amd64", "-o", str(tmp_path / "plexd"))
    result = await run_cli(*args, "--sha256", hashlib.sha256(blob).hexdigest(), env=node_env)
    assert result.returncode == EXIT_FAILURE
    assert "SHA-256" in assert_one_error_line(result)
    assert listing(tmp_path) == []


# --- the emulator command -------------------------------------------------------------------


async def read_until(process: asyncio.subprocess.Process, last: str) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(WAIT):
        while not lines or lines[-1] != last:
            line = await process.stdout.readline()
            assert line, f"the emulator ended early: {lines}"
            lines.append(line.decode().rstrip("\n"))
    return lines


async def test_emulator_command_serves_until_sigint_and_exits_0(tmp_path: Path) -> None:
    process = await start_cli(
        "emulator", "--port", "0", "--tls", "--tls-dir", str(tmp_path),
        "--bootstrap-token", "one", "--bootstrap-token", "two",
        env=cli_env(),
    )  # fmt: skip
    try:
        lines = await read_until(process, "press Ctrl-C to stop")
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", "\n".join(lines), re.MULTILINE))
        assert exports["PLEXD_BASE_URL"].startswith("https://127.0.0.1:")
        assert exports["PLEXD_CA_FILE"] == str(tmp_path / "ca.pem")
        assert [line for line in lines if line.startswith("bootstrap token")] == [
            "bootstrap token: one",
            "bootstrap token: two",
        ]
        assert exports["PLEXD_BOOTSTRAP_TOKEN"] == "one"
        env = cli_env(**{**exports, "PLEXD_BOOTSTRAP_TOKEN": "two"})
        registered = await run_cli("register", env=env)
        assert registered.returncode == EXIT_OK, registered.stderr
        untrusted = await run_cli("ping", env=cli_env(PLEXD_BASE_URL=exports["PLEXD_BASE_URL"]))
        assert untrusted.returncode == EXIT_CONNECTION
        process.send_signal(signal.SIGINT)
    finally:
        result = await finish(process)
    assert result.returncode == EXIT_OK
    assert "Traceback" not in result.stderr


# --- output helpers, in process -------------------------------------------------------------


def test_event_line_is_one_line_and_keeps_the_payload() -> None:
    envelope = sign_envelope(bytes(32), "peer_added", "7", b'{\r\n "a": "x\\ny",\n "b": [1,\n2]}')
    line = event_line(envelope)
    assert "\n" not in line and "\r" not in line
    assert msgspec.json.decode(line) == {
        "event_type": "peer_added",
        "event_id": "7",
        "issued_at": envelope.issued_at_text,
        "payload": {"a": "x\ny", "b": [1, 2]},
    }


def test_json_document_masks_secrets_at_any_depth_unless_asked() -> None:
    state = StateResponse(peers=[Peer(id="p1", psk="pre-shared"), Peer(id="p2")])
    masked = msgspec.json.decode(json_document(state))
    assert [peer["psk"] for peer in masked["peers"]] == [MASK, ""]
    shown = msgspec.json.decode(json_document(state, show_secrets=True))
    assert shown["peers"][0]["psk"] == "pre-shared"
    assert state.peers[0].psk == "pre-shared"  # the value itself is left alone


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UnauthorizedError(401, ""), EXIT_AUTH),
        (ForbiddenError(403, ""), EXIT_AUTH),
        (NotFoundError(404, ""), EXIT_NOT_FOUND),
        (APIConnectionError("refused"), EXIT_CONNECTION),
        (APITimeoutError("timed out"), EXIT_CONNECTION),
        (ConfigError("base_url: bad"), EXIT_USAGE),
        (ServerError(502, "bad gateway"), EXIT_FAILURE),
        (PlexdError("other"), EXIT_FAILURE),
        (RuntimeError("bug"), EXIT_FAILURE),
    ],
)
def test_exit_code_for_each_failure(error: BaseException, code: int) -> None:
    assert exit_code_for(error) == code


def test_error_line_is_a_single_line() -> None:
    line = error_line(ServerError(500, "first\nsecond\r\nthird", method="GET", path="/v1/x"))
    assert "\n" not in line and "\r" not in line
    # The server's line breaks show escaped (APIError's str), never raw.
    assert line == "GET /v1/x: HTTP 500: first\\x0asecond\\x0d\\x0athird"
    assert error_line(KeyError("k")) == "unexpected KeyError: 'k'"


@pytest.mark.parametrize(
    "key",
    ["psk", "PSK", "ciphertext", "token", "bootstrap_token", "accessToken", "node_secret_key",
     "nodeSecretKey", "node-secret-key", "password", "api_key", "apiKey", "private_key",
     "preshared_key", "secret", "secrets", "tokens", "credentials"],
)  # fmt: skip
def test_keys_named_like_a_secret(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["id", "key", "public_key", "signing_public_key", "secret_refs", "nonce", "tokenizer"]
)
def test_keys_not_named_like_a_secret(key: str) -> None:
    assert not is_secret_key(key)


def test_a_payload_that_cannot_be_read_is_masked_whole() -> None:
    for payload in (b"[" * 5000 + b"]" * 5000, b'{"psk": "x"', b'"\xff"'):
        assert masked_payload(payload) == b'"***"'
    duplicate = b'{"psk": "secret", "psk": ""}'
    assert b"secret" not in masked_payload(duplicate)
    plain = b'{ "a" : 1.50 }'
    assert masked_payload(plain) is plain
