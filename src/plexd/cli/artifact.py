"""CLI, command layer: ``plexd-api artifact``, download a plexd binary with a progress
bar, SHA-256 checked."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from plexd.api import CHECKSUM_HEADER, ChecksumError, ControlPlane

# Suffix of the file a download is written to until its checksum matched.
PARTIAL_SUFFIX = ".part"


@dataclass(frozen=True)
class Download:
    """A finished, verified download."""

    path: Path
    size: int
    sha256: str


def expected_digest(header: str | None, given: str | None) -> str:
    """The SHA-256 the download must have: ``given`` (--sha256) or the server's header,
    which must agree when both are there."""
    announced = (header or "").strip().lower() or None
    wanted = (given or "").strip().lower() or None
    if announced and wanted and announced != wanted:
        raise ChecksumError(
            f"the server announces SHA-256 {announced}, not the {wanted} given with --sha256"
        )
    digest = wanted or announced
    if digest is None:
        raise ChecksumError(
            f"the server sent no {CHECKSUM_HEADER} header; pass the expected digest with --sha256"
        )
    return digest


async def download_artifact(
    client: ControlPlane,
    version: str,
    os_name: str,
    arch: str,
    output: Path,
    *,
    sha256: str | None = None,
    console: Console | None = None,
) -> Download:
    """Download to ``output`` (through ``output.part``, renamed once the SHA-256 matched).

    The progress bar goes to ``console`` (default: stderr) when it is a terminal.
    """
    console = console or Console(stderr=True)
    partial = output.with_name(output.name + PARTIAL_SUFFIX)
    async with client.fetch_artifact(version, os_name, arch) as stream:
        wanted = expected_digest(stream.headers.get(CHECKSUM_HEADER), sha256)
        digest = hashlib.sha256()
        size = 0
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        try:
            with progress, partial.open("wb") as file:
                task = progress.add_task(output.name, total=stream.content_length)
                async for chunk in stream.iter_chunks():
                    file.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    progress.update(task, advance=len(chunk))
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
    got = digest.hexdigest()
    if got != wanted:
        partial.unlink(missing_ok=True)
        raise ChecksumError(f"SHA-256 mismatch: downloaded {got}, expected {wanted}; not saved")
    os.replace(partial, output)
    return Download(output, size, got)
