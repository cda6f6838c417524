"""The ``control_plane`` pytest fixture, used as a project depending on plexd-api would."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from plexd.api import HeartbeatRequest, RegisterRequest, UnauthorizedError
from plexd.emulator import Emulator


async def test_control_plane_registers_a_node_and_streams_its_events(
    control_plane: Emulator,
) -> None:
    async with control_plane.client() as client:
        reg = await client.register(
            RegisterRequest(token=control_plane.bootstrap_token, hostname="web-1")
        )
        client.set_auth_token(reg.node_secret_key)
        control_plane.publish(reg.node_id, "peer_added", {"id": "peer-9"})
        async with client.connect_sse(reg.node_id, "0") as stream:  # from the start
            first = await anext(aiter(stream.iter_chunks()))
    assert reg.signing_public_key == control_plane.signing_public_key
    assert first.startswith(b"id: 1\nevent: peer_added\n")
    assert [call.path for call in control_plane.calls] == [
        "/v1/register",
        f"/v1/nodes/{reg.node_id}/events",
    ]


async def test_control_plane_faults_and_state_are_reachable_from_the_test(
    control_plane: Emulator,
) -> None:
    node_id, token = control_plane.register_node("db-1")
    control_plane.set_faults(node_id, status=401, status_scope="all", status_count=1)
    beat = HeartbeatRequest(node_id=node_id, timestamp=datetime.now(UTC), status="ok")
    async with control_plane.client(token) as client:
        with pytest.raises(UnauthorizedError):
            await client.heartbeat(node_id, beat)
        await client.heartbeat(node_id, beat)
    assert control_plane.counts(node_id)["heartbeats"] == 1
    assert control_plane.url.startswith("http://127.0.0.1:")


@pytest.mark.control_plane_options(tokens=["my-bootstrap"], retry_ms=250)
async def test_control_plane_options_marker_configures_the_emulator(
    control_plane: Emulator,
) -> None:
    assert control_plane.bootstrap_tokens == ["my-bootstrap"]
    assert control_plane.retry_ms == 250


async def test_each_test_gets_a_fresh_control_plane(control_plane: Emulator) -> None:
    assert control_plane.nodes == {}
    assert control_plane.calls == []


USER_TEST = """
    import pytest
    from plexd.api import RegisterRequest

    {decorator}
    async def test_user(control_plane):
        async with control_plane.client() as client:
            reg = await client.register(RegisterRequest(token=control_plane.bootstrap_token))
        assert reg.node_id in control_plane.nodes
"""


@pytest.mark.parametrize(
    ("mode", "decorator"),
    [("strict", "@pytest.mark.asyncio"), ("auto", "")],
)
def test_the_fixture_works_in_strict_and_auto_mode(
    tmp_path: Path, mode: str, decorator: str
) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TEST.format(decorator=decorator)))
    # A project of its own: no pyproject/conftest of ours, the plugin comes from the entry point.
    (tmp_path / "pytest.ini").write_text(
        f"[pytest]\nasyncio_mode = {mode}\nasyncio_default_fixture_loop_scope = function\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-W", "error", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_loading_the_plugin_does_not_import_the_emulator() -> None:
    probe = (
        "import sys, plexd.emulator.pytest_plugin\n"
        "print(sorted(m for m in ('aiohttp', 'nacl', 'plexd.emulator.server') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
