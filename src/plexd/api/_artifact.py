"""Facade helper of ``_client``: downloading an artifact to a file, atomically, its
SHA-256 checked, resuming a partial download with ``Range``.

The file is written as ``<dest>.part`` beside ``dest`` and renamed to ``dest`` (one
``os.replace``, so ``dest`` is never half-written) only once the SHA-256 of the whole
file matched. A download that ends early (a broken connection, a timeout, a
cancellation) keeps ``<dest>.part``; the next download to the same ``dest`` asks for
the rest with ``Range: bytes=<size>-``. The partial file is trusted only that far: the
server must answer 206 with a ``Content-Range`` starting at exactly that byte, and the
SHA-256 of the whole file decides. A resumed file that fails the check is downloaded
again from the start, once; a full download that fails it raises ChecksumError and
keeps nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ._http import ArtifactStream, failure_of
from ._retry import log_retry, retry_delay
from .errors import APIError, ArgumentError, ChecksumError, PlexdError, ResponseError, printable

CHECKSUM_HEADER = "X-Checksum-SHA256"
"""The response header of an artifact download carrying its SHA-256, hex, when the
server knows it (WIRE.md)."""
# Suffix of the file a download is written to until its checksum matched.
PARTIAL_SUFFIX = ".part"
# No artifact is larger: a server that sends more fills no disk.
MAX_ARTIFACT_SIZE = 2 * 1024**3
_HASH_READ = 1024 * 1024
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# RFC 9110: "bytes first-last/complete-length" (complete length may be "*").
_CONTENT_RANGE = re.compile(r"bytes\s+(\d{1,19})-(\d{1,19})/(\d{1,19}|\*)")

Progress = Callable[[int, int | None], object]
OpenArtifact = Callable[[dict[str, str]], contextlib.AbstractAsyncContextManager[ArtifactStream]]


@dataclass(frozen=True)
class ArtifactDownload:
    """A finished, verified download: where it is, its size, its SHA-256 (hex), and the
    byte it was resumed from (0: downloaded whole)."""

    path: Path
    size: int
    sha256: str
    resumed_from: int = 0


class _StartOver(Exception):
    """The partial file cannot be continued: download the artifact from its first byte."""


@dataclass
class RetrySettings:
    """How failed attempts of a download are retried (the client's retry rules)."""

    max_retries: int
    base: float
    cap: float
    random: Callable[[], float]
    log: logging.Logger


def expected_digest(header: str | None, given: str | None) -> str:
    """The SHA-256 the download must have: ``given`` or the server's header, which must
    agree when both are there."""
    announced = (header or "").strip().lower() or None
    wanted = (given or "").strip().lower() or None
    if announced is not None and not _SHA256_HEX.fullmatch(announced):
        raise ResponseError(
            f"the server's {CHECKSUM_HEADER} is not a SHA-256 in hex: {printable(announced[:80])!r}"
        )
    if announced and wanted and announced != wanted:
        raise ChecksumError(
            f"the server announces SHA-256 {announced}, not the {wanted} given with sha256="
        )
    digest = wanted or announced
    if digest is None:
        raise ChecksumError(
            f"the server sent no {CHECKSUM_HEADER} header; pass the expected digest (sha256=)"
        )
    return digest


def check_sha256_argument(sha256: object) -> str | None:
    """``sha256`` as given to fetch_artifact: None or 64 hex digits (any case)."""
    if sha256 is None:
        return None
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256.strip().lower()):
        raise ArgumentError("sha256: must be a SHA-256 in hex (64 hex digits)")
    return sha256.strip().lower()


def partial_path(dest: Path) -> Path:
    """Where the download to ``dest`` is written until it is verified."""
    return dest.with_name(dest.name + PARTIAL_SUFFIX)


async def download(
    open_artifact: OpenArtifact,
    dest: Path,
    *,
    sha256: str | None,
    progress: Progress | None,
    retry: RetrySettings,
    what: str,
) -> ArtifactDownload:
    """Download to ``dest`` (see the module's docstring), retrying a failed attempt as the
    client's rules say; an attempt resumes from what the earlier ones wrote."""
    attempt = 1
    started_over = False
    while True:
        try:
            return await _attempt(open_artifact, dest, sha256, progress, what)
        except OSError as exc:
            # The file, not the network (that is mapped to PlexdErrors already): a
            # directory that does not exist, no permission, a full disk.
            detail = exc.strerror or str(exc) or type(exc).__name__
            raise PlexdError(f"{what}: cannot write {partial_path(dest)}: {detail}") from exc
        except _StartOver:
            # Once: a second start-over would mean the server cannot serve what it
            # announces; the full download's check then raises instead.
            partial_path(dest).unlink(missing_ok=True)
            if started_over:
                raise ChecksumError(f"{what}: cannot get a verified copy") from None
            started_over = True
            continue
        except PlexdError as error:
            delay = retry_delay(
                failure_of(error),
                attempt=attempt,
                max_retries=retry.max_retries,
                idempotent=True,
                remaining=math.inf,
                random=retry.random,
                base=retry.base,
                cap=retry.cap,
            )
            if delay is None:
                raise
            attempt += 1
            log_retry(retry.log, what, error, attempt, retry.max_retries + 1, delay)
        await asyncio.sleep(delay)


