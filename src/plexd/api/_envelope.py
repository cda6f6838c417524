"""Declarations layer: SignedEnvelope, an event as it arrives, and parse_envelope.

It owns what an SSE ``data:`` field means: the envelope's wire fields and the parts
of the wire text that the signature needs (``issued_at``'s nanoseconds and text, the
exact payload bytes). :func:`parse_envelope` reads an envelope as Go's
``encoding/json`` does: msgspec for the common case, the Go scanner of ``_gojson``
for whatever msgspec rejects but Go accepts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

import msgspec

from ._gojson import field_key, scan_json, unquote
from ._gotime import (
    NANOS_PER_SECOND,
    ZERO_TIME,
    ZERO_TIME_NS,
    ZERO_TIME_TEXT,
    epoch_ns,
    format_rfc3339nano,
    naive_datetime_error,
    unmarshal_json_time,
)
from ._wire import JSON_DECODE_ERRORS, NULL
from .errors import ArgumentError, EnvelopeError

T = TypeVar("T")


class SignedEnvelope:
    """A signed event as it arrives in an SSE ``data:`` field.

    Besides the wire fields it keeps what the signature needs of the wire text:
    ``issued_at_nanos`` (Python's datetime holds microseconds only) and
    ``issued_at_text``, the time as Go's RFC3339Nano writes it with the received
    offset; ``payload`` holds the exact payload bytes (``null`` when missing).
    """

    __slots__ = (
        "_issued_at_ns",
        "event_id",
        "event_type",
        "issued_at",
        "issued_at_nanos",
        "issued_at_text",
        "nonce",
        "payload",
        "signature",
    )

    event_type: str
    event_id: str
    issued_at: datetime
    issued_at_nanos: int
    issued_at_text: str
    nonce: str
    payload: msgspec.Raw
    signature: str
    _issued_at_ns: int

    def __init__(
        self,
        *,
        event_type: str,
        event_id: str,
        issued_at: datetime = ZERO_TIME,
        nonce: str = "",
        payload: msgspec.Raw | bytes | None = None,
        signature: str = "",
        issued_at_nanos: int | None = None,
        issued_at_text: str | None = None,
    ) -> None:
        if issued_at.tzinfo is None:
            raise naive_datetime_error("issued_at")
        if issued_at_nanos is None:
            issued_at_nanos = issued_at.microsecond * 1000
        elif not 0 <= issued_at_nanos < NANOS_PER_SECOND:
            raise ArgumentError("issued_at_nanos must be within 0..999999999")
        elif issued_at_nanos // 1000 != issued_at.microsecond:
            raise ArgumentError("issued_at_nanos does not agree with issued_at's microseconds")
        text = format_rfc3339nano(issued_at, issued_at_nanos)
        if issued_at_text is not None and issued_at_text != text:
            # The signed message holds this text: a second, different one would be signed wrong.
            raise ArgumentError(
                f"issued_at_text {issued_at_text!r} is not Go's RFC3339Nano form of issued_at "
                f"({text!r})"
            )
        self.event_type = event_type
        self.event_id = event_id
        self.issued_at = issued_at
        self.issued_at_nanos = issued_at_nanos
        self.issued_at_text = text
        self.nonce = nonce
        self.payload = _as_payload(payload)
        self.signature = signature
        self._issued_at_ns = epoch_ns(issued_at, issued_at_nanos)

    @property
    def issued_at_ns(self) -> int:
        """``issued_at`` as nanoseconds since the Unix epoch, at full wire precision."""
        return self._issued_at_ns

    def decode_payload(self, type: type[T] = Any) -> T:  # type: ignore[assignment]
        """The payload decoded from JSON, optionally into ``type``.

        Raises :class:`EnvelopeError` when it is not JSON or not of that shape.
        """
        try:
            return msgspec.json.decode(bytes(self.payload), type=type)
        except msgspec.ValidationError as exc:
            raise EnvelopeError(f"payload does not fit the expected type: {exc}") from exc
        except JSON_DECODE_ERRORS as exc:
            raise EnvelopeError(f"payload is not valid JSON: {exc}") from exc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SignedEnvelope):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _ENVELOPE_FIELDS)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"SignedEnvelope(event_type={self.event_type!r}, event_id={self.event_id!r}, "
            f"issued_at={self.issued_at_text!r}, nonce={self.nonce!r}, "
            f"payload=<{len(self.payload)} bytes>)"
        )


_ENVELOPE_FIELDS = (
    "event_type", "event_id", "issued_at_text", "nonce", "payload", "signature",
)  # fmt: skip


def _as_payload(payload: msgspec.Raw | bytes | bytearray | memoryview | None) -> msgspec.Raw:
    if payload is None or not len(payload):
        # Go writes a nil RawMessage as null.
        return NULL
    if isinstance(payload, msgspec.Raw):
        return payload
    return msgspec.Raw(bytes(payload))


# --- envelope decoding, as Go's encoding/json does it ------------------------
#
# The common case goes through msgspec. What msgspec rejects but Go accepts (invalid
# UTF-8 or a lone surrogate escape in a string, a null field, a key in another case,
# nesting deeper than msgspec's limit) goes through _gojson's scan_json, a transcription
# of the rules of Go's scanner, so the envelope reads exactly as a Go control plane reads it.

_ABSENT = msgspec.Raw(b"")


class _EnvelopeWire(msgspec.Struct, forbid_unknown_fields=True):
    # Strings without `| None` and unknown fields forbidden: a null or a key Go would fold
    # to a field name takes the exact path below rather than being read differently.
    event_type: str = ""
    event_id: str = ""
    issued_at: msgspec.Raw = _ABSENT
    nonce: str = ""
    payload: msgspec.Raw = NULL
    signature: str = ""


_envelope_decoder = msgspec.json.Decoder(_EnvelopeWire)

_ENVELOPE_KEYS = frozenset(("event_type", "event_id", "issued_at", "nonce", "payload", "signature"))


def _parse_envelope_exact(data: bytes | str) -> SignedEnvelope:
    """Decode an envelope as Go's json.Unmarshal does, whatever msgspec thought of it."""
    data = _wire_bytes(data) if isinstance(data, str) else bytes(data)
    try:
        members = scan_json(data)
    except ValueError as exc:
        raise EnvelopeError(f"invalid envelope JSON: {exc}") from None
    if members is None:
        raise EnvelopeError("invalid envelope JSON: not an object")
    strings = {"event_type": "", "event_id": "", "nonce": "", "signature": ""}
    issued_at: bytes | None = None
    payload = NULL
    for key_token, start, end in members:
        field = field_key(key_token)
        if field is None or field not in _ENVELOPE_KEYS:
            continue
        value = data[start:end]
        if field == "payload":
            payload = msgspec.Raw(value)
        elif value == b"null":
            # Go: null leaves a string or a time.Time as it was.
            continue
        elif field == "issued_at":
            issued_at = value
        elif value[:1] != b'"':
            raise EnvelopeError(f"invalid envelope JSON: {field} is not a string")
        else:
            strings[field] = unquote(value)
    return _envelope_from_wire(
        strings["event_type"], strings["event_id"], issued_at,
        strings["nonce"], payload, strings["signature"],
    )  # fmt: skip


def _envelope_from_wire(
    event_type: str,
    event_id: str,
    issued_at_raw: msgspec.Raw | bytes | None,
    nonce: str,
    payload: msgspec.Raw,
    signature: str,
) -> SignedEnvelope:
    if not event_type:
        raise EnvelopeError("missing or empty event_type")
    if not event_id:
        raise EnvelopeError("missing or empty event_id")
    if issued_at_raw is None:
        issued_at, nanos, text, issued_ns = ZERO_TIME, 0, ZERO_TIME_TEXT, ZERO_TIME_NS
    else:
        try:
            issued_at, nanos, text, issued_ns = unmarshal_json_time(issued_at_raw)
        except ValueError as exc:
            raise EnvelopeError(f"bad issued_at: {exc}") from None
    # Every part is known to be consistent here: skip __init__'s checks.
    envelope = SignedEnvelope.__new__(SignedEnvelope)
    envelope.event_type = event_type
    envelope.event_id = event_id
    envelope.issued_at = issued_at
    envelope.issued_at_nanos = nanos
    envelope.issued_at_text = text
    envelope.nonce = nonce
    envelope.payload = payload if len(payload) else NULL
    envelope.signature = signature
    envelope._issued_at_ns = issued_ns
    return envelope


def _wire_bytes(data: str) -> bytes:
    try:
        # Text decoded with errors="surrogateescape" gets its original bytes back.
        return data.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return data.encode("utf-8", "surrogatepass")


def parse_envelope(data: bytes | str) -> SignedEnvelope:
    """Parse an SSE event's data as a :class:`SignedEnvelope`, reading it as Go does.

    Raises :class:`EnvelopeError` for invalid JSON, a bad ``issued_at``, or a missing
    or empty ``event_type`` / ``event_id``. Bytes that are not UTF-8 are fine (as in Go,
    they read as U+FFFD in the string fields and stay as they are in the payload); for
    text, decode the stream with ``errors="surrogateescape"`` to keep them.
    """
    try:
        wire = _envelope_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeError, RecursionError):
        return _parse_envelope_exact(data)
    issued_at: msgspec.Raw | None = wire.issued_at
    if issued_at is _ABSENT:
        issued_at = None
    elif issued_at == NULL:
        # A null leaves an earlier issued_at in place in Go: let the exact path see them all.
        return _parse_envelope_exact(data)
    return _envelope_from_wire(
        wire.event_type, wire.event_id, issued_at, wire.nonce, wire.payload, wire.signature
    )
