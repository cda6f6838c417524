"""Event verification: Go-exact canonical bytes, the verifier's checks, the nonce store,
key rotation, the signer, and envelopes decoded exactly as Go decodes them."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexd.api import (
    Ed25519Verifier,
    EventVerifier,
    NaiveDatetimeError,
    NonceStore,
    NoOpVerifier,
    RegisterResponse,
    SignedEnvelope,
    SigningKeys,
    canonical_bytes,
    envelope_json,
    parse_envelope,
    sign_envelope,
)
from plexd.api._envelope import _parse_envelope_exact
from plexd.api._gojson import decode_base64, scan_json
from plexd.api._gotime import (
    ZERO_TIME,
    epoch_ns,
    format_rfc3339nano,
    parse_rfc3339,
    unmarshal_json_time,
)
from plexd.api._verify import (
    _canonical_fast,
    _canonical_general,
    _fast_path_applies,
    _signature_bytes,
)
from plexd.api.errors import ConfigError, EnvelopeError, PlexdError, VerificationError

SEED_OLD = bytes(range(32))
SEED_NEW = bytes(range(32, 64))
SEED_OTHER = bytes(range(64, 96))
PUB_OLD = bytes(nacl.signing.SigningKey(SEED_OLD).verify_key)
PUB_NEW = bytes(nacl.signing.SigningKey(SEED_NEW).verify_key)
PUB_OLD_B64 = base64.b64encode(PUB_OLD).decode()
PUB_NEW_B64 = base64.b64encode(PUB_NEW).decode()
T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
NS = 1_000_000_000


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def signed(
    n: int = 1,
    *,
    seed: bytes = SEED_OLD,
    issued_at: datetime | str = T0,
    nonce: str | None = None,
    payload: Any = None,
) -> SignedEnvelope:
    return sign_envelope(
        seed,
        "peer_added",
        f"evt-{n}",
        {"peer_id": f"node-{n}"} if payload is None else payload,
        issued_at=issued_at,
        nonce=f"nonce-{n}" if nonce is None else nonce,
    )


def verifier(clock: FakeClock | None = None, **kwargs: Any) -> Ed25519Verifier:
    return Ed25519Verifier(PUB_OLD, clock=clock or FakeClock(), **kwargs)


def with_fields(env: SignedEnvelope, **changes: Any) -> SignedEnvelope:
    fields: dict[str, Any] = {
        "event_type": env.event_type,
        "event_id": env.event_id,
        "issued_at": env.issued_at,
        "issued_at_nanos": env.issued_at_nanos,
        "nonce": env.nonce,
        "payload": env.payload,
        "signature": env.signature,
    }
    fields.update(changes)
    if "issued_at" in changes and "issued_at_nanos" not in changes:
        fields["issued_at_nanos"] = None
    return SignedEnvelope(**fields)


# --- canonical bytes: Go's escaping of the four strings -----------------------------------


@pytest.mark.parametrize(
    ("text", "go"),
    [
        ("plain-id_1.2", b"plain-id_1.2"),
        ('"q"\\', b'\\"q\\"\\\\'),
        ("\b\f\n\r\t", b"\\b\\f\\n\\r\\t"),
        ("\x00\x01\x1f", b"\\u0000\\u0001\\u001f"),
        ("\x7f", b"\x7f"),
        ("<a>&", b"\\u003ca\\u003e\\u0026"),
        ("\u2028\u2029", b"\\u2028\\u2029"),
        ("/é😀漢", "/é😀漢".encode()),
        ("a\ud800b\udfff", "a\ufffdb\ufffd".encode()),
    ],
)
def test_strings_are_escaped_as_go_json_marshal_escapes_them(text: str, go: bytes) -> None:
    env = SignedEnvelope(event_type=text, event_id=text, nonce=text, issued_at=T0)
    expected = (
        b'{"event_type":"%s","event_id":"%s","issued_at":"2025-01-15T10:30:00Z",'
        b'"nonce":"%s","payload":null}' % (go, go, go)
    )
    assert canonical_bytes(env) == expected


@pytest.mark.parametrize(
    ("payload", "go"),
    [
        (b' { "a" : [ 1 , 2 ] ,\r\n\t"b" : { } } ', b'{"a":[1,2],"b":{}}'),
        (b'{"s":"two  spaces \\t \\n \\u00e9 \\/ \\"q\\""}', None),
        (b'{"h":"<b>&</b>"}', b'{"h":"\\u003cb\\u003e\\u0026\\u003c/b\\u003e"}'),
        ('{"ls":"a\u2028b\u2029c"}'.encode(), b'{"ls":"a\\u2028b\\u2029c"}'),
        (b'{"bin":"\xff\xfe"}', None),
        (b'{"n":1.0e+2,"m":-0,"big":123456789012345678901234567890}', None),
        (b'{"b":1,"a":2,"a":3}', None),
        (b"null", None),
        (b'"\\ud800"', None),
        ('{"k":"\u2027\u2030"}'.encode(), None),
    ],
)
def test_payload_is_compacted_with_string_contents_kept(payload: bytes, go: bytes | None) -> None:
    env = SignedEnvelope(event_type="t", event_id="i", payload=payload, issued_at=T0)
    message = canonical_bytes(env)
    assert message.endswith(b'"payload":' + (payload if go is None else go) + b"}")


@pytest.mark.parametrize("payload", [None, b"", msgspec.Raw(b"")])
def test_missing_payload_is_written_as_null(payload: bytes | None) -> None:
    env = SignedEnvelope(event_type="t", event_id="i", payload=payload, issued_at=T0)
    assert canonical_bytes(env).endswith(b'"payload":null}')


@pytest.mark.parametrize(
    ("wire_time", "go"),
    [
        ("2025-01-15T10:30:00Z", "2025-01-15T10:30:00Z"),
        ("2025-01-15T10:30:00.120000000Z", "2025-01-15T10:30:00.12Z"),
        ("2025-01-15T10:30:00.000Z", "2025-01-15T10:30:00Z"),
        ("2025-01-15T12:30:00+02:00", "2025-01-15T12:30:00+02:00"),
        ("2025-01-15T10:30:00+00:00", "2025-01-15T10:30:00Z"),
        ("2025-01-15T10:30:00-00:00", "2025-01-15T10:30:00Z"),
        ("2025-01-15T07:00:00.5-03:30", "2025-01-15T07:00:00.5-03:30"),
        # What Go's time.Parse also takes: a comma, more than 9 digits, a one-digit hour,
        # a minute offset of 60.
        ("2025-01-15T10:30:00,5Z", "2025-01-15T10:30:00.5Z"),
        ("2025-01-15T10:30:00.1234567891234Z", "2025-01-15T10:30:00.123456789Z"),
        ("2025-01-15T9:30:00Z", "2025-01-15T09:30:00Z"),
        ("2025-01-15T10:30:00+05:60", "2025-01-15T10:30:00+06:00"),
    ],
)
def test_issued_at_is_rewritten_as_go_rfc3339nano(wire_time: str, go: str) -> None:
    wire = b'{"event_type":"t","event_id":"i","issued_at":"%s"}' % wire_time.encode()
    env = parse_envelope(wire)
    assert env.issued_at_text == go
    assert b'"issued_at":"%s"' % go.encode() in canonical_bytes(env)
    when, nanos = parse_rfc3339(go)
    assert (env.issued_at, env.issued_at_nanos) == (when, nanos)
    assert env.issued_at.utcoffset() == when.utcoffset()


@pytest.mark.parametrize(
    "wire_time",
    [
        "2025-01-15t10:30:00Z",
        "2025-01-15T10:30:00z",
        "2025-01-15 10:30:00Z",
        "2025-01-15T10:30:00",
        "2025-01-15T10:30:60Z",
        "2025-01-15T24:00:00Z",
        "2025-02-30T10:30:00Z",
        "2025-01-15T10:30:00.Z",
        "2025-01-15T10:30:00+24:00",
        "２０２５-01-15T10:30:00Z",
        "2025-01-15T10:30:00\\u005a",
    ],
)
def test_times_go_rejects_make_an_envelope_error(wire_time: str) -> None:
    wire = b'{"event_type":"t","event_id":"i","issued_at":"%s"}' % wire_time.encode()
    with pytest.raises(EnvelopeError, match="issued_at"):
        parse_envelope(wire)


def test_issued_at_that_is_not_a_string_is_an_envelope_error() -> None:
    with pytest.raises(EnvelopeError, match="issued_at"):
        parse_envelope(b'{"event_type":"t","event_id":"i","issued_at":1736937000}')


def test_format_rfc3339nano_truncates_sub_minute_offsets_toward_zero_as_go() -> None:
    when = datetime(2025, 1, 15, 10, 30, tzinfo=timezone(timedelta(seconds=-30)))
    assert format_rfc3339nano(when) == "2025-01-15T10:30:00+00:00"
    when = datetime(2025, 1, 15, 10, 30, tzinfo=timezone(-timedelta(minutes=1, seconds=30)))
    assert format_rfc3339nano(when) == "2025-01-15T10:30:00-00:01"


def test_envelope_constructor_refuses_issued_at_text_that_go_would_not_write() -> None:
    with pytest.raises(ValueError, match="RFC3339Nano"):
        SignedEnvelope(
            event_type="t", event_id="i", issued_at=T0, issued_at_text="2025-01-15T10:30:00.0Z"
        )
    env = SignedEnvelope(
        event_type="t", event_id="i", issued_at=T0, issued_at_text="2025-01-15T10:30:00Z"
    )
    assert env.issued_at_text == "2025-01-15T10:30:00Z"


def test_envelope_constructor_checks_nanoseconds_against_the_datetime() -> None:
    with pytest.raises(ValueError, match="microseconds"):
        SignedEnvelope(event_type="t", event_id="i", issued_at=T0, issued_at_nanos=1_000)
    env = SignedEnvelope(event_type="t", event_id="i", issued_at=T0, issued_at_nanos=999)
    assert env.issued_at_text == "2025-01-15T10:30:00.000000999Z"
    assert env.issued_at_ns == int(T0.timestamp()) * NS + 999


def test_decode_payload_errors_are_envelope_errors() -> None:
    env = SignedEnvelope(event_type="t", event_id="i", payload=b'{"bin":"\xff"}')
    with pytest.raises(EnvelopeError, match="not valid JSON"):
        env.decode_payload()
    env = SignedEnvelope(event_type="t", event_id="i", payload=b'{"current":1}')
    with pytest.raises(EnvelopeError, match="expected type"):
        env.decode_payload(SigningKeys)


# --- the fast path gives the general path's bytes ------------------------------------------

_plain_text = st.text(alphabet="abcXYZ019-_.:/", max_size=20)
_any_text = st.text(max_size=20)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_any_text, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    event_type=_plain_text | _any_text,
    event_id=_plain_text | _any_text,
    nonce=_plain_text | _any_text,
    payload=_json_values,
    nanos=st.integers(0, NS - 1),
)
def test_fast_path_gives_the_general_path_bytes(
    event_type: str, event_id: str, nonce: str, payload: Any, nanos: int
) -> None:
    env = SignedEnvelope(
        event_type=event_type,
        event_id=event_id,
        nonce=nonce,
        issued_at=T0.replace(microsecond=nanos // 1000),
        issued_at_nanos=nanos,
        payload=msgspec.json.encode(payload),
    )
    if _fast_path_applies(env):
        assert _canonical_fast(env) == _canonical_general(env)
    assert canonical_bytes(env) == _canonical_general(env)


def test_fast_path_is_taken_for_what_go_writes_and_not_otherwise() -> None:
    assert _fast_path_applies(signed())
    assert not _fast_path_applies(signed(payload={"s": "a b"}))
    assert not _fast_path_applies(signed(nonce="a<b"))
    assert not _fast_path_applies(with_fields(signed(), payload=b'{"a": 1}'))


@settings(max_examples=200, deadline=None)
@given(payload=_json_values, indent=st.integers(0, 4))
def test_general_path_compacts_formatted_json_to_what_go_writes(payload: Any, indent: int) -> None:
    compact = sign_envelope(SEED_OLD, "t", "i", payload, issued_at=T0).payload
    encoded = msgspec.json.encode(payload, order="deterministic")
    spaced = msgspec.json.format(encoded, indent=indent)
    env = SignedEnvelope(event_type="t", event_id="i", payload=spaced, issued_at=T0)
    assert canonical_bytes(env).endswith(b'"payload":' + bytes(compact) + b"}")


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=64))
def test_canonical_bytes_of_arbitrary_payload_bytes_never_raise(payload: bytes) -> None:
    env = SignedEnvelope(event_type="t", event_id="i", payload=payload)
    assert canonical_bytes(env).startswith(b'{"event_type":"t"')


# --- the verifier's checks, in order, each with its own message ----------------------------


async def test_valid_envelope_verifies() -> None:
    await verifier().verify(signed())


async def test_noop_verifier_accepts_everything() -> None:
    assert isinstance(NoOpVerifier(), EventVerifier)
    assert isinstance(verifier(), EventVerifier)
    await NoOpVerifier().verify(with_fields(signed(), signature="", nonce=""))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"signature": ""}, "missing signature"),
        ({"signature": "", "nonce": ""}, "missing signature"),
        ({"nonce": ""}, "missing nonce"),
        ({"nonce": "", "issued_at": ZERO_TIME}, "missing nonce"),
        ({"issued_at": ZERO_TIME}, "missing issued_at"),
        ({"issued_at": T0 - timedelta(seconds=301)}, "stale"),
        ({"issued_at": T0 + timedelta(seconds=301)}, "in the future"),
        ({"issued_at": T0 - timedelta(seconds=301), "signature": "!"}, "stale"),
        ({"signature": "not base64!"}, "not valid base64"),
        ({"signature": "AAAA===="}, "not valid base64"),
        ({"signature": "AAAA"}, "is 3 bytes, want 64"),
        ({"event_id": "evt-other"}, "does not verify with the current key"),
    ],
)
async def test_each_failed_check_has_its_own_message(changes: dict[str, Any], message: str) -> None:
    env = with_fields(signed(), **changes)
    with pytest.raises(VerificationError, match=message) as caught:
        await verifier().verify(env)
    assert isinstance(caught.value, PlexdError)


async def test_go_zero_time_in_the_wire_counts_as_missing() -> None:
    for wire in (
        b'{"event_type":"t","event_id":"i","nonce":"n","signature":"AA==",'
        b'"issued_at":"0001-01-01T00:00:00Z"}',
        b'{"event_type":"t","event_id":"i","nonce":"n","signature":"AA=="}',
        b'{"event_type":"t","event_id":"i","nonce":"n","signature":"AA==","issued_at":null}',
    ):
        with pytest.raises(VerificationError, match="missing issued_at"):
            await verifier().verify(parse_envelope(wire))


async def test_staleness_is_checked_to_the_nanosecond() -> None:
    clock = FakeClock()
    check = verifier(clock)
    await check.verify(signed(1, issued_at="2025-01-15T10:25:00Z"))
    await check.verify(signed(2, issued_at="2025-01-15T10:35:00Z"))
    with pytest.raises(VerificationError, match="stale"):
        await check.verify(signed(3, issued_at="2025-01-15T10:24:59.999999999Z"))
    with pytest.raises(VerificationError, match="future"):
        await check.verify(signed(4, issued_at="2025-01-15T10:35:00.000000001Z"))


async def test_staleness_window_is_configurable() -> None:
    check = verifier(staleness_window=10)
    await check.verify(signed(1, issued_at=T0 - timedelta(seconds=10)))
    with pytest.raises(VerificationError, match="more than 10s in the past"):
        await check.verify(signed(2, issued_at=T0 - timedelta(seconds=11)))


async def test_default_clock_is_the_system_clock() -> None:
    check = Ed25519Verifier(PUB_OLD)
    await check.verify(signed(1, issued_at=datetime.now(UTC)))
    with pytest.raises(VerificationError, match="stale"):
        await check.verify(signed(2, issued_at=datetime.now(UTC) - timedelta(minutes=10)))


async def test_a_clock_returning_naive_datetimes_is_an_error() -> None:
    check = Ed25519Verifier(PUB_OLD, clock=lambda: datetime(2025, 1, 15, 10, 30))
    with pytest.raises(NaiveDatetimeError):
        await check.verify(signed())


async def test_signature_check_uses_the_whole_canonical_message() -> None:
    env = signed(payload={"peer_id": "node-1"})
    check = verifier()
    for changes in (
        {"payload": b'{"peer_id":"node-2"}'},
        {"event_type": "peer_removed"},
        {"issued_at": T0, "issued_at_nanos": 1},
        {"nonce": "nonce-other"},
    ):
        with pytest.raises(VerificationError, match="does not verify"):
            await check.verify(with_fields(env, **changes))
    await check.verify(env)


async def test_non_canonical_s_is_rejected() -> None:
    env = signed()
    raw = base64.b64decode(env.signature)
    order = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(raw[32:], "little") + order
    malleated = raw[:32] + s.to_bytes(32, "little")
    with pytest.raises(VerificationError, match="does not verify"):
        await verifier().verify(with_fields(env, signature=base64.b64encode(malleated).decode()))


@pytest.mark.parametrize(
    ("text", "raw"),
    [
        ("", b""),
        ("AA==", b"\x00"),
        ("AB==", b"\x00"),  # StdEncoding is not strict about the unused bits
        ("AAA=", b"\x00\x00"),
        ("AAAA", b"\x00\x00\x00"),
        ("AA\r\nAA", b"\x00\x00\x00"),
        ("A\nA=\r=\n", b"\x00"),
        ("AAAA====", None),
        ("AA", None),
        ("AA=", None),
        ("A===", None),
        ("AA==AAAA", None),
        ("AA== ", None),
        (" AA==", None),
        ("-_==", None),
        ("AA\tAA", None),
        ("AAé=", None),
    ],
)
def test_base64_is_decoded_as_go_std_encoding_decodes_it(text: str, raw: bytes | None) -> None:
    assert decode_base64(text) == raw


# Signature text: what Go writes, with one to three characters changed to anything that
# may matter (the alphabet, padding, CR/LF that Go skips, what Go refuses).
_SIGNATURE_CHARS = "ABZaz09+/=\r\n -_\t\x00é"


@st.composite
def signature_texts(draw: st.DrawFn) -> str:
    text = list(base64.b64encode(draw(st.binary(min_size=64, max_size=64))).decode())
    for _ in range(draw(st.integers(0, 3))):
        text[draw(st.integers(0, len(text) - 1))] = draw(st.sampled_from(_SIGNATURE_CHARS))
    if draw(st.booleans()):
        text.insert(draw(st.integers(0, len(text))), draw(st.sampled_from(_SIGNATURE_CHARS)))
    return "".join(text)


@settings(max_examples=2000, deadline=None)
@given(signature_texts() | st.text(alphabet=_SIGNATURE_CHARS, max_size=12))
def test_signatures_decode_as_go_std_encoding_decodes_them(text: str) -> None:
    # The signature's own fast decoding (strict base64 for 88 characters ending in "==")
    # says what Go's rules (decode_base64) say, for every text.
    assert _signature_bytes(text) == decode_base64(text)


@settings(max_examples=2000, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    st.integers(0, 999_999_999) | st.sampled_from([0, 100_000_000, 5, 120_000_000]),
    st.integers(-(24 * 60 - 1), 24 * 60 - 1) | st.just(0),
)
def test_times_as_go_writes_them_read_back_exactly_with_their_nanoseconds(
    when: datetime, nanos: int, offset_minutes: int
) -> None:
    # What every event goes through: the one-pattern path must give what the general
    # parser gives, and the epoch nanoseconds the window is checked against.
    zone = timezone(timedelta(minutes=offset_minutes))
    when = when.astimezone(zone).replace(microsecond=nanos // 1000)
    text = format_rfc3339nano(when, nanos)
    parsed, parsed_nanos, parsed_text, parsed_ns = unmarshal_json_time(b'"%s"' % text.encode())
    expected, expected_nanos = parse_rfc3339(text)
    assert (parsed, parsed_nanos, parsed_text) == (expected, expected_nanos, text)
    assert parsed.utcoffset() == expected.utcoffset()
    assert parsed_ns == epoch_ns(expected, expected_nanos)


async def test_signature_with_line_breaks_verifies_as_in_go() -> None:
    env = signed()
    broken = env.signature[:20] + "\r\n" + env.signature[20:40] + "\n" + env.signature[40:]
    await verifier().verify(with_fields(env, signature=broken))


# --- replays and the nonce store ----------------------------------------------------------


async def test_replayed_nonce_is_rejected() -> None:
    check = verifier()
    env = signed()
    await check.verify(env)
    with pytest.raises(VerificationError, match="replayed nonce 'nonce-1'"):
        await check.verify(env)
    with pytest.raises(VerificationError, match="replayed nonce"):
        await check.verify(signed(2, nonce="nonce-1"))


async def test_nonce_is_remembered_until_its_event_leaves_the_window() -> None:
    clock = FakeClock()
    check = verifier(clock)
    # Issued 5 minutes ahead: acceptable until 10 minutes from now.
    env = signed(issued_at=T0 + timedelta(minutes=5))
    await check.verify(env)
    clock.advance(9 * 60)
    with pytest.raises(VerificationError, match="replayed"):
        await check.verify(env)
    clock.advance(60 + 1e-6)
    with pytest.raises(VerificationError, match="stale"):
        await check.verify(env)


async def test_forged_flood_does_not_touch_the_nonce_store() -> None:
    check = verifier()
    for n in range(500):
        forged = signed(n, seed=SEED_OTHER, nonce=f"flood-{n}")
        with pytest.raises(VerificationError, match="does not verify"):
            await check.verify(forged)
    assert len(check.nonces) == 0
    # A forged event cannot burn the nonce of a genuine one.
    await check.verify(signed(7, nonce="flood-7"))
    assert len(check.nonces) == 1


def test_nonce_store_forgets_after_the_ttl() -> None:
    store = NonceStore()
    t = 1_700_000_000 * NS
    assert store.remember("a", t)
    assert not store.remember("a", t + 299 * NS)
    assert store.seen("a", t + 299 * NS)
    assert not store.seen("a", t + 300 * NS)
    assert store.remember("a", t + 300 * NS)


def test_nonce_store_keeps_a_nonce_longer_when_asked() -> None:
    store = NonceStore()
    t = 1_700_000_000 * NS
    assert store.remember("a", t, keep_until_ns=t + 600 * NS)
    assert not store.remember("a", t + 599 * NS)
    assert store.remember("a", t + 600 * NS)


def test_nonce_store_cleans_up_lazily_at_most_once_a_minute() -> None:
    store = NonceStore()
    t = 1_700_000_000 * NS
    store.remember("old", t)  # the first call cleans up; the next cleanup is at t + 60 s
    store.remember("new", t + 250 * NS)  # cleans up (nothing expired); next at t + 310 s
    store.remember("x", t + 305 * NS)  # "old" expired at t + 300 s but stays until then
    assert len(store) == 3
    store.remember("y", t + 310 * NS)
    assert len(store) == 3  # "old" gone, "y" added
    assert not store.seen("old", t + 310 * NS)
    assert store.seen("new", t + 310 * NS)


def test_nonce_store_is_bounded_and_evicts_the_oldest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = NonceStore(max_entries=3)
    t = 1_700_000_000 * NS
    with caplog.at_level(logging.WARNING, logger="plexd.api"):
        for n in range(10):
            assert store.remember(f"n{n}", t + n)
    assert len(store) == 3
    assert [store.seen(f"n{n}", t + 10) for n in range(10)] == [False] * 7 + [True] * 3
    assert store.evicted == 7
    warnings = [r for r in caplog.records if "nonce store full" in r.getMessage()]
    assert len(warnings) == 1  # at most once per cleanup interval
    assert getattr(warnings[0], "max_entries", None) == 3


def test_nonce_store_memory_stays_bounded_when_nonces_come_back() -> None:
    store = NonceStore(max_entries=5, ttl=1, cleanup_interval=3600)
    t = 1_700_000_000 * NS
    for n in range(1000):
        store.remember(f"n{n % 5}", t + n * NS)
    assert len(store) == 5
    assert len(store._order) <= 10


def test_nonce_store_rejects_settings_that_cannot_work() -> None:
    with pytest.raises(ConfigError):
        NonceStore(max_entries=0)
    with pytest.raises(ConfigError):
        NonceStore(ttl=0)


async def test_verifier_uses_a_given_nonce_store_and_its_bound() -> None:
    check = verifier(nonce_store=NonceStore(max_entries=10))
    for n in range(25):
        await check.verify(signed(n))
    assert len(check.nonces) == 10


# --- keys and rotation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        PUB_OLD[:31],
        PUB_OLD + b"\x00",
        "",
        "not base64",
        base64.b64encode(PUB_OLD[:31]).decode(),
        base64.urlsafe_b64encode(b"\xfb" * 32).decode(),
        base64.b64encode(PUB_OLD).decode().rstrip("="),
    ],
)
def test_invalid_key_material_is_a_config_error(key: bytes | str) -> None:
    with pytest.raises(ConfigError, match="signing key"):
        Ed25519Verifier(key)


def test_key_errors_do_not_echo_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        Ed25519Verifier("c2VjcmV0LWtleS1tYXRlcmlhbA==")
    assert "c2VjcmV0" not in str(caught.value)


def test_staleness_window_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        Ed25519Verifier(PUB_OLD, staleness_window=0)


async def test_keys_as_base64_text_and_as_bytes_are_the_same() -> None:
    await Ed25519Verifier(PUB_OLD_B64, clock=FakeClock()).verify(signed())
    await Ed25519Verifier(bytearray(PUB_OLD), clock=FakeClock()).verify(signed())


async def test_previous_key_is_accepted_until_the_transition_expires() -> None:
    clock = FakeClock()
    check = verifier(clock)
    check.set_keys(PUB_NEW, previous=PUB_OLD, transition_expires=T0 + timedelta(seconds=60))
    await check.verify(signed(1, seed=SEED_NEW))
    await check.verify(signed(2, seed=SEED_OLD))
    clock.advance(60)  # transition_expires must be in the future: now it is not
    with pytest.raises(VerificationError, match="does not verify with the current key"):
        await check.verify(signed(3, seed=SEED_OLD, issued_at=clock.now))
    await check.verify(signed(4, seed=SEED_NEW, issued_at=clock.now))


async def test_unknown_key_during_a_transition_names_both_keys() -> None:
    check = verifier()
    check.set_keys(PUB_NEW, previous=PUB_OLD, transition_expires=T0 + timedelta(hours=1))
    with pytest.raises(VerificationError, match="current or the previous key"):
        await check.verify(signed(seed=SEED_OTHER))


async def test_previous_key_without_transition_deadline_is_not_used() -> None:
    check = verifier()
    check.set_keys(PUB_NEW, previous=PUB_OLD)
    with pytest.raises(VerificationError, match="does not verify with the current key"):
        await check.verify(signed(seed=SEED_OLD))


def test_naive_transition_deadline_is_refused() -> None:
    with pytest.raises(NaiveDatetimeError):
        verifier().set_keys(PUB_NEW, PUB_OLD, datetime(2099, 1, 1))


async def test_verifier_from_register_response() -> None:
    response = RegisterResponse(node_id="n1", signing_public_key=PUB_OLD_B64)
    check = Ed25519Verifier.from_register_response(response, clock=FakeClock())
    await check.verify(signed())
    with pytest.raises(ConfigError, match="signing_public_key"):
        Ed25519Verifier.from_register_response(RegisterResponse(node_id="n1"))


async def test_update_from_signing_keys_of_a_state_response() -> None:
    check = verifier()
    check.update_from_signing_keys(
        SigningKeys(current=PUB_NEW_B64, previous=PUB_OLD_B64, transition_expires=T0 + timedelta(1))
    )
    await check.verify(signed(1, seed=SEED_NEW))
    await check.verify(signed(2, seed=SEED_OLD))
    check.update_from_signing_keys(SigningKeys(current=PUB_NEW_B64, previous=""))
    with pytest.raises(VerificationError, match="current key"):
        await check.verify(signed(3, seed=SEED_OLD))
    with pytest.raises(ConfigError, match="current"):
        check.update_from_signing_keys(SigningKeys(current=""))


async def test_update_from_a_signing_key_rotated_event() -> None:
    check = verifier()
    keys = SigningKeys(
        current=PUB_NEW_B64, previous=PUB_OLD_B64, transition_expires=T0 + timedelta(minutes=5)
    )
    rotation = sign_envelope(
        SEED_OLD, "signing_key_rotated", "evt-rot", msgspec.json.encode(keys), issued_at=T0
    )
    await check.verify(rotation)
    check.update_from_event(rotation)
    await check.verify(signed(1, seed=SEED_NEW))
    await check.verify(signed(2, seed=SEED_OLD))


@pytest.mark.parametrize(
    ("event_type", "payload", "error"),
    [
        ("peer_added", b'{"current":"x"}', EnvelopeError),
        ("signing_key_rotated", b"null", EnvelopeError),
        ("signing_key_rotated", b'{"current":5}', EnvelopeError),
        ("signing_key_rotated", b'{"current":"bm90IGEga2V5"}', ConfigError),
        ("signing_key_rotated", b'{"previous":"x"}', ConfigError),
    ],
)
def test_bad_rotation_event_raises_and_keeps_the_keys(
    event_type: str, payload: bytes, error: type[PlexdError]
) -> None:
    check = verifier()
    keys_before = check._keys
    env = SignedEnvelope(event_type=event_type, event_id="e", payload=payload, issued_at=T0)
    with pytest.raises(error):
        check.update_from_event(env)
    assert check._keys == keys_before


# --- concurrency ----------------------------------------------------------------------------


def test_threads_sharing_a_verifier_accept_each_event_exactly_once() -> None:
    check = verifier()
    envelopes = [signed(n) for n in range(40)]
    accepted: list[str] = []
    replays: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        for env in envelopes:
            try:
                check.verify_sync(env)
            except VerificationError as exc:
                with lock:
                    replays.append(str(exc))
            else:
                with lock:
                    accepted.append(env.event_id)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(accepted) == sorted(env.event_id for env in envelopes)
    assert len(replays) == 5 * 40
    assert all("replayed" in message for message in replays)


def test_key_swaps_during_verification_never_expose_a_half_set() -> None:
    check = verifier()
    envelopes = [signed(n, seed=SEED_OLD) for n in range(60)]
    stop = threading.Event()
    failures: list[str] = []

    def rotate() -> None:
        # The old key stays valid throughout: current, or previous in a transition.
        while not stop.is_set():
            check.set_keys(PUB_NEW, PUB_OLD, T0 + timedelta(hours=1))
            check.set_keys(PUB_OLD)

    def work(chunk: list[SignedEnvelope]) -> None:
        for env in chunk:
            try:
                check.verify_sync(env)
            except VerificationError as exc:
                failures.append(str(exc))

    rotator = threading.Thread(target=rotate)
    workers = [threading.Thread(target=work, args=(envelopes[i::3],)) for i in range(3)]
    rotator.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    rotator.join()
    assert failures == []
    assert len(check.nonces) == 60


async def test_tasks_racing_on_one_envelope_accept_it_once() -> None:
    check = verifier()
    env = signed()
    results = await asyncio.gather(*(check.verify(env) for _ in range(10)), return_exceptions=True)
    assert results.count(None) == 1
    assert all(isinstance(r, VerificationError) for r in results if r is not None)


# --- the signer ---------------------------------------------------------------------------


def test_signer_accepts_a_nacl_signing_key_and_refuses_other_keys() -> None:
    by_seed = signed()
    by_key = sign_envelope(
        nacl.signing.SigningKey(SEED_OLD),
        "peer_added",
        "evt-1",
        {"peer_id": "node-1"},
        issued_at=T0,
        nonce="nonce-1",
    )
    assert by_key == by_seed
    for bad in (SEED_OLD[:31], "seed", None):
        with pytest.raises(ConfigError, match="private_key"):
            sign_envelope(bad, "t", "i", None)  # type: ignore[arg-type]


def test_signer_encodes_python_values_as_go_does() -> None:
    env = signed(payload={"b": "<&>", "a": "\u2028", "c": [1, None]})
    assert bytes(env.payload) == b'{"a":"\\u2028","b":"\\u003c\\u0026\\u003e","c":[1,null]}'


def test_signer_compacts_raw_json_and_refuses_invalid_json() -> None:
    env = signed(payload=msgspec.Raw(b'{ "x" : "a b" ,\n "y": [ ] }'))
    assert bytes(env.payload) == b'{"x":"a b","y":[]}'
    assert bytes(signed(payload=bytearray(b" 1 ")).payload) == b"1"
    for bad in (b'{"x":}', b"[1,]", b"01", b'"\x01"', b"{} {}", b"[" * 10001 + b"]" * 10001):
        with pytest.raises(EnvelopeError, match="not valid JSON"):
            signed(payload=bad)


def test_signer_refuses_payloads_it_cannot_encode() -> None:
    with pytest.raises(EnvelopeError, match="cannot be encoded"):
        signed(payload={"x": object()})


def test_signer_defaults_to_now_with_nanoseconds_and_a_random_nonce() -> None:
    before = datetime.now(UTC)
    one = sign_envelope(SEED_OLD, "t", "i", None)
    two = sign_envelope(SEED_OLD, "t", "i", None)
    assert before - timedelta(seconds=1) <= one.issued_at <= datetime.now(UTC)
    assert one.issued_at.tzinfo is UTC
    assert one.issued_at_nanos // 1000 == one.issued_at.microsecond
    assert len(one.nonce) == 32 and int(one.nonce, 16) >= 0
    assert one.nonce != two.nonce


def test_signer_refuses_naive_and_bad_times() -> None:
    with pytest.raises(NaiveDatetimeError):
        sign_envelope(SEED_OLD, "t", "i", None, issued_at=datetime(2025, 1, 1))
    with pytest.raises(EnvelopeError, match="issued_at"):
        sign_envelope(SEED_OLD, "t", "i", None, issued_at="yesterday")


def test_signer_keeps_offset_and_nanoseconds_of_rfc3339_text() -> None:
    env = signed(issued_at="2025-01-15T12:30:00.000000007+02:00")
    assert env.issued_at_text == "2025-01-15T12:30:00.000000007+02:00"
    assert b'"issued_at":"2025-01-15T12:30:00.000000007+02:00"' in envelope_json(env)


async def test_lone_surrogates_are_signed_as_go_reads_them() -> None:
    env = sign_envelope(SEED_OLD, "t", "evt-\ud800", None, issued_at=T0, nonce="n\udfff")
    assert env.event_id == "evt-\ufffd"
    assert env.nonce == "n\ufffd"
    parsed = parse_envelope(envelope_json(env))
    assert parsed == env
    await verifier().verify(parsed)


def test_envelope_json_is_go_wire_json_with_the_signature_last() -> None:
    env = signed(payload={"peer_id": "node-1"})
    wire = envelope_json(env)
    assert wire == canonical_bytes(env)[:-1] + b',"signature":"%s"}' % env.signature.encode()
    assert list(json.loads(wire)) == [
        "event_type",
        "event_id",
        "issued_at",
        "nonce",
        "payload",
        "signature",
    ]


@settings(max_examples=150, deadline=None)
@given(
    event_type=st.text(min_size=1, max_size=20),
    event_id=st.text(min_size=1, max_size=20),
    nonce=st.text(min_size=1, max_size=20),
    payload=_json_values,
    nanos=st.integers(0, NS - 1),
    offset_minutes=st.integers(-23 * 60, 23 * 60),
)
def test_round_trip_sign_parse_verify(
    event_type: str,
    event_id: str,
    nonce: str,
    payload: Any,
    nanos: int,
    offset_minutes: int,
) -> None:
    zone = timezone(timedelta(minutes=offset_minutes))
    issued_at = T0.astimezone(zone).replace(microsecond=nanos // 1000)
    text = format_rfc3339nano(issued_at, nanos)
    env = sign_envelope(SEED_OLD, event_type, event_id, payload, issued_at=text, nonce=nonce)
    assert json.loads(canonical_bytes(env)) == {
        "event_type": event_type,
        "event_id": event_id,
        "issued_at": text,
        "nonce": nonce,
        "payload": payload,
    }
    wire = envelope_json(env)
    parsed = parse_envelope(wire)
    assert parsed == env
    assert parsed.issued_at_ns == env.issued_at_ns
    assert _parse_envelope_exact(wire) == parsed
    check = Ed25519Verifier(PUB_OLD, clock=lambda: issued_at)
    check.verify_sync(parsed)


# --- envelopes decoded exactly as Go decodes them ------------------------------------------

BASE = b'"event_id":"i","issued_at":"2025-01-15T10:30:00Z","nonce":"n"'


def parse(body: bytes) -> SignedEnvelope:
    return parse_envelope(b'{"event_type":"t",' + BASE + body + b"}")


def test_invalid_utf8_in_strings_reads_as_one_replacement_per_byte() -> None:
    # Python's "replace" would give one U+FFFD for the truncated sequence; Go gives two.
    env = parse_envelope(b'{"event_type":"t\xe6\xbc","event_id":"\xff\xfe-1"}')
    assert env.event_type == "t\ufffd\ufffd"
    assert env.event_id == "\ufffd\ufffd-1"
    assert canonical_bytes(env).startswith('{"event_type":"t\ufffd\ufffd"'.encode())


def test_lone_surrogate_escapes_read_as_replacement_characters() -> None:
    env = parse_envelope(
        b'{"event_type":"\\ud83d\\ude00","event_id":"\\ud800x\\udc00\\ud800\\ud800\\udc00"}'
    )
    assert env.event_type == "\U0001f600"
    assert env.event_id == "\ufffdx\ufffd\ufffd\U00010000"


async def test_lone_surrogate_escape_in_the_payload_is_kept_and_verifies() -> None:
    env = signed(payload=b'{"s":"\\ud800"}')
    parsed = parse_envelope(envelope_json(env))
    assert bytes(parsed.payload) == b'{"s":"\\ud800"}'
    await verifier().verify(parsed)


def test_keys_match_case_insensitively_as_go_struct_fields() -> None:
    env = parse_envelope(
        (
            '{"EVENT_TYPE":"t","Event_Id":"i","iSSued_at":"2025-01-15T10:30:00Z",'
            '"NONCE":"n","Payload":[1],"\u017fignature":"sig"}'
        ).encode()
    )
    assert (env.event_type, env.event_id, env.nonce, env.signature) == ("t", "i", "n", "sig")
    assert env.issued_at == T0
    assert bytes(env.payload) == b"[1]"


def test_duplicate_keys_take_the_last_value_and_null_changes_nothing() -> None:
    env = parse(b',"nonce":"n2","signature":"a","signature":null,"payload":1,"payload":null')
    assert env.nonce == "n2"
    assert env.signature == "a"
    assert bytes(env.payload) == b"null"
    env = parse(b',"issued_at":null')
    assert env.issued_at_text == "2025-01-15T10:30:00Z"


def test_unknown_keys_are_ignored() -> None:
    env = parse(b',"version":2,"extra":{"a":["b"]}')
    assert env.nonce == "n"


async def test_deep_payload_within_go_limit_verifies() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    env = signed(payload=deep)
    parsed = parse_envelope(envelope_json(env))
    assert bytes(parsed.payload) == deep
    await verifier().verify(parsed)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   ",
        b"not json",
        b"[]",
        b"null",
        b'"envelope"',
        b'{"event_type":"t","event_id":"i"',
        b'{"event_type":"t","event_id":"i"} x',
        b'{"event_type":"t","event_id":"i",}',
        b'{"event_type":"t\x01","event_id":"i"}',
        b'{"event_type":"\\x","event_id":"i"}',
        b'{"event_type":5,"event_id":"i"}',
        b'{"event_type":"t","event_id":"i","nonce":[]}',
        b'{"event_type":"t","event_id":"i","payload":01}',
        b'{"event_type":"t","event_id":"i","payload":' + b"[" * 10000 + b"]" * 10000 + b"}",
        b'\xef\xbb\xbf{"event_type":"t","event_id":"i"}',
        b'{"event_type":"","event_id":"i"}',
        b'{"event_type":"t","event_id":null}',
        b'{"\xff":1}',
    ],
)
def test_what_go_cannot_read_is_an_envelope_error(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        parse_envelope(data)
    with pytest.raises(EnvelopeError):
        parse_envelope(data.decode("utf-8", "surrogateescape"))


def test_text_with_foreign_lone_surrogates_does_not_leak_unicode_errors() -> None:
    env = parse_envelope('{"event_type":"t\ud800","event_id":"i"}')
    assert env.event_type == "t\ufffd\ufffd\ufffd"


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=80) | st.text(max_size=80))
def test_parse_envelope_raises_only_envelope_errors(data: bytes | str) -> None:
    try:
        env = parse_envelope(data)
    except EnvelopeError:
        return
    assert env.event_type and env.event_id


@settings(max_examples=150, deadline=None)
@given(
    event_id=st.text(max_size=10),
    payload=_json_values,
    indent=st.integers(0, 2),
    spaced=st.booleans(),
)
def test_exact_decoder_agrees_with_the_fast_decoder(
    event_id: str, payload: Any, indent: int, spaced: bool
) -> None:
    wire = envelope_json(sign_envelope(SEED_OLD, "t", "i" + event_id, payload, issued_at=T0))
    if spaced:
        wire = msgspec.json.format(wire, indent=indent)
    assert _parse_envelope_exact(wire) == parse_envelope(wire)


# ASCII without "u": edits cannot make bad UTF-8 or a surrogate escape (where Go and
# msgspec differ on purpose).
_ascii_text = st.text(alphabet=st.characters(max_codepoint=0x7F, exclude_characters="u"))
_ascii_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _ascii_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_ascii_text, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    value=_ascii_json_values,
    indent=st.integers(0, 2),
    edits=st.lists(
        st.tuples(
            st.integers(0, 10_000), st.sampled_from(list(b' ,:[]{}"\\01e.-tx\x01')), st.booleans()
        ),
        max_size=3,
    ),
)
def test_json_scanner_accepts_what_a_strict_parser_accepts(
    value: Any, indent: int, edits: list[tuple[int, int, bool]]
) -> None:
    data = bytearray(msgspec.json.format(msgspec.json.encode(value), indent=indent))
    for where, char, insert in edits:
        where %= len(data) + 1
        if insert or where == len(data):
            data.insert(where, char)
        else:
            data[where] = char
    try:
        msgspec.json.decode(bytes(data), type=msgspec.Raw)
    except msgspec.DecodeError:
        valid = False
    else:
        valid = True
    try:
        scan_json(bytes(data))
    except ValueError:
        scanned = False
    else:
        scanned = True
    assert scanned == valid, bytes(data)
