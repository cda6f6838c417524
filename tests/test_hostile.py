"""A hostile server, searched by a seeded generator: whatever it answers, only PlexdError
escapes, nothing hangs past the configured timeouts, and nothing leaks.

Every connection to :class:`HostileServer` gets a freshly drawn answer: any status line
(garbage included), any Content-Type, Content-Encoding (real gzip/deflate, lies, unknown
codings), framing (exact, short, long, missing, chunked, broken chunks), Retry-After of
every kind, bodies of JSON (deep nesting, wrong shapes, truncation), event streams
(control characters in ids, every ``retry:``, invalid UTF-8, huge lines) or random bytes,
written in pieces, then closed, reset, or left stalling. ``ControlPlane``, ``SSEManager``
and ``EventSource`` are run against it. A failure names the seed: the same seed draws the
same answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import random
import traceback
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import pytest

from plexd.api import (
    Config,
    ControlPlane,
    EventSource,
    FailureAction,
    HeartbeatRequest,
    PlexdError,
    RegisterRequest,
    SSEManager,
    classify_error,
)

TOKEN = "tok-HOSTILE-s3cret"
# The client's timeouts; a stalling answer outlasts all of them.
TIMEOUT = 0.4
STALL = 3.0
# No single call may take longer than this: the timeouts plus a slow drip of pieces.
HANG_BOUND = 6.0
# make test searches 8 seeds; PLEXD_FUZZ_SEEDS=500 searches deeper (and FROM=N elsewhere).
SEEDS = range(
    int(os.environ.get("PLEXD_FUZZ_FROM", "0")),
    int(os.environ.get("PLEXD_FUZZ_FROM", "0")) + int(os.environ.get("PLEXD_FUZZ_SEEDS", "8")),
)

# --- what the server may answer ----------------------------------------------

STATUS_LINES = [
    *[b"HTTP/1.1 200 OK"] * 8,
    b"HTTP/1.1 204 No Content",
    b"HTTP/1.1 301 Moved",
    b"HTTP/1.1 307 Temporary Redirect",
    b"HTTP/1.1 400 Bad Request",
    b"HTTP/1.1 401 Unauthorized",
    b"HTTP/1.1 403 Forbidden",
    b"HTTP/1.1 404 Not Found",
    b"HTTP/1.1 408 Request Timeout",
    b"HTTP/1.1 410 Gone",
    b"HTTP/1.1 425 Too Early",
    *[b"HTTP/1.1 429 Too Many Requests"] * 3,
    b"HTTP/1.1 500 Internal Server Error",
    b"HTTP/1.1 502 Bad Gateway",
    *[b"HTTP/1.1 503 Service Unavailable"] * 3,
    b"HTTP/1.1 599 Whatever",
    b"HTTP/1.1 999 Beyond",
    b"HTTP/1.1 100 Continue",
    b"HTTP/1.1 200",
    b"HTTP/1.0 200 OK",
    b"HTTP/2 200 OK",
    b"HTTP/1.1 abc",
    b"garbage",
    b"",
]
CONTENT_TYPES = [
    "text/event-stream",
    "text/event-stream; charset=utf-8",
    "TEXT/EVENT-STREAM",
    "application/json",
    "application/problem+json",
    "text/html",
    "",
    "text/event-stream\x01",
]
RETRY_AFTERS = [
    None,
    "0",
    "-1",
    "1",
    "2",
    "3600",
    "99999999999999",
    "1e309",
    "NaN",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "garbage",
    "",
]
EVENT_IDS = ["1", "42", "a\x0bb", "\x7f", "\x01x", "é", "x" * 5000, "", "a\x00b", "\t9", "ok-7"]
RETRY_VALUES = ["0", "1", "50", "100000", "9" * 40, "-5", "abc", ""]
LINE_ENDS = [b"\n", b"\r\n", b"\r"]


def _deep(rng: random.Random) -> bytes:
    depth = rng.choice([100, 5000, 50_000])
    opener = rng.choice([b"[", b'{"a":'])
    return opener * depth


def json_body(rng: random.Random) -> bytes:
    """A JSON answer, good or bad."""
    choice = rng.randrange(9)
    if choice == 0:
        return _deep(rng)
    if choice == 1:
        return b'{"peers": null, "unknown": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    if choice == 2:
        problem = {"title": "t", "detail": "d", "code": "c", "nested": None}
        text = json.dumps(problem).encode()
        return text.replace(b"null", b"[" * 4000 + b"]" * 4000)
    if choice == 3:
        return b'{"node_id": "n", "peers": [{"id": 1}]}'
    if choice == 4:
        return b'{"a": 1e999999, "b": -0, "c": "\\ud800"}'
    if choice == 5:
        return rng.randbytes(rng.randrange(64))
    if choice == 6:
        return b'{"node_id": "n1", "node_secret_key": "k", "mesh_ip": "10.0.0.1"}'
    if choice == 7:
        return b'{"truncated": '
    return b"{}"


def sse_body(rng: random.Random) -> bytes:
    """An event stream, well-formed or not."""
    out = []
    end = rng.choice(LINE_ENDS)
    if rng.random() < 0.1:
        out.append(b"\xef\xbb\xbf")
    for _ in range(rng.randrange(14)):
        kind = rng.randrange(10)
        if kind < 3:
            data = rng.choice(
                [
                    b'{"event_type":"peer_added","event_id":"e1","issued_at":"2026-01-01T00:00:00Z"}',
                    b"plain text",
                    b"\xff\xfe bad utf-8",
                    b"x" * rng.choice([10, 70_000]),
                ]
            )
            out.append(b"data: " + data + end)
        elif kind == 3:
            out.append(b"id: " + rng.choice(EVENT_IDS).encode() + end)
        elif kind == 4:
            out.append(b"event: " + rng.choice([b"peer_added", b"", b"\x0b"]) + end)
        elif kind == 5:
            out.append(b"retry: " + rng.choice(RETRY_VALUES).encode() + end)
        elif kind == 6:
            out.append(b": keep-alive" + end)
        elif kind == 7:
            out.append(rng.randbytes(rng.randrange(1, 30)) + end)
        else:
            out.append(end)
    return b"".join(out)


@dataclass
class Answer:
    """One drawn answer: the bytes in pieces, the pause between pieces, how it ends."""

    pieces: list[bytes]
    pause: float
    end: str  # "close", "reset" or "stall"
    summary: str = ""


def _encode(rng: random.Random, body: bytes) -> tuple[bytes, list[bytes]]:
    choice = rng.randrange(10)
    if choice == 0:
        return gzip.compress(body), [b"Content-Encoding: gzip"]
    if choice == 1:
        return body, [b"Content-Encoding: gzip"]  # a lie
    if choice == 2:
        return zlib.compress(body), [b"Content-Encoding: deflate"]
    if choice == 3:
        raw = zlib.compressobj(wbits=-15)
        return raw.compress(body) + raw.flush(), [b"Content-Encoding: deflate"]
    if choice == 4:
        return body, [rng.choice([b"Content-Encoding: br", b"Content-Encoding: x-weird"])]
    return body, []


def _frame(rng: random.Random, body: bytes) -> tuple[list[bytes], bytes]:
    choice = rng.randrange(8)
    if choice == 0:
        return [b"Transfer-Encoding: chunked"], b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    if choice == 1:
        return [b"Transfer-Encoding: chunked"], b"zz\r\n" + body
    if choice == 2:
        return [b"Content-Length: %d" % (len(body) + rng.randrange(1, 1000))], body
    if choice == 3:
        return [b"Content-Length: %d" % max(0, len(body) - 3)], body
    if choice == 4:
        return [rng.choice([b"Content-Length: -4", b"Content-Length: abc"])], body
    if choice == 5:
        return [], body  # delimited by the close
    return [b"Content-Length: %d" % len(body)], body


def draw_answer(rng: random.Random, *, small_retry_after: bool = False) -> Answer:
    """A whole HTTP answer, drawn from ``rng``."""
    status = rng.choice(STATUS_LINES)
    content_type = rng.choice(CONTENT_TYPES)
    body = sse_body(rng) if "event-stream" in content_type.lower() else json_body(rng)
    if rng.random() < 0.15:
        body = sse_body(rng) if rng.random() < 0.5 else json_body(rng)
    body, encoding = _encode(rng, body)
    framing, framed = _frame(rng, body)
    headers = [*encoding, *framing]
    if content_type:
        headers.append(b"Content-Type: " + content_type.encode())
    retry_after = rng.choice(RETRY_AFTERS[:5] if small_retry_after else RETRY_AFTERS)
    if retry_after is not None:
        headers.append(b"Retry-After: " + retry_after.encode())
    if status.split(b" ")[1:2] in ([b"301"], [b"307"]):
        headers.append(rng.choice([b"Location: /again", b"Location: ", b"Location: ftp://x"]))
    if rng.random() < 0.05:
        headers.append(b"X-Junk: " + bytes(rng.randrange(1, 32) for _ in range(8)))
    raw = status + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + framed
    cuts = sorted(rng.sample(range(len(raw) + 1), min(len(raw) + 1, rng.randrange(1, 5))))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True) if b > a]
    end = rng.choices(["close", "reset", "stall"], weights=[80, 10, 10])[0]
    pause = rng.choice([0.0, 0.0, 0.005, 0.05])
    summary = f"{status!r} {content_type!r} {headers!r} {len(framed)} bytes, {end}"
    return Answer(pieces, pause, end, summary)


# --- the server -----------------------------------------------------------------


@dataclass
class HostileServer:
    """Answers every connection with the next drawn answer; records what it sent."""

    rng: random.Random
    small_retry_after: bool = False
    url: str = ""
    answers: list[Answer] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once this many requests arrived.
    enough_after: int = 30
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        if len(self.requests) >= self.enough_after:
            self.enough.set()
        answer = draw_answer(self.rng, small_retry_after=self.small_retry_after)
        self.answers.append(answer)
        for piece in answer.pieces:
            writer.write(piece)
            await writer.drain()
            if answer.pause:
                await asyncio.sleep(answer.pause)
        if answer.end == "reset":
            writer.transport.abort()
        elif answer.end == "stall":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), STALL)

    async def stop(self) -> None:
        # Cancelling a handler task would make asyncio log an error: wake the stalls instead.
        self._closing.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def history(self) -> str:
        return "\n".join(a.summary for a in self.answers[-5:])


@contextlib.asynccontextmanager
async def hostile_server(seed: int, **options: bool) -> AsyncIterator[HostileServer]:
    hostile = HostileServer(random.Random(seed), **options)
    server = await asyncio.start_server(hostile.handle, "127.0.0.1", 0)
    hostile.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield hostile
    finally:
        server.close()
        await hostile.stop()
        await server.wait_closed()


# --- invariants -------------------------------------------------------------------


def assert_no_secret(exc: BaseException) -> None:
    """Neither the error nor anything chained to it shows the token."""
    text = "".join(traceback.format_exception(exc))
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text += repr(current) + str(current)
        current = current.__cause__ or current.__context__
    assert TOKEN not in text


def assert_only_plexd_errors(errors: list[BaseException], where: str) -> None:
    for error in errors:
        assert isinstance(error, PlexdError), f"{where}: {type(error).__name__}: {error!r}"
        assert_no_secret(error)
        # What the server sent never shows raw: no forged log line, no terminal escape.
        assert str(error).isprintable(), f"{where}: {error}"


@pytest.fixture(autouse=True)
def no_forged_log_lines(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every log line the package wrote is one printable line and holds no secret."""
    caplog.set_level(logging.DEBUG, logger="plexd.api")
    yield
    for record in caplog.records:
        message = record.getMessage()
        assert message.isprintable(), message
        assert TOKEN not in message


