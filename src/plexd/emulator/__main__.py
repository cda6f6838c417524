"""Emulator, entry point: ``python -m plexd.emulator`` runs a local control plane until
interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from .server import Emulator, serve
from .state import DEFAULT_KEEPALIVE_INTERVAL


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of the emulator."""
    parser = argparse.ArgumentParser(
        prog="python -m plexd.emulator",
        description="Run a local Plexsphere control plane (in-memory) for development.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a generated CA")
    parser.add_argument("--tls-dir", help="where to write ca.pem (default: a temporary dir)")
    parser.add_argument(
        "--token",
        action="append",
        dest="tokens",
        metavar="TOKEN",
        help="a bootstrap token registration accepts (repeatable; default: one random token)",
    )
    parser.add_argument(
        "--admin-token", help="token of the /_emulator/ admin API (default: loopback only)"
    )
    parser.add_argument(
        "--keepalive",
        type=float,
        default=DEFAULT_KEEPALIVE_INTERVAL,
        help="seconds between keep-alive comments on idle streams",
    )
    parser.add_argument("--retry-ms", type=int, help="send 'retry: MS' at the start of streams")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser.parse_args(argv)


def _announce(emulator: Emulator, show_tokens: bool) -> None:
    print(f"plexd emulator listening on {emulator.url}", flush=True)
    if show_tokens:
        print(f"bootstrap token: {emulator.bootstrap_token}", flush=True)
    print(f"signing public key: {emulator.signing_public_key}", flush=True)
    if emulator.ca_file is not None:
        print(f"CA certificate: {emulator.ca_file}", flush=True)


async def _run(args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    await serve(
        args.host,
        args.port,
        tls=args.tls,
        tokens=args.tokens,
        ready=lambda emulator: _announce(emulator, show_tokens=not args.tokens),
        admin_token=args.admin_token,
        tls_dir=args.tls_dir,
        keepalive_interval=args.keepalive,
        retry_ms=args.retry_ms,
        access_log=args.verbose,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run until Ctrl-C or SIGTERM."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