async def _attempt(
    open_artifact: OpenArtifact,
    dest: Path,
    sha256: str | None,
    progress: Progress | None,
    what: str,
) -> ArtifactDownload:
    partial = partial_path(dest)
    offset = _partial_size(partial)
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        async with open_artifact(headers) as stream:
            wanted = expected_digest(stream.headers.get(CHECKSUM_HEADER), sha256)
            start, total = _where_it_starts(stream, offset, what)
            digest = hashlib.sha256()
            with partial.open("r+b" if start else "wb") as file:
                if start:
                    _hash_prefix(file, start, digest)
                size = await _write_body(stream, file, digest, start, total, progress, what)
                file.flush()
                # On disk before the rename makes it the artifact. (In the loop's thread:
                # a worker thread could outlive a cancellation and sync a reused fd.)
                os.fsync(file.fileno())
    except APIError as error:
        if error.status_code == 416 and offset:
            # The partial file is as long as the artifact, or longer: only the check of
            # what we have can tell whether it is complete.
            if sha256 is not None and _file_sha256(partial) == sha256:
                os.replace(partial, dest)
                return ArtifactDownload(dest, offset, sha256, offset)
            raise _StartOver from None
        raise
    got = digest.hexdigest()
    if got != wanted:
        if start:
            raise _StartOver
        partial.unlink(missing_ok=True)
        raise ChecksumError(
            f"{what}: SHA-256 mismatch: downloaded {got}, expected {wanted}; not saved"
        )
    os.replace(partial, dest)
    return ArtifactDownload(dest, size, got, start)


def _partial_size(partial: Path) -> int:
    try:
        stat = partial.stat()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise ArgumentError(f"{partial}: cannot use the partial download: {exc}") from None
    if not partial.is_file():
        raise ArgumentError(f"{partial}: is in the way of the download (not a regular file)")
    return stat.st_size if stat.st_size <= MAX_ARTIFACT_SIZE else 0


def _where_it_starts(stream: ArtifactStream, offset: int, what: str) -> tuple[int, int | None]:
    """The byte the body starts at (0 or ``offset``) and the artifact's size if known."""
    if stream.status != 206:
        # A server that ignores Range (200) sends the whole artifact: start over in place.
        length = stream.content_length
        _check_size(length, what)
        return 0, length
    match = _CONTENT_RANGE.fullmatch(stream.headers.get("Content-Range", "").strip())
    if not offset or match is None or int(match[1]) != offset:
        # Not the range asked for: the partial file cannot be continued from this.
        raise _StartOver
    total = None if match[3] == "*" else int(match[3])
    _check_size(total, what)
    return offset, total


def _check_size(size: int | None, what: str) -> None:
    if size is not None and size > MAX_ARTIFACT_SIZE:
        raise ResponseError(f"{what}: artifact larger than {MAX_ARTIFACT_SIZE} bytes; not read")


def _hash_prefix(file: BinaryIO, length: int, digest: hashlib._Hash) -> None:
    # The first ``length`` bytes (the partial download) go into the digest; the file is
    # left positioned after them, anything beyond cut off.
    left = length
    while left:
        chunk = file.read(min(_HASH_READ, left))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    file.truncate(length)
    file.seek(length)


async def _write_body(
    stream: ArtifactStream,
    file: BinaryIO,
    digest: hashlib._Hash,
    start: int,
    total: int | None,
    progress: Progress | None,
    what: str,
) -> int:
    size = start
    if progress is not None:
        progress(size, total)
    async for chunk in stream.iter_chunks():
        size += len(chunk)
        _check_size(size, what)
        file.write(chunk)
        digest.update(chunk)
        if progress is not None:
            progress(size, total)
    return size


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_READ):
            digest.update(chunk)
    return digest.hexdigest()

