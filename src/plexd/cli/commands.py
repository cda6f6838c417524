"""CLI, command layer: the click commands of ``plexd-api`` (imported only when the
command runs). Each command parses its options, makes its call through
:mod:`.connection` and prints through :mod:`.output`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shlex
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import nacl.public

from plexd.api import (
    ConfigError,
    Ed25519Verifier,
    EventVerifier,
    HeartbeatRequest,
    NoOpVerifier,
    RegisterRequest,
    __version__,
    decrypt_secret,
    shown_url,
)

from .connection import (
    LOGGER,
    call_control_plane,
    connection,
    connection_options,
    run_until_interrupted,
)
from .errors import EXIT_CODES_HELP, PROG
from .output import OneLineFormatter, StreamEndingFailureFilter, json_document

EPILOG = f"""\b
Environment:
  PLEXD_BASE_URL         --base-url
  PLEXD_TOKEN            --token (the node's token, from register)
  PLEXD_NODE_ID          --node-id
  PLEXD_VERIFY_KEY       watch --verify-key (the signing key, from register)
  PLEXD_BOOTSTRAP_TOKEN  register --bootstrap-token
  PLEXD_CA_FILE          --ca-file
  PLEXD_TIMEOUT          --timeout
  PLEXD_MAX_RETRIES      retries of a failed request (default 2, 0: none)
  PLEXD_CLIENT_CERT      client certificate (PEM) for mutual TLS
  PLEXD_CLIENT_KEY       its private key (PEM, unencrypted), if not in the certificate file
  PLEXD_PROXY            an http:// proxy for every request
  PLEXD_TRUST_ENV=1      use HTTPS_PROXY / HTTP_PROXY / NO_PROXY
  PLEXD_LOG=debug|info   the library's log lines on stderr
  PLEXD_DEBUG=1          print the traceback of an unexpected error

\b
{EXIT_CODES_HELP}"""

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# --- shared options and output ---------------------------------------------------------


node_id_option = click.option(
    "--node-id",
    envvar="PLEXD_NODE_ID",
    show_envvar=True,
    required=True,
    metavar="ID",
    help="The node's id (register prints it).",
)
show_secrets_option = click.option(
    "--show-secrets",
    is_flag=True,
    help="Print secret fields (tokens, pre-shared keys, ciphertext) instead of ***.",
)


def _print_json(value: Any, show_secrets: bool = False) -> None:
    click.echo(json_document(value, show_secrets=show_secrets))


def _configure_logging(verbose: int) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(PROG))
    handler.addFilter(StreamEndingFailureFilter())
    logger = logging.getLogger(LOGGER)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


# --- the commands -------------------------------------------------------------------------


@click.group(context_settings=_CONTEXT, epilog=EPILOG, no_args_is_help=True)
@click.version_option(__version__, "-V", "--version", prog_name=PROG)
@click.option("-v", "--verbose", count=True, help="Log more (-v: connection changes, -vv: all).")
def cli(verbose: int) -> None:
    """Talk to a Plexsphere control plane as a node: register, heartbeat, fetch state and
    secrets, watch the signed event stream, download artifacts; or run a local emulator."""
    _configure_logging(verbose)


def command(f: Callable[..., Any]) -> click.Command:
    """A subcommand of ``plexd-api`` with the shared epilog."""
    return cli.command(epilog=EPILOG)(f)


@cli.command(
    epilog=EPILOG,
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def emulator(arguments: tuple[str, ...]) -> int:
    """Run a local control plane (in memory) until Ctrl-C, or drive a running one: nodes,
    publish, fault, flags, disconnect, rotate-key, seed.

    The same command as `python -m plexd.emulator`; see `plexd-api emulator --help`.
    """
    from plexd.emulator.command import main as emulator_main

    return emulator_main(arguments, prog=f"{PROG} emulator")


@command
@connection_options(token_required=False)
def ping() -> None:
    """Check that the control plane answers (GET /v1/ping)."""
    call_control_plane(lambda client: client.ping())
    click.echo(f"{shown_url(connection().base_url)} is up")


@command
@connection_options(token=False, token_required=False)
@click.option(
    "--bootstrap-token",
    envvar="PLEXD_BOOTSTRAP_TOKEN",
    show_envvar=True,
    required=True,
    metavar="TOKEN",
    help="The one-time token that allows registering.",
)
@click.option("--hostname", default=socket.gethostname, help="[default: this machine's name]")
@click.option(
    "--public-key",
    help="The node's WireGuard public key, base64 (default: a throwaway random key).",
)
@click.option(
    "-m",
    "--metadata",
    multiple=True,
    metavar="KEY=VALUE",
    help="Metadata to register with (repeatable).",
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the node's settings (the export lines, token included) to FILE, readable "
    "by its owner only, instead of stderr; errors still show on stderr.",
)
@show_secrets_option
def register(
    bootstrap_token: str,
    hostname: str,
    public_key: str | None,
    metadata: tuple[str, ...],
    env_file: Path | None,
    show_secrets: bool,
) -> None:
    """Register a node; prints the registration as JSON.

    The node's token is printed once, on stderr, as an `export PLEXD_TOKEN=...` line next
    to PLEXD_NODE_ID and PLEXD_VERIFY_KEY (nothing is stored); with --show-secrets it is in
    the JSON instead. Keep it: the control plane does not show it again. With --env-file
    the export lines go to that file instead (`. ./node.env` reads them back).
    """
    request = RegisterRequest(
        token=bootstrap_token,
        public_key=public_key or _throwaway_public_key(),
        hostname=hostname,
        metadata=_parse_metadata(metadata),
    )
    response = call_control_plane(lambda client: client.register(request))
    _print_json(response, show_secrets)
    exports = {"PLEXD_NODE_ID": response.node_id}
    if not show_secrets or env_file is not None:
        exports["PLEXD_TOKEN"] = response.node_secret_key
    exports["PLEXD_VERIFY_KEY"] = response.signing_public_key
    lines = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in exports.items())
    if env_file is not None:
        _write_private(env_file, lines)
        click.echo(f"# the node's settings are in {env_file} (the token only there)", err=True)
        return
    click.echo(
        "# the node's settings for the other commands (the token is shown only here):", err=True
    )
    click.echo(lines, err=True, nl=False)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable and writable by its owner only, even when it
    was there before with a wider mode."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
    except OSError as error:
        raise click.ClickException(f"{path}: {error.strerror}") from None


def _throwaway_public_key() -> str:
    key = nacl.public.PrivateKey.generate().public_key
    return base64.b64encode(bytes(key)).decode("ascii")


def _parse_metadata(pairs: tuple[str, ...]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="'--metadata'")
        metadata[key] = value
    return metadata


@command
@connection_options()
@node_id_option
@click.option("--status", default="healthy", show_default=True, help="The node's status.")
@click.option("--uptime", default="", help="How long the node has been up, e.g. 3h2m.")
@click.option("--binary-checksum", default="", help="Checksum of the running plexd binary.")
def heartbeat(node_id: str, status: str, uptime: str, binary_checksum: str) -> None:
    """Send a heartbeat; prints the answer (reconcile, rotate_keys) as JSON."""
    request = HeartbeatRequest(
        node_id=node_id,
        timestamp=datetime.now(UTC),
        status=status,
        uptime=uptime,
        binary_checksum=binary_checksum,
    )
    _print_json(call_control_plane(lambda client: client.heartbeat(node_id, request)))


@command
@connection_options()
@node_id_option
@show_secrets_option
def state(node_id: str, show_secrets: bool) -> None:
    """Fetch the node's desired state; prints it as JSON (peers' psk masked)."""
    _print_json(call_control_plane(lambda client: client.fetch_state(node_id)), show_secrets)


@command
@connection_options()
@node_id_option
@click.argument("key")
@show_secrets_option
@click.option(
    "--decrypt",
    is_flag=True,
    help="Print the secret's value instead (its exact bytes), decrypted with the node's "
    "token, its node_secret_key (needs the 'cryptography' package).",
)
def secret(node_id: str, key: str, show_secrets: bool, decrypt: bool) -> None:
    """Fetch the secret KEY; prints it as JSON (ciphertext masked), or with --decrypt its
    value."""
    fetched = call_control_plane(lambda client: client.fetch_secret(node_id, key))
    if not decrypt:
        _print_json(fetched, show_secrets)
        return
    value = decrypt_secret(connection().config.token, fetched)
    sys.stdout.buffer.write(value)
    sys.stdout.buffer.flush()


@command
@connection_options()
@node_id_option
def deregister(node_id: str) -> None:
    """Deregister the node: its token stops working."""
    call_control_plane(lambda client: client.deregister(node_id))
    click.echo(f"node {node_id} deregistered")


@command
@connection_options()
@node_id_option
@click.option(
    "--verify-key",
    envvar="PLEXD_VERIFY_KEY",
    show_envvar=True,
    metavar="KEY",
    help="The control plane's signing public key, base64 (register prints it).",
)
@click.option("--no-verify", is_flag=True, help="Accept events unverified (testing only).")
@click.option("--last-event-id", default="", help="Resume after this event id.")
@click.option(
    "-n", "--count", type=click.IntRange(min=1), help="Exit after printing this many events."
)
@show_secrets_option
@click.option(
    "--reconnect-delay",
    type=click.FloatRange(min=0.001),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="First wait before reconnecting; doubles per failure.",
)
@click.option(
    "--max-reconnect-delay",
    type=click.FloatRange(min=0.001),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest wait between reconnects.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    default=0,
    metavar="SECONDS",
    help="Reconnect when the stream is silent this long (0: 90 s).",
)
def watch(
    node_id: str,
    verify_key: str | None,
    no_verify: bool,
    last_event_id: str,
    count: int | None,
    reconnect_delay: float,
    max_reconnect_delay: float,
    idle_timeout: float,
    show_secrets: bool,
) -> None:
    """Stream the node's events, one JSON line each (event_type, event_id, issued_at,
    payload), until Ctrl-C.

    Secret fields in a payload (psk, ciphertext, tokens, keys named like a secret) show
    as *** unless --show-secrets.

    Every event's signature is checked with --verify-key; a signing_key_rotated event
    switches to the new key. Events that fail verification are skipped with a warning on
    stderr. Dropped connections are resumed where they stopped (Last-Event-ID).
    """
    verifier = _verifier(verify_key, no_verify)
    conn = connection()

    async def stream() -> None:
        from .watch import watch_events

        async with conn.client(sse_idle_timeout=idle_timeout) as client:
            await watch_events(
                client,
                node_id,
                verifier,
                logging.getLogger(LOGGER),
                last_event_id=last_event_id,
                limit=count,
                reconnect_delay=reconnect_delay,
                max_reconnect_delay=max_reconnect_delay,
                show_secrets=show_secrets,
            )

    run_until_interrupted(stream())


def _verifier(verify_key: str | None, no_verify: bool) -> EventVerifier:
    if no_verify:
        if verify_key:
            raise click.UsageError("--no-verify and --verify-key exclude each other")
        logging.getLogger(LOGGER).warning("event signatures are NOT verified (--no-verify)")
        return NoOpVerifier()
    if not verify_key:
        raise click.UsageError(
            "--verify-key (or PLEXD_VERIFY_KEY) is required: the signing key register "
            "printed; --no-verify skips verification"
        )
    try:
        return Ed25519Verifier(verify_key, logger=logging.getLogger(LOGGER))
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--verify-key'") from None


@command
@connection_options()
@click.argument("version")
@click.argument("os_name", metavar="OS")
@click.argument("arch")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Where to write it [default: ./plexd-VERSION-OS-ARCH].",
)
@click.option("--sha256", metavar="HEX", help="The expected SHA-256 (besides the server's).")
def artifact(
    version: str, os_name: str, arch: str, output: Path | None, sha256: str | None
) -> None:
    """Download the plexd binary VERSION for OS/ARCH, checking its SHA-256 against the
    server's checksum header; nothing is left at --output when it does not match."""
    from .artifact import download_artifact

    target = output or Path(f"plexd-{version}-{os_name}-{arch}")
    done = call_control_plane(
        lambda client: download_artifact(client, version, os_name, arch, target, sha256=sha256)
    )
    click.echo(f"wrote {done.path} ({done.size} bytes, SHA-256 {done.sha256} verified)")


@command
def demo() -> int:
    """Run the library end to end against an in-process emulator (what `make demo` runs).

    Exits 0 when every step met its expectations, 1 otherwise.
    """
    from rich.console import Console
    from rich.text import Text

    from .demo import FAIL, OK, run_demo

    console = Console(highlight=False, soft_wrap=True)
    styles = {OK: "green", FAIL: "bold red"}

    def say(line: str) -> None:
        text = Text(line)
        for marker, style in styles.items():
            if line.startswith(marker):
                text.stylize(style, 0, len(marker))
        console.print(text)

    report = asyncio.run(run_demo(say))
    return 0 if report.passed else 1
