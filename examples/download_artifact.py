"""Download a plexd binary with its SHA-256 checked, written atomically, resumed with
Range when a partial download is there from an earlier try.

    PLEXD_BASE_URL=... PLEXD_TOKEN=... python examples/download_artifact.py 1.2.3 linux amd64 plexd

The digest comes from the server's X-Checksum-SHA256 header, or from --sha256 HEX.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from plexd.api import ChecksumError, Config, ControlPlane


async def main(args: argparse.Namespace) -> int:
    def progress(done: int, total: int | None) -> None:
        if total:
            print(f"\r{done * 100 // total:3d}% of {total} bytes", end="", file=sys.stderr)

    async with ControlPlane(Config.from_env(), "1.0.0") as cp:  # PLEXD_BASE_URL, PLEXD_TOKEN
        try:
            done = await cp.fetch_artifact(
                args.version, args.os, args.arch,
                dest=args.dest, sha256=args.sha256, progress=progress,
            )  # fmt: skip
        except ChecksumError as error:
            print(f"\nrefused: {error}", file=sys.stderr)
            return 1
    print(file=sys.stderr)
    resumed = f", resumed at byte {done.resumed_from}" if done.resumed_from else ""
    print(f"{done.path}: {done.size} bytes, sha256 {done.sha256}{resumed}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version")
    parser.add_argument("os")
    parser.add_argument("arch")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--sha256", help="the expected digest (hex), if not the server's")
    sys.exit(asyncio.run(main(parser.parse_args())))
