"""The demo scenario (what `make demo` runs): in process, and as the `demo` command."""

from __future__ import annotations

from plexd.api import EventType
from plexd.cli.demo import FAIL, OK, run_demo
from plexd.emulator import ALL_NODES, Emulator
from test_cli import cli_env, run_cli


async def test_demo_passes_every_step_and_accounts_for_every_event() -> None:
    lines: list[str] = []
    report = await run_demo(lines.append)
    assert report.passed, "\n".join(lines)
    assert report.lines == lines
    assert report.event_types == {str(event_type) for event_type in EventType}
    # 11 + the peer's peer_added + 5 replayed + rotation + 3 + tampered + 1; the tampered
    # one is not delivered.
    assert (report.published, report.delivered, report.rejected) == (23, 22, 1)
    assert any("decrypted with the node's secret key" in line for line in lines)
    assert any("pushed peer_added" in line for line in lines)
    assert report.connections == 2
    assert lines[0].startswith("plexd-api demo: control plane emulator on http://127.0.0.1:")
    steps = [line for line in lines if line.startswith((OK, FAIL))]
    assert len(steps) == 11 and all(line.startswith(OK) for line in steps)
    text = "\n".join(lines)
    assert "resumed with Last-Event-ID: 12" in text
    assert "the verifier took it from the signing_key_rotated event" in text
    assert "log warning: skipping unverifiable policy_updated event 22" in text
    assert lines[-2].startswith("summary: 12/12 event types verified; 23 events published")
    assert lines[-1] == "demo passed"


async def test_demo_reports_the_failed_step_and_stops_there() -> None:
    async with Emulator() as emulator:
        emulator.set_faults(ALL_NODES, status=500, status_scope="all")
        lines: list[str] = []
        report = await run_demo(lines.append, emulator=emulator)
    assert not report.passed
    assert report.failure.startswith("register: POST /v1/register: HTTP 500")
    assert [line for line in lines if line.startswith((OK, FAIL))] == [f"{FAIL} {report.failure}"]
    assert lines[-1] == f"demo FAILED: {report.failure}"


async def test_demo_command_exits_0_with_output_readable_in_a_log_file() -> None:
    result = await run_cli("demo", env=cli_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert "\x1b" not in result.stdout  # no terminal escapes when not a terminal
    lines = result.stdout.splitlines()
    assert sum(line.startswith(OK) for line in lines) == 11
    # Long lines stay whole: no wrapping at a terminal width.
    assert any(len(line) > 120 for line in lines)
    assert lines[-1] == "demo passed"
