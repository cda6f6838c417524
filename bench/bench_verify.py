"""Envelope verification throughput, side by side with a bare libsodium Ed25519 verify.

Run: python bench/bench_verify.py

Every variant verifies the same ~300-byte envelopes (each with its own nonce, so the
replay check passes) in rounds; the best round of each is reported, the rounds
interleaved so that load from elsewhere on the machine hits every variant alike.
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

from plexd.api.types import SignedEnvelope, parse_envelope
from plexd.api.verify import Ed25519Verifier, canonical_bytes, envelope_json, sign_envelope

try:  # PyNaCl's cffi module: the lowest level PyNaCl reaches (private, so optional).
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover
    _lib = _ffi = None

ENVELOPES = 10_000
ROUNDS = 5
ISSUED_AT = "2025-01-15T10:30:00.123456789Z"
NOW = datetime(2025, 1, 15, 10, 30, 1, tzinfo=UTC)


def realistic_payload(n: int) -> dict[str, object]:
    """A peer_added payload of about 200 bytes of JSON."""
    return {
        "peer_id": f"node-{n:06d}",
        "public_key": "PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw=",
        "mesh_ip": "10.99.3.17",
        "endpoint": "203.0.113.7:51820",
        "allowed_ips": ["10.99.3.17/32", "fd00:99::3:17/128"],
        "psk_ref": "psk-7f3a",
    }


def make_envelopes(seed: bytes) -> list[SignedEnvelope]:
    return [
        sign_envelope(seed, "peer_added", f"evt-{n:08d}", realistic_payload(n), issued_at=ISSUED_AT)
        for n in range(ENVELOPES)
    ]


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    seed = os.urandom(32)
    public_key = bytes(nacl.signing.SigningKey(seed).verify_key)
    verify_key = nacl.signing.VerifyKey(public_key)
    envelopes = make_envelopes(seed)
    wires = [envelope_json(envelope) for envelope in envelopes]
    pairs = [(canonical_bytes(e), base64.b64decode(e.signature)) for e in envelopes]

    def bare_verify_key() -> None:
        for message, signature in pairs:
            verify_key.verify(message, signature)

    def bare_bindings() -> None:
        for message, signature in pairs:
            nacl.bindings.crypto_sign_open(signature + message, public_key)

    def bare_cffi() -> None:
        out_len = _ffi.new("unsigned long long *")
        out = _ffi.new("unsigned char[]", 4096)
        for message, signature in pairs:
            signed = signature + message
            if _lib.crypto_sign_open(out, out_len, signed, len(signed), public_key) != 0:
                raise AssertionError("bad signature")

    def ours() -> None:
        verifier = Ed25519Verifier(public_key, clock=lambda: NOW)

        async def run() -> None:
            for envelope in envelopes:
                await verifier.verify(envelope)

        asyncio.run(run())

    def ours_with_parse() -> None:
        verifier = Ed25519Verifier(public_key, clock=lambda: NOW)

        async def run() -> None:
            for wire in wires:
                await verifier.verify(parse_envelope(wire))

        asyncio.run(run())

    variants: dict[str, Callable[[], None]] = {
        "bare VerifyKey.verify": bare_verify_key,
        "bare bindings.crypto_sign_open": bare_bindings,
        "ours: verify(envelope)": ours,
        "ours: verify(parse_envelope(wire))": ours_with_parse,
    }
    if _lib is not None:
        variants["bare cffi lib.crypto_sign_open"] = bare_cffi
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(ROUNDS):
        for name, run in variants.items():
            best[name] = min(best[name], timed(run))
    rate = {name: ENVELOPES / seconds for name, seconds in best.items()}

    print(
        f"{ENVELOPES} envelopes of {len(wires[0])} bytes on the wire "
        f"({len(pairs[0][0])}-byte signed message), best of {ROUNDS} rounds"
    )
    for name in variants:
        print(f"  {name:38s} {rate[name]:9.0f} verifies/s  {1e6 / rate[name]:6.1f} us each")
    print("ratios (ours / bare):")
    for ours_name in ("ours: verify(envelope)", "ours: verify(parse_envelope(wire))"):
        for bare_name in [n for n in variants if n.startswith("bare")]:
            print(f"  {ours_name:38s} / {bare_name:32s} {rate[ours_name] / rate[bare_name]:.3f}x")


if __name__ == "__main__":
    main()
