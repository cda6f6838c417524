"""The emulator's command line, as `plexd-api emulator` and `python -m plexd.emulator` (one
command), its admin subcommands against a running emulator, and `plexd-api secret
--decrypt`; run as subprocesses."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from plexd.api import decode_raw, decrypt_secret
from plexd.emulator import Emulator

WAIT = 20.0
PLEXD_API = ("-m", "plexd.cli")
PYTHON_M = ("-m", "plexd.emulator")


@dataclass
class Ran:
    returncode: int
    stdout: bytes
    stderr: str

    def json(self) -> object:
        return msgspec.json.decode(self.stdout)

    def one_error_line(self) -> str:
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self.stderr
        assert "Traceback" not in self.stderr
        return lines[0]


def clean_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLEXD_")}
    env.update(variables)
    return env


async def run(
    entry: tuple[str, ...], *args: str, env: Mapping[str, str], stdin: bytes | None = None
) -> Ran:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *entry, *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(env),
    )  # fmt: skip
    try:
        async with asyncio.timeout(WAIT):
            out, err = await process.communicate(stdin)
    except TimeoutError:
        process.kill()
        await process.communicate()
        raise
    assert process.returncode is not None
    return Ran(process.returncode, out, err.decode())


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(tokens=["boot"]) as emulator:
        yield emulator


@pytest.fixture
def admin_env(emulator: Emulator) -> dict[str, str]:
    return clean_env(PLEXD_BASE_URL=emulator.url)


# --- one command line --------------------------------------------------------------------------


async def test_both_entry_points_are_the_same_command() -> None:
    env = clean_env()
    via_cli, via_module = await asyncio.gather(
        run(PLEXD_API, "emulator", "--help", env=env), run(PYTHON_M, "--help", env=env)
    )
    assert via_cli.returncode == via_module.returncode == 0
    normalized = via_module.stdout.replace(b"python -m plexd.emulator", b"plexd-api emulator")
    # argparse wraps the usage by the length of the program's name; compare the words.
    assert via_cli.stdout.split() == normalized.split()
    for flag in (b"--bootstrap-token", b"--keepalive", b"--admin-token", b"--max-calls",
                 b"publish", b"fault", b"rotate-key", b"seed"):  # fmt: skip
        assert flag in via_cli.stdout


@pytest.mark.parametrize("entry", [(*PLEXD_API, "emulator"), PYTHON_M], ids=["cli", "module"])
async def test_a_port_in_use_is_one_line_and_exit_1(entry: tuple[str, ...]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await run(entry, "--port", str(port), env=clean_env())
    assert result.returncode == 1
    line = result.one_error_line()
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert line.startswith(("plexd-api emulator: error: ", "python -m plexd.emulator: error: "))


def blocked_cryptography(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import cryptography`` fails, as without the extra."""
    package = tmp_path / "blocked" / "cryptography"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('cryptography is not installed')\n")
    return {"PYTHONPATH": str(package.parent)}


@pytest.mark.parametrize("entry", [(*PLEXD_API, "emulator"), PYTHON_M], ids=["cli", "module"])
async def test_tls_without_cryptography_is_one_line_naming_the_extra(
    entry: tuple[str, ...], tmp_path: Path
) -> None:
    result = await run(
        entry, "--port", "0", "--tls", env=clean_env(**blocked_cryptography(tmp_path))
    )
    assert result.returncode == 1
    assert "plexd-api[emulator]" in result.one_error_line()


async def test_a_usage_error_is_one_line_and_exit_2() -> None:
    result = await run(PYTHON_M, "--port", "70000", env=clean_env())
    assert result.returncode == 2
    assert "'70000' is not a port" in result.one_error_line()


