"""SSEManager.run_until_signal and the sync SSEManager.run: SIGINT and SIGTERM shut the
stream down and the call returns cleanly; the previous handlers are back afterwards.

Each test runs a real node in a subprocess against the emulator and sends it a real
signal once it has handled an event (so its handlers are installed).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap

import pytest

from plexd.emulator import Emulator

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

ASYNC_NODE = """
import asyncio, signal, sys
from plexd.api import Config, ControlPlane, Ed25519Verifier, SSEManager

url, node_id, token, key = sys.argv[1:5]

def mine(signum, frame):
    print("custom handler ran", flush=True)

async def main():
    signal.signal(signal.SIGTERM, mine)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    async with ControlPlane(Config(base_url=url), "1.0") as client:
        client.set_auth_token(token)
        manager = SSEManager(client, Ed25519Verifier(key))
        manager.last_event_id = "0"  # what was published before it connects too
        manager.register_default_handler(lambda env: print("event", env.event_id, flush=True))
        await manager.run_until_signal(node_id)
    after = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    print("returned; handlers restored:", before == after, flush=True)

asyncio.run(main())
"""

SYNC_NODE = """
import signal, sys, threading
from plexd.api import Config, Ed25519Verifier
from plexd.api import sync

url, node_id, token, key = sys.argv[1:5]

def mine(signum, frame):
    print("custom handler ran", flush=True)

signal.signal(signal.SIGTERM, mine)
before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
with sync.ControlPlane(Config(base_url=url), "1.0") as client:
    client.set_auth_token(token)
    manager = sync.SSEManager(client, Ed25519Verifier(key))
    manager.last_event_id = "0"  # what was published before it connects too
    manager.register_default_handler(
        lambda env: print("event", env.event_id, threading.current_thread().name, flush=True)
    )
    manager.run(node_id)
after = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
print("returned; handlers restored:", before == after, flush=True)
"""


async def run_node_and_signal(emulator: Emulator, script: str, signum: int) -> list[str]:
    node_id, token = emulator.register_node("web-1")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(script),
        emulator.url,
        node_id,
        token,
        emulator.signing_public_key,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        await asyncio.wait_for(emulator.wait_for_streams(node_id), 20)
        emulator.publish(node_id, "peer_added", {"id": "p1"})
        first = await asyncio.wait_for(process.stdout.readline(), 20)
        assert first.decode().startswith("event 1"), first
        process.send_signal(signum)
        out, err = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    assert b"Traceback" not in err, err.decode()
    return [first.decode().strip(), *out.decode().splitlines()]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_run_until_signal_returns_cleanly_on_a_signal(
    control_plane: Emulator, signum: int
) -> None:
    lines = await run_node_and_signal(control_plane, ASYNC_NODE, signum)
    assert lines == ["event 1", "returned; handlers restored: True"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_sync_run_returns_cleanly_on_a_signal_in_the_main_thread(
    control_plane: Emulator, signum: int
) -> None:
    lines = await run_node_and_signal(control_plane, SYNC_NODE, signum)
    # Handlers ran in the thread that called run (the main thread).
    assert lines == ["event 1 MainThread", "returned; handlers restored: True"]
