"""Pure logic layer: a node's secrets, decrypted as plexd's agent decrypts them.

The control plane encrypts each secret value with AES-256-GCM. The key is the bytes of
the node's ``node_secret_key`` string (exactly 32), the nonce is
``SecretResponse.nonce`` (base64, 12 bytes), the 16-byte tag is appended to the
ciphertext in ``SecretResponse.ciphertext`` (base64), and there is no associated data.

AES-GCM comes from the ``cryptography`` package (the ``secrets`` extra), imported on the
first call only: the library's runtime dependencies stay three.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from ._types import SecretResponse
from .errors import ArgumentError, ArgumentTypeError, ConfigError, DecryptionError, printable

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# AES-256: the node secret key string's bytes are the key.
SECRET_KEY_SIZE = 32
# The nonce of a SecretResponse (AES-GCM's standard 96 bits).
SECRET_NONCE_SIZE = 12
# GCM's authentication tag, appended to the ciphertext.
SECRET_TAG_SIZE = 16


def decrypt_secret(node_secret_key: str, secret: SecretResponse) -> bytes:
    """The plaintext of ``secret`` (from :meth:`ControlPlane.fetch_secret`), decrypted with
    the node's ``node_secret_key`` (from :class:`RegisterResponse`).

    Raises :class:`DecryptionError` (a :class:`VerificationError`) when it does not
    decrypt: a wrong key, tampered data, or a nonce or ciphertext that is not base64 of
    the right size; :class:`ArgumentError` for a key that is not 32 bytes;
    :class:`ConfigError` when the ``cryptography`` package is missing
    (``pip install 'plexd-api[secrets]'``). No message shows the key or the ciphertext.
    """
    if not isinstance(node_secret_key, str):
        raise ArgumentTypeError("node_secret_key must be a str")
    if not isinstance(secret, SecretResponse):
        raise ArgumentTypeError("secret must be a SecretResponse")
    key = _key_bytes(node_secret_key)
    what = f"secret {printable(secret.key)!r} version {secret.version}"
    nonce = _base64_field(secret.nonce, "nonce", what)
    sealed = _base64_field(secret.ciphertext, "ciphertext", what)
    if len(nonce) != SECRET_NONCE_SIZE:
        raise DecryptionError(f"{what}: the nonce is {len(nonce)} bytes, not {SECRET_NONCE_SIZE}")
    if len(sealed) < SECRET_TAG_SIZE:
        raise DecryptionError(f"{what}: the ciphertext is shorter than its tag")
    cipher = _aesgcm(key)
    from cryptography.exceptions import InvalidTag

    try:
        return cipher.decrypt(nonce, sealed, None)
    except InvalidTag:
        raise DecryptionError(
            f"{what} does not decrypt: a wrong node secret key, or tampered data"
        ) from None


def _key_bytes(node_secret_key: str) -> bytes:
    try:
        key = node_secret_key.encode("utf-8")
    except UnicodeEncodeError:
        raise ArgumentError("node_secret_key is not valid text") from None
    if len(key) != SECRET_KEY_SIZE:
        raise ArgumentError(
            f"node_secret_key must be {SECRET_KEY_SIZE} bytes (AES-256), not {len(key)}"
        )
    return key


def _base64_field(value: str, name: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DecryptionError(f"{what}: the {name} is not base64") from None


def _aesgcm(key: bytes) -> AESGCM:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise ConfigError(
            "decrypt_secret needs the 'cryptography' package: pip install 'plexd-api[secrets]'"
        ) from None
    return AESGCM(key)
