"""CLI, plumbing layer: how a command reaches the control plane and runs its async work.

The connection options every command shares (``--base-url``, ``--token``, ``--ca-file``,
``--insecure``, ``--timeout``), the :class:`ControlPlane` they make, :func:`call_control_plane`
(connect, make one call, close: what every one-request command does) and
:func:`run_until_interrupted` (Ctrl-C and SIGTERM end a long-running command cleanly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from plexd.api import Config, ConfigError, ControlPlane, __version__, build_ssl_context

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# The logger the library and the emulator log under ("plexd.api", "plexd.emulator").
LOGGER = "plexd"
_CONNECTION_KEY = "plexd.cli.connection"


@dataclass(frozen=True)
class Connection:
    """Where the control plane is and how to talk to it, from the connection options."""

    base_url: str
    token: str
    ca_file: str | None
    insecure: bool
    timeout: float

    def client(self, *, sse_idle_timeout: float = 0) -> ControlPlane:
        """A ControlPlane with these settings and the token set."""
        config = Config(
            base_url=self.base_url,
            tls_insecure_skip_verify=self.insecure,
            request_timeout=self.timeout,
            sse_idle_timeout=sse_idle_timeout,
        )
        client = ControlPlane(
            config, __version__, logging.getLogger(LOGGER), ssl_context=self._ssl_context()
        )
        client.set_auth_token(self.token)
        return client

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.ca_file is None:
            return None
        context = build_ssl_context()
        try:
            context.load_verify_locations(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"--ca-file {self.ca_file}: not a usable CA certificate: {exc}"
            ) from None
        return context


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta.setdefault(_CONNECTION_KEY, {})[param.name] = value
    return value


def connection_options(*, token: bool = True, token_required: bool = True) -> Callable[[F], F]:
    """The options of every command that talks to a control plane (see :func:`connection`)."""

    def decorate(f: F) -> F:
        shared: dict[str, Any] = {"expose_value": False, "callback": _remember}
        options = [
            click.option(
                "--base-url",
                envvar="PLEXD_BASE_URL",
                show_envvar=True,
                required=True,
                metavar="URL",
                help="The control plane, e.g. http://127.0.0.1:8080.",
                **shared,
            ),
            click.option(
                "--token",
                envvar="PLEXD_TOKEN",
                show_envvar=True,
                required=token_required,
                default="",
                hidden=not token,
                metavar="TOKEN",
                help="The node's bearer token (register prints it once).",
                **shared,
            ),
            click.option(
                "--ca-file",
                envvar="PLEXD_CA_FILE",
                show_envvar=True,
                type=click.Path(exists=True, dir_okay=False),
                help="Also trust this CA (PEM), e.g. the one `plexd-api emulator --tls` prints.",
                **shared,
            ),
            click.option(
                "--insecure",
                is_flag=True,
                help="Do not verify the server's TLS certificate (testing only).",
                **shared,
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0),
                default=0,
                metavar="SECONDS",
                help="Bound on each request (0: 30 s).",
                **shared,
            ),
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def connection() -> Connection:
    """The connection options of the running command."""
    values = click.get_current_context().meta[_CONNECTION_KEY]
    return Connection(
        base_url=values["base_url"],
        token=values.get("token") or "",
        ca_file=values.get("ca_file"),
        insecure=bool(values.get("insecure")),
        timeout=float(values.get("timeout") or 0),
    )


def call_control_plane(request: Callable[[ControlPlane], Awaitable[T]]) -> T:
    """Connect with the connection options, run ``request(client)``, close; its result.

    ``call_control_plane(lambda client: client.fetch_state(node_id))``
    """
    conn = connection()

    async def call() -> T:
        async with conn.client() as client:
            return await request(client)

    return asyncio.run(call())


def run_until_interrupted(coroutine: Coroutine[Any, Any, T]) -> T | None:
    """Run ``coroutine``; Ctrl-C or SIGTERM cancel it and count as a clean end (None)."""
    try:
        return asyncio.run(_interruptible(coroutine))
    except KeyboardInterrupt:
        # Where the loop cannot take the signal itself (no add_signal_handler).
        return None


async def _interruptible(coroutine: Coroutine[Any, Any, T]) -> T | None:
    loop = asyncio.get_running_loop()
    task = loop.create_task(coroutine)
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, interrupt)
            installed.append(signum)
    try:
        return await task
    except asyncio.CancelledError:
        if interrupted:
            return None
        raise
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
