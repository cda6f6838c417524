"""Pure-logic layer: verification of signed events (WIRE.md "Signatures"), Go-exact.

It owns the signed message, rebuilt from the envelope as Go's ``encoding/json``
writes it (:func:`canonical_bytes`), the checks of WIRE.md in their order, and the
nonces remembered against replays. Most envelopes arrive exactly as Go writes them,
so the message is a concatenation of their parts (the fast path); anything else takes
the general path, which applies ``_gojson``'s escaping and compaction rules.
"""

from __future__ import annotations

import binascii
import collections
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import msgspec
import nacl.bindings
import nacl.exceptions

try:
    # PyNaCl's cffi binding of libsodium: crypto_sign_open called on the bytes already
    # held, with no output buffer, is libsodium's detached verify (it writes nothing when
    # given NULL) without the buffers, copy and exception of nacl.bindings' wrapper. The
    # call releases the GIL, so threads verify in parallel.
    from nacl._sodium import ffi as _sodium_ffi  # type: ignore[import-not-found,unused-ignore]
    from nacl._sodium import lib as _sodium_lib  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - a PyNaCl without it: its public wrapper
    _sodium_lib = _sodium_ffi = None

from ._envelope import SignedEnvelope
from ._gojson import MAY_CHANGE_IN_COMPACTION, NEEDS_ESCAPING, compact, decode_base64, escape_string
from ._gotime import NANOS_PER_SECOND, ZERO_TIME, ZERO_TIME_NS, epoch_ns, naive_datetime_error
from ._types import EventType, RegisterResponse, SigningKeys
from .errors import ConfigError, EnvelopeError, VerificationError

__all__ = [
    "DEFAULT_MAX_NONCES",
    "DEFAULT_STALENESS_WINDOW",
    "NONCE_TTL",
    "Ed25519Verifier",
    "EventVerifier",
    "NoOpVerifier",
    "NonceStore",
    "canonical_bytes",
]

# WIRE.md: "not older than 5 minutes; not more than 5 minutes in the future".
DEFAULT_STALENESS_WINDOW = 300.0
# WIRE.md: "nonces are remembered for 5 minutes".
NONCE_TTL = 300.0
# Expired nonces are dropped lazily, at most this often (seconds).
NONCE_CLEANUP_INTERVAL = 60.0
# Upper bound on remembered nonces: 100k entries of 32-character nonces take about 22 MB,
# and at the default window the bound is reached only above ~330 signed events per second.
DEFAULT_MAX_NONCES = 100_000
ED25519_PUBLIC_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
# Its standard base64 text, with the padding.
_SIGNATURE_TEXT_SIZE = 88

_log = logging.getLogger("plexd.api")


# --- the signed message -----------------------------------------------------------------


def _fast_path_applies(envelope: SignedEnvelope) -> bool:
    """Whether the envelope's parts are already exactly what Go writes."""
    return _writes_as_is(envelope.event_type, envelope.event_id, envelope.nonce, envelope.payload)


def _writes_as_is(event_type: str, event_id: str, nonce: str, payload: msgspec.Raw) -> bool:
    # One search of the three strings joined costs less than three (a character class
    # cannot match across the joins).
    if NEEDS_ESCAPING.search(f"{event_type}{event_id}{nonce}") is not None:
        return False
    raw = bytes(payload)
    return len(raw.translate(None, MAY_CHANGE_IN_COMPACTION)) == len(raw)


def _canonical_head(envelope: SignedEnvelope) -> bytes:
    return (
        f'{{"event_type":"{envelope.event_type}","event_id":"{envelope.event_id}",'
        f'"issued_at":"{envelope.issued_at_text}","nonce":"{envelope.nonce}","payload":'
    ).encode()


def _canonical_fast(envelope: SignedEnvelope) -> bytes:
    return b"".join((_canonical_head(envelope), envelope.payload, b"}"))


