"""Envelope verification throughput, side by side with a bare libsodium Ed25519 verify.

Run: python bench/bench_verify.py

Every variant verifies 10 000 envelopes (each with its own nonce, so the replay check
passes; the verifier's clock is fixed near issued_at) in rounds; the best round of each
is reported, the rounds interleaved so that load from elsewhere on the machine hits
every variant alike. The bare variants verify the same signed messages, prepared in
advance. "general path" envelopes have spaces inside their payload strings, so their
canonical bytes take Go's compaction path instead of the concatenation. "split" is
the verification as SSEStream runs it with verification threads (here all on one
thread): signed_message, check_signatures, finish_check.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime

import nacl.bindings
import nacl.signing

from plexd.api import (
    Ed25519Verifier,
    SignedEnvelope,
    canonical_bytes,
    envelope_json,
    parse_envelope,
    sign_envelope,
)
from plexd.api._verify import check_signatures

try:  # PyNaCl's cffi module: the lowest level PyNaCl reaches (private, so optional).
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover
    _lib = _ffi = None

ENVELOPES = 10_000
ROUNDS = 5
ISSUED_AT = "2025-01-15T10:30:00.123456789Z"
NOW = datetime(2025, 1, 15, 10, 30, 1, tzinfo=UTC)


def peer_payload(n: int) -> dict[str, object]:
    """A peer_added payload of about 200 bytes of compact JSON."""
    return {
        "peer_id": f"node-{n:06d}",
        "public_key": "PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw=",
        "mesh_ip": "10.99.3.17",
        "endpoint": "203.0.113.7:51820",
        "allowed_ips": ["10.99.3.17/32", "fd00:99::3:17/128"],
        "psk_ref": "psk-7f3a",
    }


def prose_payload(n: int) -> dict[str, object]:
    """An action_request payload of about 200 bytes whose strings hold spaces."""
    return {
        "execution_id": f"exec-{n:06d}",
        "action": "restart service",
        "params": {"unit": "nginx.service", "reason": "config changed by the operator"},
        "requested_by": "alice@example.com",
        "note": "rolling restart, one node at a time",
    }


def make_envelopes(
    seed: bytes, event_type: str, payload: Callable[[int], object]
) -> list[SignedEnvelope]:
    return [
        sign_envelope(seed, event_type, f"evt-{n:08d}", payload(n), issued_at=ISSUED_AT)
        for n in range(ENVELOPES)
    ]


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def verify_all(public_key: bytes, envelopes: list[SignedEnvelope]) -> Callable[[], None]:
    def run() -> None:
        verifier = Ed25519Verifier(public_key, clock=lambda: NOW)

        async def loop() -> None:
            for envelope in envelopes:
                await verifier.verify(envelope)

        asyncio.run(loop())

    return run


def parse_and_verify_all(public_key: bytes, wires: list[bytes]) -> Callable[[], None]:
    def run() -> None:
        verifier = Ed25519Verifier(public_key, clock=lambda: NOW)

        async def loop() -> None:
            for wire in wires:
                await verifier.verify(parse_envelope(wire))

        asyncio.run(loop())

    return run


def split_all(public_key: bytes, envelopes: list[SignedEnvelope]) -> Callable[[], None]:
    """What SSEStream does with verification threads, all on this one thread:
    signed_message, check_signatures (the thread's part), finish_check."""

    def run() -> None:
        verifier = Ed25519Verifier(public_key, clock=lambda: NOW)
        keys = verifier.keys
        messages = [verifier.signed_message(envelope) for envelope in envelopes]
        outcomes = bytearray(len(messages))
        check_signatures(messages, keys, outcomes, 0, len(messages))
        for index, envelope in enumerate(envelopes):
            verifier.finish_check(envelope, outcomes[index], keys)

    return run


def bare_variants(
    public_key: bytes, pairs: list[tuple[bytes, bytes]]
) -> dict[str, Callable[[], None]]:
    verify_key = nacl.signing.VerifyKey(public_key)

    def verify_key_verify() -> None:
        for message, signature in pairs:
            verify_key.verify(message, signature)

    def bindings_open() -> None:
        for message, signature in pairs:
            nacl.bindings.crypto_sign_open(signature + message, public_key)

    def cffi_detached() -> None:
        # crypto_sign_open with no output: libsodium's detached verify, nothing around it.
        null = _ffi.NULL
        signed = [signature + message for message, signature in pairs]
        for message in signed:
            if _lib.crypto_sign_open(null, null, message, len(message), public_key) != 0:
                raise AssertionError("bad signature")

    def cffi_open() -> None:
        out_len = _ffi.new("unsigned long long *")
        out = _ffi.new("unsigned char[]", 4096)
        for message, signature in pairs:
            signed = signature + message
            if _lib.crypto_sign_open(out, out_len, signed, len(signed), public_key) != 0:
                raise AssertionError("bad signature")

    variants = {
        "bare VerifyKey.verify": verify_key_verify,
        "bare bindings.crypto_sign_open": bindings_open,
    }
    if _lib is not None:
        variants["bare cffi lib.crypto_sign_open"] = cffi_open
        variants["bare cffi open, no output (detached)"] = cffi_detached
    return variants


def main() -> None:
    seed = os.urandom(32)
    public_key = bytes(nacl.signing.SigningKey(seed).verify_key)
    envelopes = make_envelopes(seed, "peer_added", peer_payload)
    prose = make_envelopes(seed, "action_request", prose_payload)
    wires = [envelope_json(envelope) for envelope in envelopes]
    pairs = [(canonical_bytes(e), base64.b64decode(e.signature)) for e in envelopes]

    variants = bare_variants(public_key, pairs)
    variants["ours: verify(envelope)"] = verify_all(public_key, envelopes)
    variants["ours: verify(parse_envelope(wire))"] = parse_and_verify_all(public_key, wires)
    variants["ours: verify(envelope), general path"] = verify_all(public_key, prose)
    variants["ours: split, as with verify threads"] = split_all(public_key, envelopes)
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(ROUNDS):
        for name, run in variants.items():
            best[name] = min(best[name], timed(run))
    rate = {name: ENVELOPES / seconds for name, seconds in best.items()}

    print(
        f"{ENVELOPES} envelopes, best of {ROUNDS} rounds: {len(wires[0])} bytes on the wire, "
        f"{len(pairs[0][0])}-byte signed message, {len(envelopes[0].payload)}-byte payload "
        f"(general path: {len(canonical_bytes(prose[0]))}-byte message)"
    )
    for name in variants:
        print(f"  {name:40s} {rate[name]:9.0f} verifies/s  {1e6 / rate[name]:6.1f} us each")
    print("ratios (ours / bare):")
    for ours_name in [n for n in variants if n.startswith("ours")]:
        for bare_name in [n for n in variants if n.startswith("bare")]:
            ratio = rate[ours_name] / rate[bare_name]
            print(f"  {ours_name:40s} / {bare_name:36s} {ratio:.3f}x")


if __name__ == "__main__":
    main()
