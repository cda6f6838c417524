"""What the verification benchmarks share: the signing key of their events, and the
bare single-thread libsodium loop they are measured against."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping

from nacl.signing import SigningKey

from plexd.api import SignedEnvelope, canonical_bytes

try:  # PyNaCl's cffi binding: the bare loop calls libsodium with nothing around it.
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover
    _ffi = _lib = None

SEED = bytes(range(32))
PUBLIC = SigningKey(SEED).verify_key.encode()


def signed_message(envelope: SignedEnvelope) -> bytes:
    """Signature + signed message of an event, as libsodium's open takes them."""
    return base64.b64decode(envelope.signature) + canonical_bytes(envelope)


def bare_verify(messages: list[bytes]) -> tuple[float, float]:
    """Wall and CPU seconds of a single-thread loop of libsodium verifies, nothing else."""
    cpu, wall = time.process_time(), time.perf_counter()
    if _lib is not None:
        null, sign_open, key = _ffi.NULL, _lib.crypto_sign_open, PUBLIC
        for message in messages:
            if sign_open(null, null, message, len(message), key) != 0:
                raise AssertionError("bad signature")
    else:  # pragma: no cover
        import nacl.bindings

        for message in messages:
            nacl.bindings.crypto_sign_open(message, PUBLIC)
    return time.perf_counter() - wall, time.process_time() - cpu


Timing = tuple[float, float, float]  # wall, process CPU and event loop thread CPU seconds


def interleaved_rounds(
    rounds: int, variants: Mapping[str, Callable[[], Timing]], messages: list[bytes], events: int
) -> tuple[dict[str, Timing], dict[str, list[float]]]:
    """Each round runs every variant (``events`` events each), then the bare loop over
    ``messages`` (as "bare"): the best timing of each, and every round's events/s."""
    best: dict[str, Timing] = {}
    rates: dict[str, list[float]] = {name: [] for name in [*variants, "bare"]}
    for _ in range(rounds):
        timings = {name: run() for name, run in variants.items()}
        wall, cpu = bare_verify(messages)
        timings["bare"] = (wall, cpu, cpu)
        for name, timing in timings.items():
            rates[name].append(events / timing[0])
            if name not in best or timing[0] < best[name][0]:
                best[name] = timing
    return best, rates
