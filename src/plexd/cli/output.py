"""CLI, bottom layer: what the data commands print: wire values as JSON, secrets masked,
events one per line."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec

from plexd.api import FailureAction, SignedEnvelope, WireStruct
from plexd.api.errors import MASK

# What a secret field shows instead of its value unless --show-secrets.

_encoder = msgspec.json.Encoder()


def masked(value: Any) -> Any:
    """``value`` with every secret field of every wire type in it replaced by ``MASK``."""
    if isinstance(value, WireStruct):
        changes: dict[str, Any] = {}
        for name in value.__struct_fields__:
            field = getattr(value, name)
            if name in value.__secret_fields__:
                if field:
                    changes[name] = MASK
            elif isinstance(field, WireStruct | list):
                changes[name] = masked(field)
        return msgspec.structs.replace(value, **changes) if changes else value
    if isinstance(value, list):
        return [masked(item) for item in value]
    return value


def json_document(value: Any, *, show_secrets: bool = False) -> str:
    """``value`` (a wire type or plain data) as indented JSON, secrets masked unless asked."""
    shown = value if show_secrets else masked(value)
    return msgspec.json.format(_encoder.encode(shown), indent=2).decode()


# A key named like a secret, once camelCase and dashes read as snake_case: the secret
# fields of the wire types (token, psk, node_secret_key, ciphertext) and their kin.
_SECRET_KEY = re.compile(
    r"(?:^|_)(?:tokens?|psk|pre_?shared_key|ciphertext|secrets?|secret_key|private_key"
    r"|api_?key|password|passwd|passphrase|credentials?)$"
)
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def is_secret_key(key: str) -> bool:
    """Whether a JSON key names a secret (``psk``, ``bootstrapToken``, ``node-secret-key``)."""
    return _SECRET_KEY.search(_CAMEL_HUMP.sub("_", key).lower().replace("-", "_")) is not None


def _mask_secret_keys(value: Any) -> tuple[Any, bool]:
    # (value with every secret-named key's value masked, whether any key was secret-named)
    if isinstance(value, dict):
        found = False
        out = {}
        for key, item in value.items():
            if is_secret_key(key):
                out[key] = MASK if item else item
                found = True
            else:
                out[key], nested = _mask_secret_keys(item)
                found = found or nested
        return out, found
    if isinstance(value, list):
        items = [_mask_secret_keys(item) for item in value]
        return [item for item, _ in items], any(found for _, found in items)
    return value, False


def masked_payload(payload: bytes) -> bytes:
    """An event payload with the value of every key named like a secret masked.

    The bytes are kept as they are when no key is; a payload that cannot be read
    (not JSON, nested too deep) is masked whole.
    """
    try:
        value, found = _mask_secret_keys(msgspec.json.decode(payload))
        return _encoder.encode(value) if found else payload
    except (msgspec.DecodeError, msgspec.EncodeError, RecursionError):
        return _encoder.encode(MASK)


def event_line(envelope: SignedEnvelope, *, show_secrets: bool = False) -> str:
    """One line of JSON for an event: its type, id, issue time and payload (the values
    of keys named like a secret masked unless ``show_secrets``)."""
    payload = bytes(envelope.payload)
    if not show_secrets:
        payload = masked_payload(payload)
    # Valid JSON can hold a line break only as whitespace between tokens (strings escape
    # theirs), so blanking them keeps the payload's meaning and the output one line.
    payload = payload.replace(b"\r", b" ").replace(b"\n", b" ")
    return _encoder.encode(
        {
            "event_type": envelope.event_type,
            "event_id": envelope.event_id,
            "issued_at": envelope.issued_at_text,
            "payload": msgspec.Raw(payload),
        }
    ).decode()


class OneLineFormatter(logging.Formatter):
    """``plexd-api: warning: message``, an exception as ``: its message``, never a traceback."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self._prog = prog

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text = f"{text}: {record.exc_info[1]}"
        return f"{self._prog}: {record.levelname.lower()}: {' '.join(text.split())}"


_STREAM_ENDING_ACTIONS = frozenset(
    {FailureAction.PERMANENT_FAILURE.value, FailureAction.RETRY_AUTH.value}
)


class StreamEndingFailureFilter(logging.Filter):
    """Drops the reconnect engine's record of the failure that ends the event stream:
    the command reports that failure itself, as its one error line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "action", None) not in _STREAM_ENDING_ACTIONS
