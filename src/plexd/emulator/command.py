"""Emulator, entry point: the emulator's one command line, behind both
``python -m plexd.emulator`` and ``plexd-api emulator`` (same flags, same output).

Without a subcommand it runs a control plane until Ctrl-C or SIGTERM and prints a banner
(URL, admin API, signing key, bootstrap tokens, CA file, ``export`` lines). The
subcommands drive a running emulator through its admin API (:class:`.AdminClient`):
``nodes``, ``publish``, ``fault``, ``flags``, ``disconnect``, ``rotate-key``, ``seed``.

argparse only (no click): the emulator needs none of the ``cli`` extra. Every failure is
one line on stderr (``PROG: error: ...``) and an exit code: 0 success, 1 failure,
2 usage error, 3 refused (401/403), 4 not found (404), 5 connection failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

import msgspec

from plexd._exits import EXIT_OK, EXIT_USAGE, failure_exit_code, one_line
from plexd.api import Peer, PlexdError, Policy, build_ssl_context

from .admin_client import AdminClient
from .faults import Faults
from .server import Emulator, serve
from .state import (
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_MAX_ARTIFACT_BYTES,
    DEFAULT_MAX_CALLS,
    DEFAULT_MAX_EVENTS,
    DEFAULT_MAX_RECORDED_BYTES,
)

# Where the subcommands look for the emulator when --url is not given.
DEFAULT_URL = "http://127.0.0.1:8080"

_log = logging.getLogger("plexd.emulator")


class UsageError(Exception):
    """A command line that cannot work; its message is the one line printed."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors raised (one line, printed by :func:`main`), not printed
    as usage text and exited."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --- the command line ------------------------------------------------------------------------


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The parser of the emulator's command line, named ``prog`` in help and errors."""
    parser = _Parser(
        prog=prog,
        description="Run a local Plexsphere control plane (in memory) until Ctrl-C, or "
        "drive a running one through its admin API with a subcommand.",
        epilog="Subcommands find the emulator at --url, PLEXD_EMULATOR_URL or PLEXD_BASE_URL "
        f"(default {DEFAULT_URL}), and send --admin-token or PLEXD_ADMIN_TOKEN.",
    )
    serving = parser.add_argument_group("serving")
    serving.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serving.add_argument(
        "--port", type=_port, default=8080, help="port (0: any free port; default 8080)"
    )
    serving.add_argument("--tls", action="store_true", help="serve HTTPS with a generated CA")
    serving.add_argument("--tls-dir", help="where to write ca.pem (default: a temporary dir)")
    serving.add_argument(
        "--bootstrap-token",
        "--token",
        action="append",
        dest="tokens",
        metavar="TOKEN",
        help="a token registration accepts (repeatable; default: one random token)",
    )
    serving.add_argument(
        "--admin-token", help="token of the /_emulator/ admin API (default: loopback only)"
    )
    serving.add_argument(
        "--keepalive",
        type=_positive_float,
        default=DEFAULT_KEEPALIVE_INTERVAL,
        metavar="SECONDS",
        help="seconds between keep-alive comments on idle streams "
        f"(default {DEFAULT_KEEPALIVE_INTERVAL:g})",
    )
    serving.add_argument(
        "--retry-ms", type=_count, metavar="MS", help="send 'retry: MS' at the start of streams"
    )
    serving.add_argument(
        "--no-peer-events",
        dest="peer_events",
        action="store_false",
        help="do not push peer_added/removed/key_rotated/endpoint_changed to other nodes",
    )
    for flag, default, what in (
        ("--max-events", DEFAULT_MAX_EVENTS, "events kept per node for replay"),
        ("--max-calls", DEFAULT_MAX_CALLS, "requests kept in the call record"),
        ("--max-recorded-bytes", DEFAULT_MAX_RECORDED_BYTES, "request body bytes kept in it"),
        ("--max-artifact-bytes", DEFAULT_MAX_ARTIFACT_BYTES, "artifact blob bytes kept"),
    ):
        serving.add_argument(
            flag, type=_count, default=default, metavar="N", help=f"{what} (default {default})"
        )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    _add_subcommands(parser)
    return parser


