"""Running whole programs (the docs' snippets, the examples) in a fresh interpreter
against a world made for them: an emulator whose bootstrap token is ``bootstrap-token``
with one node registered beforehand, a loopback event stream standing for a public one,
and the ``PLEXD_*`` environment pointing at them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from aiohttp import web

from plexd.emulator import Emulator

BOOTSTRAP = "bootstrap-token"
TIMEOUT = 60.0


@dataclasses.dataclass
class World:
    """What a program runs against."""

    emulator: Emulator
    stream_url: str
    node_id: str
    token: str

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` with the PLEXD_* variables of this world."""
        return {
            **os.environ,
            "PLEXD_BASE_URL": self.emulator.url,
            "PLEXD_BOOTSTRAP_TOKEN": BOOTSTRAP,
            "PLEXD_NODE_ID": self.node_id,
            "PLEXD_TOKEN": self.token,
            "PLEXD_VERIFY_KEY": self.emulator.signing_public_key,
        }


async def _public_stream(request: web.Request) -> web.StreamResponse:
    """Three events per connection, then the server closes (the client reconnects)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for n in range(1, 4):
        await response.write(f"id: {n}\nevent: tick\ndata: tick {n}\n\n".encode())
    return response


async def _publish_forever(emulator: Emulator, every: float) -> None:
    while True:
        for node_id in list(emulator.nodes):
            emulator.publish(node_id, "node_state_updated", {"reason": "docs"})
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def world(*, publish_every: float | None = None) -> AsyncIterator[World]:
    """A world; with ``publish_every``, a ``node_state_updated`` event for every
    registered node that often (so a program that handles one event and stops, stops)."""
    app = web.Application()
    app.router.add_get("/stream", _public_stream)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with Emulator(tokens=[BOOTSTRAP]) as emulator:
            node_id, token = emulator.register_node("docs-node")
            here = World(emulator, f"http://127.0.0.1:{port}/stream", node_id, token)
            if publish_every is None:
                yield here
                return
            publisher = asyncio.create_task(_publish_forever(emulator, publish_every))
            try:
                yield here
            finally:
                publisher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publisher
    finally:
        await runner.cleanup()


class Program:
    """A program started in a subprocess; its output merged into one text."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def wait_for_line(self, text: str) -> str:
        """Read until a line containing ``text`` (at most TIMEOUT seconds); that line."""
        assert self.process.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            while True:
                raw = await self.process.stdout.readline()
                if not raw:
                    raise AssertionError(f"ended before {text!r}:\n{self.output}")
                self.lines.append(raw.decode(errors="replace"))
                if text in self.lines[-1]:
                    return self.lines[-1]

    def signal(self, number: signal.Signals) -> None:
        """Send ``number`` to the program."""
        self.process.send_signal(number)

    async def finish(self) -> int:
        """Wait for the end (killing it after TIMEOUT seconds); its exit status."""
        try:
            rest, _ = await asyncio.wait_for(self.process.communicate(), TIMEOUT)
        except TimeoutError:
            self.process.kill()
            rest, _ = await self.process.communicate()
            self.lines.append("\n[timed out]\n")
        self.lines.append(rest.decode(errors="replace"))
        assert self.process.returncode is not None
        return self.process.returncode

    @property
    def output(self) -> str:
        """Everything it wrote so far."""
        return "".join(self.lines)


async def start(argv: Sequence[str], env: dict[str, str], cwd: Path) -> Program:
    """Start ``argv`` in ``cwd`` with ``env``."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    return Program(process)


async def run(argv: Sequence[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run ``argv`` to its end; its exit status and everything it wrote."""
    program = await start(argv, env, cwd)
    status = await program.finish()
    return status, program.output
