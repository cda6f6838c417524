"""Emulator, bottom layer (no aiohttp): what a request carried, as plain data.

Owns the bearer-token rule (one place for the node API, the admin API and the
call record) and :class:`RecordedCall`, the record of a node-API request tests assert on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when there is none."""
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


@dataclass(eq=False)
class RecordedCall:
    """One request the node API received, for assertions in tests.

    ``path`` is as received (percent-encoded); ``node_id`` is the node the path
    names (decoded), None for paths without one; ``body`` is the decoded JSON
    request body (gunzipped) once an endpoint accepted it (after authentication), None
    when empty, refused, not JSON or over the record's byte bound; ``body_size`` its
    size as received (JSON bytes), 0 when not kept; ``status`` is the answer
    (set when known; for an event stream, once its headers are sent). ``headers``
    keep every request header (case-insensitive); they and the body stay out of
    the repr.
    """

    method: str
    path: str
    node_id: str | None
    body: Any = field(default=None, repr=False)
    body_size: int = field(default=0, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    status: int | None = None

    @property
    def bearer_token(self) -> str | None:
        """The token the request carried (for asserting which credential was used)."""
        return bearer_token(self.headers)