def _add_subcommands(parser: argparse.ArgumentParser) -> None:
    admin = _Parser(add_help=False)
    admin.add_argument(
        "--url",
        default=os.environ.get("PLEXD_EMULATOR_URL") or os.environ.get("PLEXD_BASE_URL"),
        help="the running emulator's URL",
    )
    admin.add_argument(
        "--admin-token",
        dest="client_admin_token",
        default=os.environ.get("PLEXD_ADMIN_TOKEN"),
        metavar="TOKEN",
        help="its --admin-token, if it has one",
    )
    admin.add_argument(
        "--ca-file",
        default=os.environ.get("PLEXD_CA_FILE"),
        help="its CA file, when it serves --tls",
    )
    sub = parser.add_subparsers(dest="action", metavar="SUBCOMMAND", parser_class=_Parser)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[admin], help=help, description=help)

    add("nodes", "list the nodes, their report counts and the signing keys")

    publish = add("publish", "sign and publish an event to a node")
    publish.add_argument("node", metavar="NODE")
    publish.add_argument("event_type", metavar="TYPE", help="e.g. peer_added")
    publish.add_argument(
        "payload",
        metavar="PAYLOAD",
        nargs="?",
        default="null",
        help="JSON text (default null; - reads it from stdin)",
    )

    fault = add("fault", "set (or --clear) the faults of a node ('*': every node)")
    fault.add_argument("node", metavar="NODE")
    fault.add_argument("--clear", action="store_true", help="switch every fault off first")
    for name in Faults.__struct_fields__:
        kind = str if name in ("status_scope", "retry_after", "malformed_kind") else _count
        fault.add_argument("--" + name.replace("_", "-"), dest="fault_" + name, type=kind)

    flags = add("flags", "set what the node's heartbeats answer")
    flags.add_argument("node", metavar="NODE")
    flags.add_argument("--reconcile", action=argparse.BooleanOptionalAction)
    flags.add_argument("--rotate-keys", action=argparse.BooleanOptionalAction)

    disconnect = add("disconnect", "end the node's open event streams")
    disconnect.add_argument("node", metavar="NODE")

    rotate = add("rotate-key", "rotate the control plane's signing key")
    rotate.add_argument(
        "--transition",
        type=float,
        metavar="SECONDS",
        help="how long the old key stays valid (default 300)",
    )

    seed = add("seed", "add secrets, peers, policies, data and metadata to a node's state")
    seed.add_argument("node", metavar="NODE")
    seed.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a secret, stored encrypted with the node's key (repeatable)",
    )
    seed.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="ID|JSON",
        help="a peer: an id, or a Peer as JSON (repeatable)",
    )
    seed.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="JSON",
        help="a Policy as JSON (repeatable)",
    )
    seed.add_argument(
        "--data", action="append", default=[], metavar="KEY=JSON", help="a data entry (repeatable)"
    )
    seed.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a metadata entry (repeatable)",
    )


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


# --- running it -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, prog: str = "python -m plexd.emulator") -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(prog).parse_args(args_list)
    except UsageError as exc:
        _error(prog, str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    _configure_logging(args.verbose)
    try:
        if args.action is None:
            return _serve(args)
        return _run(_admin_action(args))
    except UsageError as exc:
        _error(prog, str(exc))
        return EXIT_USAGE
    except (PlexdError, OSError, ValueError) as exc:
        _error(prog, str(exc) or type(exc).__name__)
        return failure_exit_code(exc)


def _error(prog: str, message: str) -> None:
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)


def _configure_logging(verbose: bool) -> None:
    plexd_logger = logging.getLogger("plexd")
    if not plexd_logger.handlers and not logging.getLogger().handlers:
        logging.basicConfig(format="%(name)s: %(levelname)s: %(message)s")
    level = logging.INFO if verbose else logging.WARNING
    logging.getLogger("plexd.emulator").setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(level)


