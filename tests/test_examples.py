"""Every program of ``examples/`` runs to its end against the emulator, as a user would
run it: a fresh interpreter, the ``PLEXD_*`` environment, its own command line."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
from pathlib import Path

from _programs import TIMEOUT, run, start, world

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name: str) -> list[str]:
    return [sys.executable, "-W", "error", str(EXAMPLES / name)]


def test_every_example_has_a_test() -> None:
    tested = {"node_agent.py", "fleet.py", "sync_script.py", "eventsource_stream.py",
              "download_artifact.py", "test_with_fixture.py"}  # fmt: skip
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


async def test_the_node_agent_runs_until_sigterm_and_deregisters(tmp_path: Path) -> None:
    async with world() as here:
        env = {**here.env, "PLEXD_HEARTBEAT_SECONDS": "0.2"}
        agent = await start(example("node_agent.py"), env, tmp_path)
        line = await agent.wait_for_line("registered as ")
        node_id = line.split("registered as ")[1].split()[0]
        await agent.wait_for_line("heartbeat sent")
        # Its stream is open (it shows events published from now on): another node joining
        # is pushed to it as a signed peer_added event.
        await asyncio.wait_for(here.emulator.wait_for_streams(node_id), TIMEOUT)
        newcomer, _ = here.emulator.register_node("newcomer")
        await agent.wait_for_line(f"a peer joined: {newcomer}")
        assert here.emulator.counts(node_id)["heartbeats"] >= 1
        agent.signal(signal.SIGTERM)
        status = await agent.finish()
        assert status == 0, agent.output
        assert "stopped and deregistered" in agent.output
        assert node_id not in here.emulator.nodes


async def test_the_fleet_sees_a_newcomer_on_every_node(tmp_path: Path) -> None:
    async with world() as here:
        status, output = await run(example("fleet.py"), here.env, tmp_path)
        assert status == 0, output
        assert "all 100 nodes saw" in output
        assert len(here.emulator.nodes) == 1 + 100 + 1  # the world's own node, the fleet, one


async def test_eventsource_prints_the_first_events_and_stops(tmp_path: Path) -> None:
    async with world() as here:
        argv = [*example("eventsource_stream.py"), here.stream_url, "5"]
        status, output = await run(argv, here.env, tmp_path)
    assert status == 0, output
    # Three events a connection: the fourth and fifth came after a reconnect that resumed.
    assert [line.split(":")[0] for line in output.splitlines()[:5]] == [
        "tick id='1'", "tick id='2'", "tick id='3'", "tick id='1'", "tick id='2'",
    ]  # fmt: skip
    assert "5 events; the next connection would resume after '2'" in output


async def test_the_artifact_download_is_checked_and_refuses_a_wrong_digest(
    tmp_path: Path,
) -> None:
    async with world() as here:
        blob = here.emulator.artifact("1.2.3", "linux", "amd64")
        argv = [*example("download_artifact.py"), "1.2.3", "linux", "amd64", "plexd"]
        status, output = await run(argv, here.env, tmp_path)
        assert status == 0, output
        assert (tmp_path / "plexd").read_bytes() == blob
        assert hashlib.sha256(blob).hexdigest() in output
        status, output = await run([*argv[:-1], "other", "--sha256", "0" * 64], here.env, tmp_path)
        assert status == 1, output
        assert "refused" in output
        assert not (tmp_path / "other").exists()


async def test_the_fixture_example_passes_in_strict_mode(tmp_path: Path) -> None:
    # A project of its own: no configuration of ours, so pytest-asyncio's default (strict).
    (tmp_path / "test_it.py").write_text((EXAMPLES / "test_with_fixture.py").read_text())
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error", "-v",
            "-o", "asyncio_default_fixture_loop_scope=function"]  # fmt: skip
    async with world() as here:
        status, output = await run(argv, here.env, tmp_path)
    assert status == 0, output
    assert "3 passed" in output
    assert "asyncio: mode=Mode.STRICT" in output or "mode=strict" in output.lower()


async def test_the_sync_script_runs_without_asyncio_of_its_own(tmp_path: Path) -> None:
    async with world(publish_every=0.05) as here:
        env = {**here.env, "PLEXD_EVENT_COUNT": "3"}
        status, output = await run(example("sync_script.py"), env, tmp_path)
    assert status == 0, output
    assert output.count("event node_state_updated") == 3
    assert "done after 3 events" in output
