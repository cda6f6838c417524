"""fetch_artifact(..., dest=): a download to a file, atomic, SHA-256 checked, resumed
with Range. Against the emulator (which answers Range with the whole artifact) and a
loopback server of the test's own that honours Range, cuts connections, answers 416."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from plexd.api import (
    CHECKSUM_HEADER,
    APIConnectionError,
    ArgumentError,
    ArtifactDownload,
    ChecksumError,
    PlexdError,
)
from plexd.emulator import Emulator

BLOB = bytes(range(256)) * 1024  # 256 KiB
DIGEST = hashlib.sha256(BLOB).hexdigest()
ARTIFACT = ("1.2.3", "linux", "amd64")


def listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


class RangeServer:
    """Serves BLOB at any path, honouring ``Range: bytes=N-`` (unless ``honour_range`` is
    off); the next ``cuts`` responses break off after ``cut_after`` body bytes."""

    def __init__(
        self,
        blob: bytes = BLOB,
        *,
        honour_range: bool = True,
        checksum: str | None = DIGEST,
        cuts: int = 0,
        cut_after: int = 0,
        start_at: int | None = None,
    ) -> None:
        self.blob = blob
        self.honour_range = honour_range
        self.checksum = checksum
        self.cuts = cuts
        self.cut_after = cut_after
        self.start_at = start_at
        self.ranges: list[str | None] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        asked = request.headers.get("Range")
        self.ranges.append(asked)
        headers = {"Content-Type": "application/octet-stream"}
        if self.checksum is not None:
            headers[CHECKSUM_HEADER] = self.checksum
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", asked or "")
        if match and self.honour_range:
            start = int(match[1]) if self.start_at is None else self.start_at
            if start >= len(self.blob):
                headers["Content-Range"] = f"bytes */{len(self.blob)}"
                return web.Response(status=416, headers=headers)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(self.blob) - 1}/{len(self.blob)}"
        body = self.blob[start:]
        headers["Content-Length"] = str(len(body))
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if self.cuts:
            self.cuts -= 1
            await response.write(body[: self.cut_after])
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(body)
        await response.write_eof()
        return response


async def serve(loopback: Any, range_server: RangeServer, **config: Any) -> Any:
    server = await loopback(range_server.handle)
    return server.client(**config)


# --- against the emulator --------------------------------------------------------------------


async def test_a_download_from_the_emulator_lands_whole_and_checked(
    control_plane: Emulator, tmp_path: Path
) -> None:
    _, token = control_plane.register_node("web-1")
    dest = tmp_path / "plexd"
    progress: list[tuple[int, int | None]] = []
    async with control_plane.client(token) as client:
        done = await client.fetch_artifact(
            *ARTIFACT, dest=dest, progress=lambda got, total: progress.append((got, total))
        )
    blob = control_plane.artifact(*ARTIFACT)
    assert done == ArtifactDownload(dest, len(blob), hashlib.sha256(blob).hexdigest(), 0)
    assert dest.read_bytes() == blob
    assert listing(tmp_path) == ["plexd"]
    assert progress[0] == (0, len(blob))
    assert progress[-1] == (len(blob), len(blob))
    assert [got for got, _ in progress] == sorted(got for got, _ in progress)


async def test_a_wrong_sha256_leaves_nothing(control_plane: Emulator, tmp_path: Path) -> None:
    _, token = control_plane.register_node("web-1")
    async with control_plane.client(token) as client:
        with pytest.raises(ChecksumError, match=r"0{64}"):
            await client.fetch_artifact(*ARTIFACT, dest=tmp_path / "plexd", sha256="0" * 64)
    assert listing(tmp_path) == []


async def test_a_partial_download_from_the_emulator_is_resumed(
    control_plane: Emulator, tmp_path: Path
) -> None:
    _, token = control_plane.register_node("web-1")
    blob = control_plane.artifact(*ARTIFACT)
    dest = tmp_path / "plexd"
    (tmp_path / "plexd.part").write_bytes(blob[:1000])
    async with control_plane.client(token) as client:
        done = await client.fetch_artifact(*ARTIFACT, dest=dest)
    assert done.resumed_from == 1000
    assert dest.read_bytes() == blob
    assert control_plane.calls[-1].headers.get("Range") == "bytes=1000-"
    assert listing(tmp_path) == ["plexd"]


async def test_a_stale_partial_file_is_replaced_after_the_check_fails(
    control_plane: Emulator, tmp_path: Path
) -> None:
    _, token = control_plane.register_node("web-1")
    dest = tmp_path / "plexd"
    (tmp_path / "plexd.part").write_bytes(b"stale bytes of another download")
    async with control_plane.client(token) as client:
        done = await client.fetch_artifact(*ARTIFACT, dest=dest)
    assert done.resumed_from == 0
    assert dest.read_bytes() == control_plane.artifact(*ARTIFACT)
    assert listing(tmp_path) == ["plexd"]


# --- against a server that honours Range -------------------------------------------------------


async def test_a_partial_download_is_resumed_with_range(loopback: Any, tmp_path: Path) -> None:
    server = RangeServer()
    dest = tmp_path / "plexd"
    (tmp_path / "plexd.part").write_bytes(BLOB[:100_000])
    async with await serve(loopback, server) as client:
        done = await client.fetch_artifact(*ARTIFACT, dest=dest)
    assert server.ranges == ["bytes=100000-"]
    assert done == ArtifactDownload(dest, len(BLOB), DIGEST, 100_000)
    assert dest.read_bytes() == BLOB
    assert listing(tmp_path) == ["plexd"]


async def test_a_server_that_ignores_range_restarts_the_download(
    loopback: Any, tmp_path: Path
) -> None:
    server = RangeServer(honour_range=False)
    dest = tmp_path / "plexd"
    (tmp_path / "plexd.part").write_bytes(b"x" * 300_000)  # longer than the artifact
    async with await serve(loopback, server) as client:
        done = await client.fetch_artifact(*ARTIFACT, dest=dest)
    assert done.resumed_from == 0
    assert dest.read_bytes() == BLOB


async def test_a_resumed_file_that_fails_the_check_is_downloaded_again_whole(
    loopback: Any, tmp_path: Path
) -> None:
    server = RangeServer()
    dest = tmp_path / "plexd"
    (tmp_path / "plexd.part").write_bytes(b"\xff" * 1000)  # not the artifact's first bytes
    async with await serve(loopback, server) as client:
        done = await client.fetch_artifact(*ARTIFACT, dest=dest)
    assert server.ranges == ["bytes=1000-", None]
    assert done.resumed_from == 0
    assert dest.read_bytes() == BLOB


async def test_a_range_the_server_does_not_start_where_asked_is_not_spliced(
    loopback: Any, tmp_path: Path
) -> None:
    server = RangeServer(start_at=10)
    (tmp_path / "plexd.part").write_bytes(BLOB[:1000])
    async with await serve(loopback, server) as client:
        done = await client.fetch_artifact(*ARTIFACT, dest=tmp_path / "plexd")
    assert server.ranges == ["bytes=1000-", None]
    assert (tmp_path / "plexd").read_bytes() == BLOB
    assert done.resumed_from == 0


async def test_416_for_a_complete_partial_file_with_the_digest_given_just_renames(
    loopback: Any, tmp_path: Path
) -> None:
    server = RangeServer()
    (tmp_path / "plexd.part").write_bytes(BLOB)
    async with await serve(loopback, server) as client:
        done = await client.fetch_artifact(*ARTIFACT, dest=tmp_path / "plexd", sha256=DIGEST)
    assert server.ranges == [f"bytes={len(BLOB)}-"]
    assert done == ArtifactDownload(tmp_path / "plexd", len(BLOB), DIGEST, len(BLOB))
    assert listing(tmp_path) == ["plexd"]


async def test_416_without_a_known_digest_starts_over(loopback: Any, tmp_path: Path) -> None:
    server = RangeServer()
    (tmp_path / "plexd.part").write_bytes(b"y" * (len(BLOB) + 5))
    async with await serve(loopback, server) as client:
        done = await client.fetch_artifact(*ARTIFACT, dest=tmp_path / "plexd")
    assert server.ranges == [f"bytes={len(BLOB) + 5}-", None]
    assert (tmp_path / "plexd").read_bytes() == BLOB
    assert done.resumed_from == 0


async def test_a_broken_transfer_is_retried_from_where_it_broke(
    loopback: Any, tmp_path: Path
) -> None:
    server = RangeServer(cuts=2, cut_after=70_000)
    async with await serve(loopback, server) as client:
        done = await client.fetch_artifact(*ARTIFACT, dest=tmp_path / "plexd")
    assert server.ranges[0] is None
    # Each attempt went on from the bytes the earlier ones wrote.
    resumed = [int(r.removeprefix("bytes=").rstrip("-")) for r in server.ranges[1:] if r]
    assert len(resumed) == 2
    assert 0 < resumed[0] < resumed[1] < len(BLOB)
    assert done.resumed_from == resumed[1]
    assert (tmp_path / "plexd").read_bytes() == BLOB


async def test_without_retries_a_broken_transfer_keeps_its_partial_file(
    loopback: Any, tmp_path: Path
) -> None:
    server = RangeServer(cuts=1, cut_after=70_000)
    async with await serve(loopback, server) as client:
        with pytest.raises(APIConnectionError):
            await client.fetch_artifact(*ARTIFACT, dest=tmp_path / "plexd", max_retries=0)
        kept = (tmp_path / "plexd.part").read_bytes()
        assert listing(tmp_path) == ["plexd.part"]
        assert 0 < len(kept) <= 70_000
        assert kept == BLOB[: len(kept)]
        done = await client.fetch_artifact(*ARTIFACT, dest=tmp_path / "plexd")
    assert done.resumed_from == len(kept)
    assert listing(tmp_path) == ["plexd"]


async def test_no_digest_from_anyone_is_refused(loopback: Any, tmp_path: Path) -> None:
    server = RangeServer(checksum=None)
    async with await serve(loopback, server) as client:
        with pytest.raises(ChecksumError, match=CHECKSUM_HEADER):
            await client.fetch_artifact(*ARTIFACT, dest=tmp_path / "plexd")
        done = await client.fetch_artifact(*ARTIFACT, dest=tmp_path / "plexd", sha256=DIGEST)
    assert done.sha256 == DIGEST


async def test_arguments_of_a_download_are_checked(loopback: Any, tmp_path: Path) -> None:
    server = RangeServer()
    async with await serve(loopback, server) as client:
        with pytest.raises(ArgumentError, match="sha256"):
            await client.fetch_artifact(*ARTIFACT, dest=tmp_path / "plexd", sha256="abc")
        with pytest.raises(ArgumentError, match="dest="):
            client.fetch_artifact(*ARTIFACT, sha256=DIGEST)  # type: ignore[call-overload]
    assert server.ranges == []


async def test_a_destination_that_cannot_be_written_is_a_plexd_error(
    loopback: Any, tmp_path: Path
) -> None:
    server = RangeServer()
    async with await serve(loopback, server) as client:
        with pytest.raises(PlexdError, match="cannot write") as caught:
            await client.fetch_artifact(*ARTIFACT, dest=tmp_path / "missing-dir" / "plexd")
    assert isinstance(caught.value.__cause__, FileNotFoundError)