async def no_other_tasks() -> None:
    """Every task but the test's own has ended (nothing leaked)."""
    await asyncio.sleep(0)
    current = asyncio.current_task()
    leftover = [task for task in asyncio.all_tasks() if task is not current]
    assert not leftover, leftover


def client_for(url: str) -> ControlPlane:
    # One attempt per call: what is under test is how each attempt ends; retries run the
    # same attempt again (tests/test_retry.py bounds their number and time).
    config = Config(
        base_url=url,
        connect_timeout=TIMEOUT,
        request_timeout=TIMEOUT,
        sse_idle_timeout=TIMEOUT,
        max_retries=0,
    )
    client = ControlPlane(config, "9.9.9")
    client.set_auth_token(TOKEN)
    return client


# --- ControlPlane ---------------------------------------------------------------

NOW = "2026-12-04T00:00:00Z"


async def _drain_stream(cp: ControlPlane, which: str) -> None:
    if which == "events":
        async with cp.connect_sse("n1", "7") as events:
            async for _ in events.iter_chunks():
                pass
    else:
        async with cp.fetch_artifact("1.0.0", "linux", "amd64") as artifact:
            async for _ in artifact.iter_chunks():
                pass


def _calls(cp: ControlPlane) -> list[Callable[[], object]]:
    import datetime

    now = datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC)
    return [
        cp.ping,
        lambda: cp.get_json("/v1/anything"),
        lambda: cp.fetch_state("n1"),
        lambda: cp.heartbeat("n1", HeartbeatRequest(node_id="n1", timestamp=now)),
        lambda: cp.register(RegisterRequest(token="b", public_key="k", hostname="h")),
        lambda: cp.fetch_secret("n1", "db"),
        lambda: cp.post_json("/v1/x", {"a": [1] * 600}),
        lambda: _drain_stream(cp, "events"),
        lambda: _drain_stream(cp, "artifact"),
    ]


