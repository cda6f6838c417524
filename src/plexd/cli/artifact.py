"""CLI, command layer: ``plexd-api artifact``, download a plexd binary with a progress
bar. The download itself (SHA-256 check, atomic rename, resume) is the library's:
``ControlPlane.fetch_artifact(..., dest=)``."""

from __future__ import annotations

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

from plexd.api import ArtifactDownload, ControlPlane


async def download_artifact(
    client: ControlPlane,
    version: str,
    os_name: str,
    arch: str,
    output: Path,
    *,
    sha256: str | None = None,
    console: Console | None = None,
) -> ArtifactDownload:
    """Download to ``output`` (through ``output.part``, renamed once the SHA-256 matched;
    an interrupted download is resumed by the next one).

    The progress bar goes to ``console`` (default: stderr) when it is a terminal.
    """
    console = console or Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task(output.name, total=None)

        def advance(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        return await client.fetch_artifact(
            version, os_name, arch, dest=output, sha256=sha256, progress=advance
        )