def _canonical_general(envelope: SignedEnvelope) -> bytes:
    return b"".join(
        (
            b'{"event_type":"',
            escape_string(envelope.event_type),
            b'","event_id":"',
            escape_string(envelope.event_id),
            b'","issued_at":"',
            envelope.issued_at_text.encode(),
            b'","nonce":"',
            escape_string(envelope.nonce),
            b'","payload":',
            compact(bytes(envelope.payload)),
            b"}",
        )
    )


def canonical_bytes(envelope: SignedEnvelope) -> bytes:
    """The signed message of an envelope, byte for byte as Go's ``json.Marshal`` writes it.

    ``{"event_type":…,"event_id":…,"issued_at":…,"nonce":…,"payload":…}`` with the
    strings escaped Go's way, the payload compacted with its string contents kept,
    and ``issued_at`` in Go's RFC3339Nano with the received nanoseconds and offset.
    The payload is taken to be valid JSON (as :func:`parse_envelope` and
    :func:`sign_envelope` ensure); for other bytes the result is unspecified.
    """
    if _fast_path_applies(envelope):
        return _canonical_fast(envelope)
    return _canonical_general(envelope)


# --- the signature and the keys ------------------------------------------------------------


def _signature_bytes(signature: str) -> bytes | None:
    """The signature decoded as Go's ``base64.StdEncoding`` does; None where Go fails."""
    if len(signature) == _SIGNATURE_TEXT_SIZE and signature[-2:] == "==":
        # What Go writes: 86 characters of the alphabet and "==", which strict decoding
        # takes (it refuses anything else there: a character outside the alphabet, "="
        # before the end) and decodes as Go does. Cheaper than a pattern and then decoding.
        try:
            return binascii.a2b_base64(signature, strict_mode=True)
        except (binascii.Error, ValueError):
            pass
    return decode_base64(signature)


def _decode_signature(signature: str, event_id: str) -> bytes:
    raw = _signature_bytes(signature)
    if raw is None:
        raise VerificationError(f"event {event_id!r}: signature is not valid base64")
    if len(raw) != ED25519_SIGNATURE_SIZE:
        raise VerificationError(
            f"event {event_id!r}: signature is {len(raw)} bytes, want {ED25519_SIGNATURE_SIZE}"
        )
    return raw


def _public_key(key: bytes | bytearray | memoryview | str, what: str) -> bytes:
    """A 32-byte Ed25519 public key from raw bytes or standard base64 text."""
    if isinstance(key, str):
        raw = decode_base64(key)
        if raw is None:
            raise ConfigError(f"{what}: not valid standard base64")
    elif isinstance(key, bytes | bytearray | memoryview):
        raw = bytes(key)
    else:
        raise ConfigError(f"{what}: expected bytes or a base64 str, got {type(key).__name__}")
    if len(raw) != ED25519_PUBLIC_KEY_SIZE:
        raise ConfigError(f"{what}: {len(raw)} bytes, want {ED25519_PUBLIC_KEY_SIZE}")
    return raw


def _ed25519_valid_wrapped(signed_message: bytes, public_key: bytes) -> bool:
    try:
        nacl.bindings.crypto_sign_open(signed_message, public_key)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def _ed25519_valid_direct(signed_message: bytes, public_key: bytes) -> bool:
    status: int = _sodium_lib.crypto_sign_open(
        _NULL, _NULL, signed_message, len(signed_message), public_key
    )
    return status == 0


# ``signed_message`` is the 64-byte signature followed by the message; libsodium, like Go's
# crypto/ed25519, rejects a non-canonical S (S >= L). Thread-safe, and runs without the GIL.
_ed25519_valid: Callable[[bytes, bytes], bool]
if _sodium_lib is not None:
    _NULL = _sodium_ffi.NULL
    _ed25519_valid = _ed25519_valid_direct
else:  # pragma: no cover
    _ed25519_valid = _ed25519_valid_wrapped

# What a signature check found, as threads report it (see Ed25519Verifier.finish_check).
UNCHECKED = 0  # not checked off the loop: the whole verification runs in finish_check
VALID_CURRENT = 1
VALID_PREVIOUS = 2
INVALID = 3

SigningKeySet = tuple[bytes, bytes | None, int]