async def test_the_banner_shows_the_admin_api_exports_and_absolute_paths(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *PYTHON_M, "--port", "0", "--tls", "--tls-dir", "certs",
        "--admin-token", "adm-s3cret", "--bootstrap-token", "boot-1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path, env=clean_env(),
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(WAIT):
            while not lines or lines[-1] != "press Ctrl-C to stop":
                lines.append((await process.stdout.readline()).decode().rstrip("\n"))
        process.terminate()
        async with asyncio.timeout(WAIT):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    url = lines[0].rsplit(" ", 1)[-1]
    assert f"admin API: {url}/_emulator/ (bearer --admin-token)" in lines
    assert "export PLEXD_BOOTSTRAP_TOKEN=boot-1" in lines
    ca = tmp_path / "certs" / "ca.pem"
    assert f"CA file: {ca}" in lines
    assert f"export PLEXD_CA_FILE={ca}" in lines
    assert "adm-s3cret" not in "\n".join(lines)


# --- the admin subcommands ---------------------------------------------------------------------


async def test_publish_signs_and_publishes_to_a_node(
    emulator: Emulator, admin_env: dict[str, str]
) -> None:
    node_id, _ = emulator.register_node()
    result = await run(
        PLEXD_API, "emulator", "publish", node_id, "policy_updated", '{"id": "p1"}', env=admin_env
    )
    assert result.returncode == 0, result.stderr
    assert result.json() == {"ids": [1]}
    (envelope,) = emulator.events(node_id)
    assert (envelope.event_type, bytes(envelope.payload)) == ("policy_updated", b'{"id":"p1"}')
    from_stdin = await run(
        PYTHON_M, "publish", node_id, "rotate_keys", "-", env=admin_env, stdin=b'{"a": 1}'
    )
    assert from_stdin.json() == {"ids": [2]}


async def test_fault_sets_and_clears_faults(emulator: Emulator, admin_env: dict[str, str]) -> None:
    node_id, _ = emulator.register_node()
    result = await run(
        PLEXD_API, "emulator", "fault", node_id, "--cut-after-bytes", "100", "--cut-streams", "2",
        "--status", "503", "--retry-after", "7", env=admin_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    faults = emulator.faults(node_id)
    assert (faults.cut_after_bytes, faults.cut_streams, faults.status) == (100, 2, 503)
    assert faults.retry_after == "7"
    cleared = await run(PLEXD_API, "emulator", "fault", node_id, "--clear", env=admin_env)
    assert cleared.returncode == 0
    assert emulator.faults(node_id).cut_after_bytes is None


async def test_rotate_key_rotates_the_signing_key(
    emulator: Emulator, admin_env: dict[str, str]
) -> None:
    before = emulator.signing_public_key
    result = await run(PYTHON_M, "rotate-key", "--transition", "0", env=admin_env)
    assert result.returncode == 0, result.stderr
    assert emulator.signing_public_key != before
    assert result.json()["current"] == emulator.signing_public_key  # type: ignore[index]


async def test_seed_adds_secrets_peers_policies_data_and_metadata(
    emulator: Emulator, admin_env: dict[str, str]
) -> None:
    node_id, token = emulator.register_node()
    result = await run(
        PLEXD_API, "emulator", "seed", node_id,
        "--secret", "db=pa55=word", "--peer", "outside-1",
        "--peer", '{"id": "outside-2", "endpoint": "198.51.100.2:51820"}',
        "--policy", '{"id": "web", "rules": [{"port": 443}]}',
        "--data", 'config={"level": 3}', "--metadata", "zone=eu",
        env=admin_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert b"pa55" not in result.stdout
    node = emulator.node(node_id)
    assert list(node.peers) == ["outside-1", "outside-2"]
    assert node.peers["outside-2"].endpoint == "198.51.100.2:51820"
    assert [p.id for p in node.policies] == ["web"]
    assert decode_raw(node.data["config"].payload) == {"level": 3}
    assert node.metadata == {"zone": "eu"}
    async with emulator.client(token) as client:
        secret = await client.fetch_secret(node_id, "db")
    assert decrypt_secret(token, secret) == b"pa55=word"
    assert decode_raw(emulator.events(node_id)[-1].payload)["id"] == "outside-2"


async def test_admin_subcommand_failures_are_one_line_with_exit_codes(
    emulator: Emulator, admin_env: dict[str, str]
) -> None:
    missing = await run(PYTHON_M, "publish", "node-404", "x", env=admin_env)
    assert missing.returncode == 4
    assert "no such node" in missing.one_error_line()
    bad_json = await run(PYTHON_M, "publish", "node-1", "x", "{", env=admin_env)
    assert bad_json.returncode == 2
    assert "PAYLOAD is not JSON" in bad_json.one_error_line()
    bad_pair = await run(PYTHON_M, "seed", "node-1", "--secret", "s3cret-value", env=admin_env)
    assert bad_pair.returncode == 2
    assert "s3cret-value" not in bad_pair.one_error_line()
    nothing = await run(PYTHON_M, "nodes", env=clean_env(PLEXD_BASE_URL="http://127.0.0.1:1"))
    assert nothing.returncode == 5
    nothing.one_error_line()


async def test_an_admin_token_is_sent_when_the_emulator_wants_one() -> None:
    async with Emulator(admin_token="adm-s3cret") as emulator:
        env = clean_env(PLEXD_EMULATOR_URL=emulator.url)
        refused = await run(PYTHON_M, "nodes", env=env)
        assert refused.returncode == 3
        assert "adm-s3cret" not in refused.one_error_line()
        accepted = await run(PYTHON_M, "nodes", env={**env, "PLEXD_ADMIN_TOKEN": "adm-s3cret"})
        assert accepted.returncode == 0, accepted.stderr
        assert accepted.json() == {
            "nodes": [],
            "signing_keys": {"current": emulator.signing_public_key},
        }


# --- plexd-api secret --decrypt ----------------------------------------------------------------


@pytest.fixture
def node_env(emulator: Emulator) -> dict[str, str]:
    node_id, token = emulator.register_node()
    return clean_env(PLEXD_BASE_URL=emulator.url, PLEXD_NODE_ID=node_id, PLEXD_TOKEN=token)


async def test_secret_decrypt_prints_the_exact_value_bytes(
    emulator: Emulator, node_env: dict[str, str]
) -> None:
    emulator.put_secret(node_env["PLEXD_NODE_ID"], "tls-key", b"line 1\nline 2\n\xff")
    result = await run(PLEXD_API, "secret", "tls-key", "--decrypt", env=node_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"line 1\nline 2\n\xff"


async def test_secret_decrypt_of_tampered_data_is_one_line_without_secrets(
    emulator: Emulator, node_env: dict[str, str]
) -> None:
    node = emulator.node(node_env["PLEXD_NODE_ID"])
    stored = emulator.put_secret(node.id, "db", "pa55word")
    spoiled = stored.ciphertext[:-4] + (
        "AAAA" if not stored.ciphertext.endswith("AAAA") else "BBBB"
    )
    node.secrets["db"] = type(stored)(key="db", ciphertext=spoiled, nonce=stored.nonce, version=1)
    result = await run(PLEXD_API, "secret", "db", "--decrypt", env=node_env)
    assert result.returncode == 1
    assert result.stdout == b""
    line = result.one_error_line()
    assert line.startswith("plexd-api: error: secret 'db' version 1 does not decrypt")
    for secret in (node.token, spoiled, "pa55word"):
        assert secret not in line


async def test_secret_decrypt_without_cryptography_names_the_extra(
    emulator: Emulator, node_env: dict[str, str], tmp_path: Path
) -> None:
    emulator.put_secret(node_env["PLEXD_NODE_ID"], "db", "pa55word")
    env = {**node_env, **blocked_cryptography(tmp_path)}
    result = await run(PLEXD_API, "secret", "db", "--decrypt", env=env)
    assert result.returncode != 0
    assert "plexd-api[secrets]" in result.one_error_line()
    assert result.stdout == b""
