"""Emulator, HTTP layer: request and response plumbing the node API, the admin API and
the server share: rejections as problem documents, JSON bodies, the call record's slot
on a request, loopback checks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from plexd.api import PROBLEM_JSON

from .calls import RecordedCall

T = TypeVar("T")

# Largest request body the emulator reads (after gzip decompression).
MAX_REQUEST_BODY = 16 * 1024 * 1024
# Largest body of a request made before any token is checked (registration): small.
MAX_UNAUTHENTICATED_BODY = 1024 * 1024
JSON = "application/json"
# The challenge of a 401 for a missing or wrong bearer token (RFC 6750).
BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}

_encoder = msgspec.json.Encoder()


class Rejected(Exception):
    """A request the emulator answers with an error status (an RFC 9457 problem document)."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})


def problem_response(rejected: Rejected) -> web.Response:
    """The error response of a rejected request."""
    reason = _reason(rejected.status)
    body = _encoder.encode({"title": reason, "status": rejected.status, "detail": rejected.detail})
    response = web.Response(status=rejected.status, body=body, headers=rejected.headers)
    response.content_type = PROBLEM_JSON
    return response


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def json_response(value: Any, status: int = 200) -> web.Response:
    """A JSON response (wire types encode as WIRE.md says: omitempty keys left out)."""
    response = web.Response(status=status, body=_encoder.encode(value))
    response.content_type = JSON
    return response


def no_content() -> web.Response:
    """The answer of an endpoint whose response body is "none"."""
    return web.Response(status=204)


async def read_body(request: web.Request, limit: int = MAX_REQUEST_BODY) -> bytes:
    """The request body, 413 past ``limit`` bytes. aiohttp has already undone
    ``Content-Encoding: gzip``: the decompressed bytes are counted, so a small gzip body
    that inflates past the limit stops being read there."""
    declared = request.content_length
    if declared is not None and declared > limit:  # gzip or not: the inflated body is larger
        raise Rejected(413, f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise Rejected(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_body(body: bytes, type: type[T]) -> T:
    """Decode a JSON request body into a wire type the way a Go server would; a body that
    is empty, malformed, of the wrong shape or nested too deep is a 400."""
    if not body.strip():
        raise Rejected(400, "empty request body")
    try:
        return msgspec.json.decode(body, type=type)
    except RecursionError:
        raise Rejected(400, "bad request body: nested too deep") from None
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise Rejected(400, f"bad request body: {exc}") from None


def json_or_none(body: bytes) -> Any:
    """The body decoded as JSON for the call record; None when empty or not JSON."""
    if not body.strip():
        return None
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return None


def is_loopback(remote: str | None) -> bool:
    """Whether a peer address is the local machine."""
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def copy_headers(request: web.Request) -> Mapping[str, str]:
    """A case-insensitive copy of a request's headers, for the call record."""
    return CIMultiDictProxy(CIMultiDict(request.headers))


# Where the server's middleware keeps a request's call record, for handlers to complete.
RECORD_KEY = web.RequestKey("plexd_emulator.record", RecordedCall)


def mark_answered(request: web.Request, status: int) -> None:
    """Note the status of a request in its call record (streams do so at once)."""
    record = request.get(RECORD_KEY)
    if record is not None:
        record.status = status