@pytest.mark.parametrize("seed", SEEDS)
async def test_control_plane_raises_only_plexd_errors_and_never_hangs(seed: int) -> None:
    async with hostile_server(seed) as server, client_for(server.url) as cp:
        rng = random.Random(seed)
        calls = _calls(cp)
        errors: list[BaseException] = []
        for _ in range(40):
            call = rng.choice(calls)
            try:
                async with asyncio.timeout(HANG_BOUND):
                    await call()  # type: ignore[misc]
            except TimeoutError:
                pytest.fail(f"seed {seed}: a call hung\n{server.history()}")
            except Exception as exc:
                errors.append(exc)
                assert isinstance(exc, PlexdError), (
                    f"seed {seed}: {type(exc).__name__}: {exc!r}\n{server.history()}"
                )
        assert_only_plexd_errors(errors, f"seed {seed}")
    await no_other_tasks()


# --- SSEManager ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
async def test_manager_survives_until_shutdown_or_a_permanent_error(seed: int) -> None:
    waits: list[float] = []
    virtual_now = [0.0]

    async def fake_sleep(delay: float) -> None:
        waits.append(delay)
        virtual_now[0] += delay
        await asyncio.sleep(0)

    async with hostile_server(seed) as server, client_for(server.url) as cp:
        manager = SSEManager(cp, sleep=fake_sleep, clock=lambda: virtual_now[0])
        manager.set_polling_fallback(600.0, 60.0)
        delivered: list[str] = []
        manager.register_handler("peer_added", lambda env: delivered.append(env.event_id))
        run = asyncio.create_task(manager.start("n1"))
        outcome: BaseException | None = None
        try:
            enough = asyncio.create_task(server.enough.wait())
            try:
                async with asyncio.timeout(20):
                    await asyncio.wait([run, enough], return_when=asyncio.FIRST_COMPLETED)
            finally:
                enough.cancel()
            manager.shutdown()
            async with asyncio.timeout(2):
                await run
        except TimeoutError:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            pytest.fail(f"seed {seed}: the manager hung or ignored shutdown\n{server.history()}")
        except Exception as exc:
            outcome = exc
        if outcome is not None:
            assert isinstance(outcome, PlexdError), f"seed {seed}: {outcome!r}"
            assert classify_error(outcome) in (
                FailureAction.PERMANENT_FAILURE,
                FailureAction.RETRY_AUTH,
            ), f"seed {seed}: start() ended on a transient error {outcome!r}"
            assert_no_secret(outcome)
        # Every server-caused failure is followed by a real wait, never a hot loop.
        assert all(wait > 0 for wait in waits), (seed, waits)
        assert all(wait <= 3600 * 1.25 for wait in waits), (seed, max(waits))
    await no_other_tasks()


# --- EventSource ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
async def test_event_source_reports_only_plexd_errors_and_closes_promptly(seed: int) -> None:
    reported: list[BaseException] = []
    async with hostile_server(seed, small_retry_after=True) as server:
        source = EventSource(
            server.url + "/stream",
            headers={"Authorization": f"Bearer {TOKEN}"},
            reconnect_delay=0.001,
            max_reconnect_delay=0.01,
            read_timeout=TIMEOUT,
            connect_timeout=TIMEOUT,
            on_error=reported.append,
        )
        raised: BaseException | None = None
        try:
            async with asyncio.timeout(10):
                async with source:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(3):
                            async for _event in source:
                                if len(server.requests) >= 25:
                                    break
        except TimeoutError:
            pytest.fail(f"seed {seed}: leaving the EventSource hung\n{server.history()}")
        except Exception as exc:
            raised = exc
        assert source.ready_state == "closed"
        assert_only_plexd_errors(reported, f"seed {seed} on_error")
        if raised is not None:
            assert_only_plexd_errors([raised], f"seed {seed} raised")
        assert TOKEN not in repr(source)
    await no_other_tasks()
