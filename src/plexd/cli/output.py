"""What the data commands print: wire values as JSON, secrets masked, events one per line."""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from plexd.api.reconnect import FailureAction
from plexd.api.types import SignedEnvelope, WireStruct

# What a secret field shows instead of its value unless --show-secrets.
MASK = "***"

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


def event_line(envelope: SignedEnvelope) -> str:
    """One line of JSON for an event: its type, id, issue time and payload."""
    # Valid JSON can hold a line break only as whitespace between tokens (strings escape
    # theirs), so blanking them keeps the payload's meaning and the output one line.
    payload = bytes(envelope.payload).replace(b"\r", b" ").replace(b"\n", b" ")
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
