"""Request and response plumbing shared by the node API and the admin API: errors,
bodies, the record of calls."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

T = TypeVar("T")

# Largest request body the emulator reads (after gzip decompression).
MAX_REQUEST_BODY = 16 * 1024 * 1024
PROBLEM_JSON = "application/problem+json"
JSON = "application/json"

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


async def read_body(request: web.Request) -> bytes:
    """The request body: aiohttp has already undone ``Content-Encoding: gzip`` and stops
    reading past the application's ``client_max_size`` (413), decompressed bytes counted."""
    return await request.read()


def decode_body(body: bytes, type: type[T]) -> T:
    """Decode a JSON request body into a wire type the way a Go server would (400 otherwise)."""
    if not body.strip():
        raise Rejected(400, "empty request body")
    try:
        return msgspec.json.decode(body, type=type)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise Rejected(400, f"bad request body: {exc}") from None


def json_or_none(body: bytes) -> Any:
    """The body decoded as JSON for the call record; None when empty or not JSON."""
    if not body.strip():
        return None
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, ValueError):
        return None


def bearer_token(request: web.Request) -> str | None:
    """The bearer token of a request, or None when it carries none."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def is_loopback(remote: str | None) -> bool:
    """Whether a peer address is the local machine."""
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@dataclass(eq=False)
class RecordedCall:
    """One request the node API received, for assertions in tests.

    ``path`` is as received (percent-encoded); ``node_id`` is the node the path
    names (decoded), None for paths without one; ``body`` is the decoded JSON
    request body (gunzipped), None when empty or not JSON; ``status`` is the answer
    (set when known; for an event stream, once its headers are sent). ``headers``
    keep every request header (case-insensitive); they and the body stay out of
    the repr.
    """

    method: str
    path: str
    node_id: str | None
    body: Any = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    status: int | None = None

    @property
    def bearer_token(self) -> str | None:
        """The token the request carried (for asserting which credential was used)."""
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None


def copy_headers(request: web.Request) -> Mapping[str, str]:
    """A case-insensitive copy of a request's headers, for the call record."""
    return CIMultiDictProxy(CIMultiDict(request.headers))
