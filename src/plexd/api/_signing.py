"""Pure-logic layer: the signer, the other end of ``_verify``, as a Go control plane signs.

It owns how an event becomes a signed envelope (:func:`sign_envelope`) and the text
an SSE ``data:`` line carries for it (:func:`envelope_json`). The emulator, the demo
and the tests sign with it; the message signed is ``_verify``'s :func:`canonical_bytes`,
so the two ends cannot disagree.
"""

from __future__ import annotations

import base64
import secrets
import time
from datetime import datetime
from typing import Any

import msgspec
import nacl.signing

from ._envelope import SignedEnvelope
from ._gojson import compact, escape_html, escape_string, replace_surrogates, scan_json
from ._gotime import from_epoch_ns, naive_datetime_error, parse_rfc3339
from ._verify import canonical_bytes
from ._wire import JSON_ENCODE_ERRORS
from .errors import ConfigError, EnvelopeError

__all__ = ["envelope_json", "sign_envelope"]

ED25519_SEED_SIZE = 32
# 16 random bytes, written in hex: a nonce as the control plane makes one.
NONCE_BYTES = 16

_RAW_JSON = (msgspec.Raw, bytes, bytearray, memoryview)


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, _RAW_JSON):
        raw = bytes(payload)
        try:
            scan_json(raw)
        except ValueError as exc:
            raise EnvelopeError(f"payload is not valid JSON: {exc}") from None
        return compact(raw)
    try:
        # Go sorts map keys; struct fields keep their order.
        encoded = msgspec.json.encode(payload, order="deterministic")
    except JSON_ENCODE_ERRORS as exc:
        raise EnvelopeError(f"payload cannot be encoded as JSON: {exc}") from None
    return escape_html(encoded)


def _signing_time(issued_at: datetime | str | None) -> tuple[datetime, int]:
    if issued_at is None:
        return from_epoch_ns(time.time_ns())
    if isinstance(issued_at, str):
        try:
            return parse_rfc3339(issued_at)
        except ValueError as exc:
            raise EnvelopeError(f"bad issued_at: {exc}") from None
    if issued_at.tzinfo is None:
        raise naive_datetime_error("issued_at")
    return issued_at, issued_at.microsecond * 1000


def sign_envelope(
    private_key: bytes | nacl.signing.SigningKey,
    event_type: str,
    event_id: str,
    payload: Any,
    *,
    issued_at: datetime | str | None = None,
    nonce: str | None = None,
) -> SignedEnvelope:
    """Sign an event exactly as a Go control plane does.

    ``private_key`` is a 32-byte Ed25519 seed or a ``nacl.signing.SigningKey``.
    ``payload`` is raw JSON as ``msgspec.Raw`` or bytes (compacted Go's way; invalid
    JSON raises :class:`EnvelopeError`), or any other value, encoded by msgspec
    with map keys sorted and ``<>&`` U+2028 U+2029 escaped, as Go does.
    ``issued_at`` defaults to now (UTC, nanoseconds); an aware datetime or RFC 3339
    text (its nanoseconds and offset kept) is accepted. ``nonce`` defaults to 16 random
    bytes in hex. A string that holds a lone surrogate is signed with U+FFFD in its
    place, as a Go verifier reads it.
    """
    if isinstance(private_key, nacl.signing.SigningKey):
        signing_key = private_key
    elif isinstance(private_key, bytes | bytearray) and len(private_key) == ED25519_SEED_SIZE:
        signing_key = nacl.signing.SigningKey(bytes(private_key))
    else:
        raise ConfigError("private_key must be a 32-byte Ed25519 seed or a nacl SigningKey")
    when, nanos = _signing_time(issued_at)
    envelope = SignedEnvelope(
        event_type=replace_surrogates(event_type),
        event_id=replace_surrogates(event_id),
        issued_at=when,
        issued_at_nanos=nanos,
        nonce=replace_surrogates(secrets.token_hex(NONCE_BYTES) if nonce is None else nonce),
        payload=_payload_bytes(payload),
    )
    signature = signing_key.sign(canonical_bytes(envelope)).signature
    envelope.signature = base64.b64encode(signature).decode("ascii")
    return envelope


def envelope_json(envelope: SignedEnvelope) -> bytes:
    """The envelope as Go's ``json.Marshal`` writes it, signature included: what an SSE
    ``data:`` line carries."""
    message = canonical_bytes(envelope)
    return b"".join((message[:-1], b',"signature":"', escape_string(envelope.signature), b'"}'))
