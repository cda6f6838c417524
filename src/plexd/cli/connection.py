"""CLI, plumbing layer: how a command reaches the control plane and runs its async work.

The connection options every command shares (``--base-url``, ``--token``, ``--ca-file``,
``--insecure``, ``--timeout``), the :class:`ControlPlane` they make, :func:`call_control_plane`
(connect, make one call, close: what every one-request command does) and
:func:`run_until_interrupted` (Ctrl-C and SIGTERM end a long-running command cleanly).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from plexd.api import CONFIG_ENV_VARIABLES, Config, ControlPlane, __version__

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# The logger the library and the emulator log under ("plexd.api", "plexd.emulator").
LOGGER = "plexd"
_CONNECTION_KEY = "plexd.cli.connection"


@dataclass(frozen=True)
class Connection:
    """Where the control plane is and how to talk to it: the library's
    :meth:`Config.from_env` reading of the ``PLEXD_*`` variables, with the connection
    options given on the command line in their place."""

    config: Config

    @property
    def base_url(self) -> str:
        """The control plane's URL."""
        return self.config.base_url

    def client(self, *, sse_idle_timeout: float = 0) -> ControlPlane:
        """A ControlPlane with these settings (and the token) set."""
        config = dataclasses.replace(self.config, sse_idle_timeout=sse_idle_timeout)
        return ControlPlane(config, __version__, logging.getLogger(LOGGER))


# The options that stand for a PLEXD_* variable of Config.from_env: one reading of the
# environment, the library's; an option given on the command line replaces its variable.
_OPTION_VARIABLES = {
    "base_url": CONFIG_ENV_VARIABLES["base_url"],
    "token": CONFIG_ENV_VARIABLES["token"],
    "ca_file": CONFIG_ENV_VARIABLES["ca_file"],
    "timeout": CONFIG_ENV_VARIABLES["request_timeout"],
}
_TOKEN_REQUIRED = "token_required"


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta.setdefault(_CONNECTION_KEY, {})[param.name] = value
    return value


def connection_options(*, token: bool = True, token_required: bool = True) -> Callable[[F], F]:
    """The options of every command that talks to a control plane (see :func:`connection`).

    Each of ``--base-url``, ``--token``, ``--ca-file`` and ``--timeout`` stands for its
    ``PLEXD_*`` variable (Config.from_env reads the rest: PLEXD_CLIENT_CERT, PLEXD_PROXY...).
    """

    def decorate(f: F) -> F:
        shared: dict[str, Any] = {"expose_value": False, "callback": _remember}
        options = [
            click.option(
                "--base-url",
                metavar="URL",
                help="The control plane, e.g. http://127.0.0.1:8080.  [env var: PLEXD_BASE_URL]",
                **shared,
            ),
            click.option(
                "--token",
                hidden=not token,
                metavar="TOKEN",
                help="The node's bearer token (register prints it once).  "
                "[env var: PLEXD_TOKEN]",
                expose_value=False,
                callback=remember_token,
            ),
            click.option(
                "--ca-file",
                type=click.Path(exists=True, dir_okay=False),
                help="Also trust this CA (PEM), e.g. the one `plexd-api emulator --tls` "
                "prints.  [env var: PLEXD_CA_FILE]",
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
                metavar="SECONDS",
                help="Bound on each request (0: 30 s).  [env var: PLEXD_TIMEOUT]",
                **shared,
            ),
        ]
        for option in reversed(options):
            f = option(f)
        return f

    def remember_token(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        ctx.meta.setdefault(_CONNECTION_KEY, {})[_TOKEN_REQUIRED] = token_required
        return _remember(ctx, param, value)

    return decorate


def connection() -> Connection:
    """The connection settings of the running command: ``Config.from_env`` of the
    environment with the options given in place of their variables."""
    values = click.get_current_context().meta[_CONNECTION_KEY]
    environ = dict(os.environ)
    for name, variable in _OPTION_VARIABLES.items():
        value = values.get(name)
        if value is not None:
            environ[variable] = str(value)
    if not environ.get(CONFIG_ENV_VARIABLES["base_url"]):
        raise click.UsageError("Missing option '--base-url' (or PLEXD_BASE_URL).")
    config = Config.from_env(environ)
    if values.get(_TOKEN_REQUIRED, True) and not config.token:
        raise click.UsageError("Missing option '--token' (or PLEXD_TOKEN).")
    if values.get("insecure"):
        config.tls_insecure_skip_verify = True
    return Connection(config)


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