def check_signatures(
    messages: list[bytes | None],
    keys: SigningKeySet,
    outcomes: bytearray,
    start: int,
    end: int,
) -> None:
    """Check ``messages[start:end]`` (signature + signed message, as from
    :meth:`Ed25519Verifier.signed_message`) against ``keys``, writing one outcome per
    message into ``outcomes``. Pure and thread-safe: what a verification thread runs."""
    current, previous = keys[0], keys[1]
    valid = _ed25519_valid
    for index in range(start, end):
        signed = messages[index]
        if signed is None:
            continue
        if valid(signed, current):
            outcomes[index] = VALID_CURRENT
        elif previous is not None and valid(signed, previous):
            outcomes[index] = VALID_PREVIOUS
        else:
            outcomes[index] = INVALID


# --- verifiers -----------------------------------------------------------------------------


@runtime_checkable
class EventVerifier(Protocol):
    """Checks a signed envelope; raises :class:`VerificationError` when it must be dropped."""

    async def verify(self, envelope: SignedEnvelope) -> None:
        """Return if the envelope may be dispatched, raise :class:`VerificationError` if not."""
        ...


class NoOpVerifier:
    """Accepts every envelope (for tests, or a control plane that does not sign)."""

    async def verify(self, envelope: SignedEnvelope) -> None:
        """Accept the envelope."""
        return None


class NonceStore:
    """The nonces of verified events, each remembered for ``ttl`` seconds (5 minutes).

    Thread-safe. Expired nonces are dropped lazily, at most once per ``cleanup_interval``.
    A nonce is kept for ``ttl`` after it was recorded, or longer when the caller asks
    (the verifier keeps it until its event leaves the staleness window, so that no
    replay can fall between the two).

    Memory is bounded by ``max_entries`` (default 100 000). When a flood of validly
    signed events fills the store, the oldest entries are forgotten early and a warning
    is logged (at most once per cleanup interval). The trade-off: an event whose nonce
    was evicted could be replayed until it leaves the staleness window; refusing new
    events instead would let the flood stop all events. The bound is reached only by a
    control plane sending more than ``max_entries / ttl`` events per second (about 330
    at the defaults), and forged events never reach the store (the verifier records a
    nonce only after its signature verified).
    """

    def __init__(
        self,
        *,
        ttl: float = NONCE_TTL,
        max_entries: int = DEFAULT_MAX_NONCES,
        cleanup_interval: float = NONCE_CLEANUP_INTERVAL,
        logger: logging.Logger | None = None,
    ) -> None:
        if ttl <= 0:
            raise ConfigError("NonceStore ttl must be positive")
        if max_entries < 1:
            raise ConfigError("NonceStore max_entries must be at least 1")
        self._ttl_ns = int(ttl * NANOS_PER_SECOND)
        self._cleanup_ns = int(cleanup_interval * NANOS_PER_SECOND)
        self.max_entries = max_entries
        self._log = logger or _log
        self._lock = threading.Lock()
        self._expiry: dict[str, int] = {}
        # Insertion order, for cleanup and eviction; an entry whose expiry no longer
        # matches the dict's is stale and skipped.
        self._order: collections.deque[tuple[str, int]] = collections.deque()
        # Below any time a clock can give: the first remember cleans up (and sets it).
        self._next_cleanup_ns = -(1 << 80)
        self._next_warning_ns = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._expiry)

    def seen(self, nonce: str, now_ns: int) -> bool:
        """Whether ``nonce`` is remembered (recorded and not expired) at ``now_ns``."""
        expires = self._expiry.get(nonce)
        return expires is not None and expires > now_ns

    def remember(self, nonce: str, now_ns: int, keep_until_ns: int = 0) -> bool:
        """Record ``nonce`` at ``now_ns`` (nanoseconds since the epoch); False if it is
        already remembered (a replay). It is kept until ``now_ns + ttl`` or
        ``keep_until_ns``, whichever is later."""
        with self._lock:
            if now_ns >= self._next_cleanup_ns:
                self._forget_expired(now_ns)
            expiry = self._expiry
            expires = expiry.get(nonce)
            if expires is None:
                if len(expiry) >= self.max_entries:
                    self._evict(now_ns)
            elif expires > now_ns:
                return False
            until = now_ns + self._ttl_ns
            if keep_until_ns > until:
                until = keep_until_ns
            expiry[nonce] = until
            order = self._order
            order.append((nonce, until))
            if len(order) > 2 * self.max_entries:
                self._rebuild_order()
            return True

    def forget(self, nonce: str) -> None:
        """Forget ``nonce`` at once: its event was verified but its handlers never
        finished (the stream was stopped or cancelled), so its replay must be accepted."""
        with self._lock:
            self._expiry.pop(nonce, None)

    def _forget_expired(self, now_ns: int) -> None:
        order, expiry = self._order, self._expiry
        while order and order[0][1] <= now_ns:
            nonce, until = order.popleft()
            if expiry.get(nonce) == until:
                del expiry[nonce]
        self._next_cleanup_ns = now_ns + self._cleanup_ns

    def _evict(self, now_ns: int) -> None:
        order, expiry = self._order, self._expiry
        live = 0
        while order and len(expiry) >= self.max_entries:
            nonce, until = order.popleft()
            if expiry.get(nonce) == until:
                del expiry[nonce]
                live += until > now_ns
        self.evicted += live
        if live and now_ns >= self._next_warning_ns:
            self._next_warning_ns = now_ns + self._cleanup_ns
            self._log.warning(
                "nonce store full (%d entries): forgetting the oldest nonces early",
                self.max_entries,
                extra={"max_entries": self.max_entries, "evicted": self.evicted},
            )

    def _rebuild_order(self) -> None:
        # Stale entries (nonces recorded again after expiring) outnumber live ones.
        live = sorted(self._expiry.items(), key=lambda item: item[1])
        self._order = collections.deque(live)


