"""decrypt_secret: AES-256-GCM as plexd's agent decrypts a SecretResponse (the key string's
bytes, a 12-byte nonce, the tag appended, no associated data)."""

from __future__ import annotations

import base64
import sys
import traceback

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from plexd.api import (
    ArgumentError,
    ArgumentTypeError,
    ConfigError,
    DecryptionError,
    SecretResponse,
    VerificationError,
    decrypt_secret,
)

KEY = "0123456789abcdefghijklmnopqrstuv"  # 32 characters, as the control plane issues
NONCE = bytes(range(12))


def sealed(
    value: bytes, key: str = KEY, nonce: bytes = NONCE, aad: bytes | None = None
) -> SecretResponse:
    ciphertext = AESGCM(key.encode()).encrypt(nonce, value, aad)
    return SecretResponse(
        key="db-password",
        ciphertext=base64.b64encode(ciphertext).decode(),
        nonce=base64.b64encode(nonce).decode(),
        version=3,
    )


def everything_shown(exc: BaseException) -> str:
    """The message, repr and whole traceback with causes, as a log would show them."""
    return "".join(traceback.format_exception(exc)) + repr(exc)


@given(st.binary(max_size=2048))
def test_what_the_control_plane_encrypts_decrypts(value: bytes) -> None:
    assert decrypt_secret(KEY, sealed(value)) == value


@pytest.mark.parametrize(
    "spoil",
    [
        lambda s: SecretResponse(key=s.key, ciphertext=flip(s.ciphertext, 0), nonce=s.nonce),
        lambda s: SecretResponse(key=s.key, ciphertext=flip(s.ciphertext, -1), nonce=s.nonce),
        lambda s: SecretResponse(key=s.key, ciphertext=s.ciphertext, nonce=flip(s.nonce, 0)),
        lambda s: SecretResponse(key=s.key, ciphertext=s.ciphertext[:-4], nonce=s.nonce),
    ],
    ids=["first-byte", "tag", "nonce", "truncated"],
)
def test_tampered_data_raises_decryption_error(spoil: object) -> None:
    secret = spoil(sealed(b"value"))  # type: ignore[operator]
    with pytest.raises(DecryptionError, match=r"does not decrypt|shorter|not base64"):
        decrypt_secret(KEY, secret)


def flip(text: str, index: int) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def test_a_wrong_key_is_a_verification_error_that_shows_no_secret() -> None:
    secret = sealed(b"the-plaintext")
    other = "vutsrqponmlkjihgfedcba9876543210"
    with pytest.raises(VerificationError) as caught:
        decrypt_secret(other, secret)
    assert isinstance(caught.value, DecryptionError)
    shown = everything_shown(caught.value)
    assert "'db-password' version 3 does not decrypt" in str(caught.value)
    for secret_text in (other, KEY, secret.ciphertext, "the-plaintext"):
        assert secret_text not in shown
    assert caught.value.__cause__ is None


def test_associated_data_is_not_used() -> None:
    with pytest.raises(DecryptionError):
        decrypt_secret(KEY, sealed(b"value", aad=b"node-1"))


@pytest.mark.parametrize(
    ("nonce", "ciphertext"),
    [("not base64!", "AAAA"), (base64.b64encode(b"short").decode(), None), ("AAAA", "***")],
)
def test_a_nonce_or_ciphertext_that_is_not_base64_of_the_right_size_raises(
    nonce: str, ciphertext: str | None
) -> None:
    good = sealed(b"value")
    secret = SecretResponse(key="k", nonce=nonce, ciphertext=ciphertext or good.ciphertext)
    with pytest.raises(DecryptionError) as caught:
        decrypt_secret(KEY, secret)
    assert good.ciphertext not in everything_shown(caught.value)


@pytest.mark.parametrize("key", ["", "short", KEY + "x", "é" * 16 + "x"])
def test_a_key_that_is_not_32_bytes_is_an_argument_error_that_does_not_show_it(key: str) -> None:
    with pytest.raises(ArgumentError) as caught:
        decrypt_secret(key, sealed(b"value"))
    assert "32 bytes" in str(caught.value)
    if key:
        assert key not in everything_shown(caught.value)


def test_a_key_of_32_utf8_bytes_is_its_bytes() -> None:
    key = "é" * 16  # 16 characters, 32 bytes: the agent keys AES with the bytes
    assert decrypt_secret(key, sealed(b"v", key=key)) == b"v"


def test_arguments_of_the_wrong_type_raise_argument_type_error() -> None:
    with pytest.raises(ArgumentTypeError):
        decrypt_secret(KEY.encode(), sealed(b"v"))  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError):
        decrypt_secret(KEY, {"nonce": "", "ciphertext": ""})  # type: ignore[arg-type]


def test_without_cryptography_it_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(ConfigError, match=r"plexd-api\[secrets\]"):
        decrypt_secret(KEY, sealed(b"v"))
