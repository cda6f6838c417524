"""The Go-made vectors (signed_envelopes.json): canonical bytes, verdicts and signatures.

The file comes from a Go control plane signer and verifier; see its "about" and "setup".
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from plexd.api import (
    Ed25519Verifier,
    SignedEnvelope,
    canonical_bytes,
    envelope_json,
    parse_envelope,
    sign_envelope,
)
from plexd.api._gotime import parse_rfc3339
from plexd.api._verify import _canonical_general
from plexd.api.errors import EnvelopeError, VerificationError

_HERE = Path(__file__).parent
# A copy of the contract's shared/vectors/signed_envelopes.json, kept in the repo so the
# suite runs anywhere; test_vectors_match_the_shared_contract catches drift.
VECTOR_FILE = _HERE / "vectors" / "signed_envelopes.json"
SHARED_VECTOR_FILE = _HERE.parents[1] / "shared" / "vectors" / "signed_envelopes.json"


def _load_vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTOR_FILE.read_text())
    return data


VECTORS = _load_vectors()


@pytest.mark.skipif(not SHARED_VECTOR_FILE.exists(), reason="no shared/ beside the checkout")
def test_vectors_match_the_shared_contract() -> None:
    assert VECTOR_FILE.read_bytes() == SHARED_VECTOR_FILE.read_bytes()
CASES = {case["name"]: case for case in VECTORS["cases"]}
KEYS = {key["id"]: key for key in VECTORS["keys"]}
SETUP = VECTORS["setup"]
NOW = parse_rfc3339(SETUP["now"])[0]
TRANSITION_EXPIRES = parse_rfc3339(SETUP["transition_expires"])[0]
# Groups whose wire text is exactly what the Go signer wrote (the other groups alter it).
GO_WRITTEN = {"go_emitted", "keys", "staleness"}

# Why the Go verifier rejects each rejected case: our message must say the same.
REJECTION_REASONS = {
    "empty_nonce": "missing nonce",
    "issued_at_zero": "missing issued_at",
    "signed_by_unknown_key": "does not verify",
    "tampered_payload": "does not verify",
    "tampered_event_id": "does not verify",
    "tampered_issued_at_1ns": "does not verify",
    "tampered_event_type": "does not verify",
    "sig_missing": "missing signature",
    "sig_not_base64": "not valid base64",
    "sig_unpadded": "not valid base64",
    "sig_urlsafe": "not valid base64",
    "sig_embedded_space": "not valid base64",
    "sig_trailing_garbage": "not valid base64",
    "sig_truncated_63": "63 bytes, want 64",
    "sig_extended_65": "65 bytes, want 64",
    "sig_malleated_s_plus_l": "does not verify",
    "stale_by_1ns": "stale",
    "future_by_1ns": "in the future",
}


def wire(name: str) -> bytes:
    return base64.b64decode(CASES[name]["wire_b64"])


def expected_canonical(name: str) -> bytes | None:
    encoded = CASES[name]["expected_canonical_b64"]
    return None if encoded is None else base64.b64decode(encoded)


def envelope(name: str) -> SignedEnvelope:
    """The case's envelope as received; a missing event_type (which parse_envelope
    rejects, like Go's ParseEnvelope) is let through, as Go's bare Verify sees it."""
    data = wire(name)
    try:
        return parse_envelope(data)
    except EnvelopeError:
        fields = msgspec.json.decode(data)
        if fields.get("event_type"):
            raise
    issued_at, nanos = parse_rfc3339(fields["issued_at"])
    return SignedEnvelope(
        event_type=fields["event_type"],
        event_id=fields["event_id"],
        issued_at=issued_at,
        issued_at_nanos=nanos,
        nonce=fields["nonce"],
        payload=msgspec.json.encode(fields["payload"]),
        signature=fields["signature"],
    )


def full_verifier() -> Ed25519Verifier:
    verifier = Ed25519Verifier(KEYS[SETUP["current_key"]]["public_key_b64"], clock=lambda: NOW)
    verifier.set_keys(
        KEYS[SETUP["current_key"]]["public_key_b64"],
        KEYS[SETUP["previous_key"]]["public_key_b64"],
        TRANSITION_EXPIRES,
    )
    return verifier


async def verdict(verifier: Ed25519Verifier, env: SignedEnvelope) -> tuple[bool, str]:
    try:
        await verifier.verify(env)
    except VerificationError as exc:
        return False, str(exc)
    return True, ""


def test_the_vector_file_is_the_one_described() -> None:
    assert len(CASES) == 57
    assert SETUP["staleness_window_seconds"] == 300


@pytest.mark.parametrize("name", sorted(CASES))
def test_canonical_bytes_match_the_go_signer(name: str) -> None:
    expected = expected_canonical(name)
    if expected is None:
        with pytest.raises(EnvelopeError):
            parse_envelope(wire(name))
        return
    env = envelope(name)
    assert canonical_bytes(env) == expected
    assert _canonical_general(env) == expected


@pytest.mark.parametrize("name", sorted(CASES))
async def test_verdict_matches_the_go_verifier(name: str) -> None:
    case = CASES[name]
    accepted, reason = await verdict(full_verifier(), envelope(name))
    assert accepted is case["verifies"], reason
    if not accepted:
        assert REJECTION_REASONS[name] in reason


@pytest.mark.parametrize("name", sorted(CASES))
async def test_verdict_with_only_the_current_key_matches_go(name: str) -> None:
    case = CASES[name]
    env = envelope(name)
    # The staleness cases record this verdict with the staleness check bypassed (see
    # their descriptions): a clock at issued_at does that.
    clock_time = env.issued_at if case["group"] == "staleness" else NOW
    verifier = Ed25519Verifier(
        KEYS[SETUP["current_key"]]["public_key_b64"], clock=lambda: clock_time
    )
    accepted, reason = await verdict(verifier, env)
    assert accepted is case["verifies_with_current_key_only"], reason


def test_envelope_without_event_type_is_rejected_by_parse_envelope() -> None:
    with pytest.raises(EnvelopeError, match="event_type"):
        parse_envelope(wire("empty_event_type"))


@pytest.mark.parametrize(
    "name",
    sorted(n for n, c in CASES.items() if c["group"] in GO_WRITTEN or n == "sig_alphabet"),
)
def test_signer_writes_what_the_go_signer_wrote(name: str) -> None:
    env = envelope(name)
    seed = bytes.fromhex(KEYS[CASES[name]["signed_by"]]["seed_hex"])
    signed = sign_envelope(
        seed,
        env.event_type,
        env.event_id,
        env.payload,
        issued_at=env.issued_at_text,
        nonce=env.nonce,
    )
    assert signed.signature == env.signature
    assert envelope_json(signed) == wire(name)


def test_invalid_utf8_payload_parses_from_bytes_and_from_surrogateescaped_text() -> None:
    data = wire("invalid_utf8_payload")
    with pytest.raises(UnicodeDecodeError):
        data.decode()
    from_bytes = parse_envelope(data)
    from_text = parse_envelope(data.decode("utf-8", "surrogateescape"))
    assert from_bytes == from_text
    assert canonical_bytes(from_text) == expected_canonical("invalid_utf8_payload")


async def test_signing_key_rotated_vector_updates_the_keys() -> None:
    verifier = full_verifier()
    rotation = envelope("signing_key_rotated_event")
    await verifier.verify(rotation)
    verifier.update_from_event(rotation)
    # Now key2 is current and key1 previous until 2099: both vectors verify.
    accepted, reason = await verdict(verifier, envelope("signed_by_previous_key"))
    assert accepted, reason
    accepted, reason = await verdict(verifier, envelope("basic"))
    assert accepted, reason


def test_clock_of_the_setup_is_read_with_its_zone() -> None:
    assert datetime.fromisoformat("2025-01-15T10:32:00+00:00") == NOW