class Ed25519Verifier:
    """Verifies envelopes signed with the control plane's Ed25519 key, as WIRE.md says.

    The checks run in this order, each failure a :class:`VerificationError` with its own
    message: signature present; nonce present; issued_at present (Go's zero time counts
    as missing); not older than ``staleness_window`` seconds; not more than that in the
    future (both to the nanosecond); signature valid for the current key, or for the
    previous key while ``transition_expires`` is in the future; nonce not seen before.
    A nonce is recorded only once the signature verified, so forged events cannot fill
    the :class:`NonceStore`.

    Keys are 32 raw bytes or standard base64 text; invalid key material raises
    :class:`ConfigError`. ``clock`` returns the current time as an aware datetime
    (default: the system clock).

    Thread-safe: one verifier may be shared by tasks, event loops and threads, and
    ``SSEStream``/``SSEManager`` check its signatures on worker threads
    (:func:`check_signatures`); the checks that depend on the order of events, the
    time window and the nonce, stay on the stream's event loop, in stream order
    (:meth:`finish_check`), so ``clock`` is called there only.
    """

    def __init__(
        self,
        current_key: bytes | str,
        *,
        staleness_window: float = DEFAULT_STALENESS_WINDOW,
        clock: Callable[[], datetime] | None = None,
        nonce_store: NonceStore | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not staleness_window > 0:
            raise ConfigError("staleness_window must be a positive number of seconds")
        self.staleness_window = staleness_window
        self._window_ns = int(staleness_window * NANOS_PER_SECOND)
        self._clock = clock
        # The clock's last datetime and its nanoseconds, as one object for thread safety.
        self._clock_cache: tuple[datetime | None, int] = (None, 0)
        self._log = logger or _log
        self.nonces = nonce_store if nonce_store is not None else NonceStore(logger=self._log)
        self._key_lock = threading.Lock()
        # (current, previous or None, previous valid until, in ns): swapped as one object.
        self._keys: tuple[bytes, bytes | None, int] = (b"", None, 0)
        self.set_keys(current_key)

    @classmethod
    def from_register_response(cls, response: RegisterResponse, **kwargs: Any) -> Ed25519Verifier:
        """A verifier for the key that registration handed out (``signing_public_key``)."""
        if not response.signing_public_key:
            raise ConfigError("the registration response carries no signing_public_key")
        return cls(response.signing_public_key, **kwargs)

    def set_keys(
        self,
        current: bytes | str,
        previous: bytes | str | None = None,
        transition_expires: datetime | None = None,
    ) -> None:
        """Replace the keys. ``previous`` is accepted only while ``transition_expires`` is
        in the future (so never without it, as in Go); an empty ``previous`` means none."""
        current_raw = _public_key(current, "current signing key")
        previous_raw = _public_key(previous, "previous signing key") if previous else None
        until = 0
        if previous_raw is not None and transition_expires is not None:
            if transition_expires.tzinfo is None:
                raise naive_datetime_error("transition_expires")
            until = epoch_ns(transition_expires)
        with self._key_lock:
            self._keys = (current_raw, previous_raw, until)

    def update_from_signing_keys(self, keys: SigningKeys) -> None:
        """Take the keys of ``StateResponse.signing_keys`` (or a rotation event's payload)."""
        if not keys.current:
            raise ConfigError("signing keys without a current key")
        expires = keys.transition_expires
        if expires == ZERO_TIME:
            expires = None
        self.set_keys(keys.current, keys.previous or None, expires)

    def update_from_event(self, envelope: SignedEnvelope) -> None:
        """Take the keys of a ``signing_key_rotated`` event. Call it with an envelope that
        verified: the event itself is signed with the key being replaced."""
        if envelope.event_type != EventType.SIGNING_KEY_ROTATED:
            raise EnvelopeError(
                f"event {envelope.event_id!r} is {envelope.event_type!r}, not signing_key_rotated"
            )
        keys = envelope.decode_payload(SigningKeys)
        self.update_from_signing_keys(keys)

    def _now_ns(self) -> int:
        clock = self._clock
        if clock is None:
            return time.time_ns()
        now = clock()
        cache = self._clock_cache
        if cache[0] is not now:
            if now.tzinfo is None:
                raise naive_datetime_error("the verifier clock's time")
            cache = self._clock_cache = (now, epoch_ns(now))
        return cache[1]

    async def verify(self, envelope: SignedEnvelope) -> None:
        """Raise :class:`VerificationError` unless the envelope passes every check."""
        self.verify_sync(envelope)

    def verify_sync(self, envelope: SignedEnvelope) -> None:
        """:meth:`verify` without the coroutine, for threads and synchronous code."""
        issued_ns = _required_parts(envelope)
        now_ns = self._now_ns()
        self._check_window(envelope, issued_ns, now_ns)
        self._check_signature(envelope, now_ns)
        if not self.nonces.remember(envelope.nonce, now_ns, issued_ns + self._window_ns):
            raise VerificationError(
                f"event {envelope.event_id!r}: replayed nonce {envelope.nonce!r}"
            )

    def _check_window(self, envelope: SignedEnvelope, issued_ns: int, now_ns: int) -> None:
        if now_ns - issued_ns > self._window_ns:
            raise VerificationError(
                f"event {envelope.event_id!r}: stale, issued_at {envelope.issued_at_text} "
                f"is more than {self.staleness_window:g}s in the past"
            )
        if issued_ns - now_ns > self._window_ns:
            raise VerificationError(
                f"event {envelope.event_id!r}: issued_at {envelope.issued_at_text} "
                f"is more than {self.staleness_window:g}s in the future"
            )

    def _check_signature(self, envelope: SignedEnvelope, now_ns: int) -> None:
        event_id = envelope.event_id
        signed = _signed_bytes(_decode_signature(envelope.signature, event_id), envelope)
        current, previous, previous_until = self._keys
        if _ed25519_valid(signed, current):
            return
        if previous is None or now_ns >= previous_until:
            raise _invalid_with_current(event_id)
        if not _ed25519_valid(signed, previous):
            raise _invalid_with_both(event_id)

    # --- verification split in two, for a pool of threads (``_stream`` drives it) ----------
    #
    # signed_message (on the loop, in any order) -> check_signatures (on a thread) ->
    # finish_check (on the loop, in stream order). Together they decide exactly as
    # verify_sync: finish_check runs the time window and the nonce checks when the event's
    # turn comes, and verify_sync itself for anything the fast split did not cover.

    @property
    def keys(self) -> SigningKeySet:
        """The keys in force, as one immutable object (compare by identity: a rotation
        replaces it)."""
        return self._keys

    def signed_message(self, envelope: SignedEnvelope) -> bytes | None:
        """Signature and signed message, the bytes a thread checks; None when the envelope
        misses a part or its signature does not decode (:meth:`finish_check` then finds
        out which, in the order of :meth:`verify`)."""
        signature = envelope.signature
        if not signature or not envelope.nonce or envelope._issued_at_ns == ZERO_TIME_NS:
            return None
        raw = _signature_bytes(signature)
        if raw is None or len(raw) != ED25519_SIGNATURE_SIZE:
            return None
        return _signed_bytes(raw, envelope)

    def finish_check(self, envelope: SignedEnvelope, outcome: int, keys: SigningKeySet) -> None:
        """Finish what :func:`check_signatures` found for ``envelope`` with ``keys``: the
        time window, the key in force now, the nonce. Raises :class:`VerificationError`
        exactly as :meth:`verify` would now. Call it in stream order, on the stream's loop."""
        if outcome == UNCHECKED or keys is not self._keys:
            # The envelope took the slow path, or the keys rotated after it was checked.
            self.verify_sync(envelope)
            return
        issued_ns = envelope._issued_at_ns
        now_ns = time.time_ns() if self._clock is None else self._now_ns()
        window = self._window_ns
        if not -window <= now_ns - issued_ns <= window:
            self._check_window(envelope, issued_ns, now_ns)
        if outcome != VALID_CURRENT:
            if keys[1] is None or now_ns >= keys[2]:
                raise _invalid_with_current(envelope.event_id)
            if outcome != VALID_PREVIOUS:
                raise _invalid_with_both(envelope.event_id)
        if not self.nonces.remember(envelope.nonce, now_ns, issued_ns + window):
            raise VerificationError(
                f"event {envelope.event_id!r}: replayed nonce {envelope.nonce!r}"
            )


# What a node that missed a key rotation sees for every later event: say how it recovers.
_MISSED_ROTATION_HINT = (
    " (a key rotation missed while away? SSEManager(refresh_keys=True) takes the keys"
    " from fetch_state)"
)


def _invalid_with_current(event_id: str) -> VerificationError:
    return VerificationError(
        f"event {event_id!r}: signature does not verify with the current key"
        + _MISSED_ROTATION_HINT
    )


def _invalid_with_both(event_id: str) -> VerificationError:
    return VerificationError(
        f"event {event_id!r}: signature does not verify with the current or the previous key"
        + _MISSED_ROTATION_HINT
    )


def _signed_bytes(signature: bytes, envelope: SignedEnvelope) -> bytes:
    """The signature followed by the signed message (what libsodium's open takes), built
    in one allocation."""
    event_type, event_id, nonce, payload = (
        envelope.event_type, envelope.event_id, envelope.nonce, envelope.payload,
    )  # fmt: skip
    if _writes_as_is(event_type, event_id, nonce, payload):
        head = (
            f'{{"event_type":"{event_type}","event_id":"{event_id}",'
            f'"issued_at":"{envelope.issued_at_text}","nonce":"{nonce}","payload":'
        )
        return b"".join((signature, head.encode(), payload, b"}"))
    return signature + _canonical_general(envelope)


def _required_parts(envelope: SignedEnvelope) -> int:
    """Check that signature, nonce and issued_at are present; issued_at in nanoseconds."""
    if not envelope.signature:
        raise VerificationError(f"event {envelope.event_id!r}: missing signature")
    if not envelope.nonce:
        raise VerificationError(f"event {envelope.event_id!r}: missing nonce")
    issued_ns = envelope.issued_at_ns
    if issued_ns == ZERO_TIME_NS:
        raise VerificationError(f"event {envelope.event_id!r}: missing issued_at")
    return issued_ns