def _run(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run ``coroutine``; Ctrl-C or SIGTERM cancel it and end the command with 0."""

    async def interruptible() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, task.cancel)
        try:
            return await coroutine
        except asyncio.CancelledError:
            return EXIT_OK

    try:
        return asyncio.run(interruptible())
    except KeyboardInterrupt:
        return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        "admin_token": args.admin_token,
        "tls_dir": args.tls_dir,
        "keepalive_interval": args.keepalive,
        "retry_ms": args.retry_ms,
        "access_log": args.verbose,
        "peer_events": args.peer_events,
        "max_events": max(args.max_events, 1),
        "max_calls": max(args.max_calls, 1),
        "max_recorded_bytes": args.max_recorded_bytes,
        "max_artifact_bytes": args.max_artifact_bytes,
    }

    async def run() -> int:
        try:
            await serve(
                args.host, args.port, tls=args.tls, tokens=args.tokens, ready=announce, **options
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OSError(f"cannot listen on {args.host}:{args.port}: {reason}") from None
        return EXIT_OK

    code = _run(run())
    print("emulator stopped", file=sys.stderr, flush=True)
    return code


def announce(emulator: Emulator, write: Callable[[str], None] | None = None) -> None:
    """Print the banner of a running emulator: where it is, its admin API, the signing key,
    the bootstrap tokens, the CA file, and ``export`` lines for the ``plexd-api`` commands."""
    say = write or (lambda line: print(line, flush=True))
    say(f"plexd emulator listening on {emulator.url}")
    guard = "bearer --admin-token" if emulator.admin_token else "loopback clients only"
    say(f"admin API: {emulator.admin_url} ({guard})")
    say(f"signing public key: {emulator.signing_public_key}")
    for token in emulator.bootstrap_tokens:
        say(f"bootstrap token: {token}")
    if emulator.ca_file is not None:
        say(f"CA file: {emulator.ca_file}")
    say(f"export PLEXD_BASE_URL={shlex.quote(emulator.url)}")
    say(f"export PLEXD_BOOTSTRAP_TOKEN={shlex.quote(emulator.bootstrap_token)}")
    if emulator.ca_file is not None:
        say(f"export PLEXD_CA_FILE={shlex.quote(str(emulator.ca_file))}")
    say("press Ctrl-C to stop")


# --- the admin subcommands ----------------------------------------------------------------------


async def _admin_action(args: argparse.Namespace) -> int:
    url = args.url or DEFAULT_URL
    async with AdminClient(
        url, args.client_admin_token, ssl_context=_ssl_context(args.ca_file)
    ) as admin:
        result = await _ACTIONS[args.action](admin, args)
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    sys.stdout.flush()
    return EXIT_OK


def _ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    if not ca_file:
        return None
    context = build_ssl_context()
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"--ca-file {ca_file}: not a usable CA certificate: {exc}") from None
    return context


async def _nodes(admin: AdminClient, args: argparse.Namespace) -> Any:
    return await admin.nodes()


async def _publish(admin: AdminClient, args: argparse.Namespace) -> Any:
    text = sys.stdin.read() if args.payload == "-" else args.payload
    payload = _json_argument(text, "PAYLOAD")
    return {"ids": await admin.publish(args.node, args.event_type, payload)}


async def _fault(admin: AdminClient, args: argparse.Namespace) -> Any:
    changes = {
        name: getattr(args, "fault_" + name)
        for name in Faults.__struct_fields__
        if getattr(args, "fault_" + name) is not None
    }
    if args.clear:
        result = await admin.clear_faults(args.node)
        if not changes:
            return result
    elif not changes:
        return await admin.faults(args.node)
    return await admin.set_faults(args.node, **changes)


async def _flags(admin: AdminClient, args: argparse.Namespace) -> Any:
    return await admin.set_flags(args.node, reconcile=args.reconcile, rotate_keys=args.rotate_keys)


async def _disconnect(admin: AdminClient, args: argparse.Namespace) -> Any:
    return {"closed": await admin.disconnect(args.node)}


async def _rotate_key(admin: AdminClient, args: argparse.Namespace) -> Any:
    return await admin.rotate_signing_key(args.transition)


async def _seed(admin: AdminClient, args: argparse.Namespace) -> Any:
    secrets = dict(_pair(item, "--secret") for item in args.secret)
    peers = [_peer(item) for item in args.peer]
    policies = [_typed_json(item, Policy, "--policy") for item in args.policy]
    data = [_pair(item, "--data") for item in args.data]
    metadata = dict(_pair(item, "--metadata") for item in args.metadata)
    if not (secrets or peers or policies or data or metadata):
        raise UsageError("nothing to seed: give --secret, --peer, --policy, --data or --metadata")
    result: dict[str, Any] = {"node": args.node}
    if metadata:
        result["metadata"] = await admin.set_metadata(args.node, metadata)
    if policies:
        result["policies"] = await admin.put_policies(args.node, policies)
    for key, text in data:
        entry = await admin.put_data(args.node, key, _json_argument(text, "--data"))
        result.setdefault("data", []).append({"key": key, "version": entry["version"]})
    if peers:
        result["peers"] = await admin.add_peers(args.node, peers)
    if secrets:
        versions = await admin.put_secrets(args.node, secrets)
        result["secrets"] = [{"key": key, "version": v} for key, v in versions.items()]
    return result


_ACTIONS: dict[str, Callable[[AdminClient, argparse.Namespace], Coroutine[Any, Any, Any]]] = {
    "nodes": _nodes,
    "publish": _publish,
    "fault": _fault,
    "flags": _flags,
    "disconnect": _disconnect,
    "rotate-key": _rotate_key,
    "seed": _seed,
}


def _pair(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        # Not echoed: the value may be a secret.
        raise UsageError(f"{flag} wants KEY=VALUE")
    return key, value


def _json_argument(text: str, what: str) -> msgspec.Raw:
    """JSON text given on the command line, checked, sent as written."""
    try:
        msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError):
        raise UsageError(f"{what} is not JSON") from None
    return msgspec.Raw(text.encode())


def _typed_json(text: str, type_: type[Any], flag: str) -> Any:
    try:
        return msgspec.json.decode(text, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise UsageError(f"{flag}: not a {type_.__name__} as JSON: {exc}") from None


def _peer(text: str) -> Peer:
    if text.lstrip().startswith("{"):
        peer: Peer = _typed_json(text, Peer, "--peer")
        return peer
    return Peer(id=text)
