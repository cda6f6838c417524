"""Wire types of WIRE.md, encoded the way the Go control plane expects and decoded as Go does.

Encoding: keys that are not omitempty are always sent; omitempty keys are left out
when empty; times are RFC 3339 with their offset. Decoding: JSON ``null`` for a list
or map reads as empty, missing keys take the empty value, unknown keys are ignored,
and raw JSON fields keep the exact bytes received.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeAlias, TypeVar, cast

import msgspec

from .errors import (
    ArgumentError,
    ArgumentTypeError,
    EnvelopeError,
    NaiveDatetimeError,
    ResponseError,
)

T = TypeVar("T")

# Go's zero time.Time, which a Go server sends for a time it never set.
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
NULL = msgspec.Raw(b"null")

# What msgspec raises for a value JSON cannot hold, and for bytes that are not JSON.
# RecursionError: nesting deeper than msgspec's limit (``[`` x 5000) in either direction.
JSON_ENCODE_ERRORS = (
    TypeError, ValueError, UnicodeError, OverflowError, RecursionError, msgspec.EncodeError,
)  # fmt: skip
JSON_DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


if TYPE_CHECKING:
    GoList: TypeAlias = list
    GoMap: TypeAlias = dict
else:

    class GoList:
        """A list that a Go server may send as ``null`` (read as an empty list)."""

        def __class_getitem__(cls, item: Any) -> Any:
            return list[item] | None

    class GoMap:
        """A map that a Go server may send as ``null`` (read as an empty dict)."""

        def __class_getitem__(cls, item: Any) -> Any:
            return dict[item] | None


# A time on the wire: decoding rejects a time without an offset, as Go does.
Time: TypeAlias = Annotated[datetime, msgspec.Meta(tz=True)]


def _zero_time() -> datetime:
    return ZERO_TIME


def _null_raw() -> msgspec.Raw:
    return NULL


def _empty_list() -> list[Any]:
    # Not `list` itself: msgspec omits an empty value of a `default_factory=list`
    # field, and these keys are not omitempty.
    return []


# Field defaults. "always" fields are sent even when empty; omitempty fields use
# plain defaults, which msgspec's omit_defaults leaves out.
def _always_str() -> Any:
    return msgspec.field(default_factory=str)


def _always_int() -> Any:
    return msgspec.field(default_factory=int)


def _always_bool() -> Any:
    return msgspec.field(default_factory=bool)


def _always_list() -> Any:
    return msgspec.field(default_factory=_empty_list)


def _always_time() -> Any:
    return msgspec.field(default_factory=_zero_time)


def _always_raw() -> Any:
    return msgspec.field(default_factory=_null_raw)


def _omitempty_map() -> Any:
    return msgspec.field(default_factory=dict)


_MASK = "***"


class WireStruct(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of every wire type: Go-tolerant decoding, aware datetimes, no secrets in repr."""

    # Attribute names whose values never appear in repr/str (tokens, keys, ciphertext).
    __secret_fields__: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        layout = _layout(type(self))
        for name in layout.lists:
            if getattr(self, name) is None:
                setattr(self, name, [])
        for name in layout.maps:
            if getattr(self, name) is None:
                setattr(self, name, {})
        for name in layout.raws:
            value = getattr(self, name)
            if not (isinstance(value, msgspec.Raw) and value):
                setattr(self, name, _as_raw(type(self), name, value))
        for name in layout.times:
            _require_aware(type(self), name, getattr(self, name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._repr_items())})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [(name, self._shown(name)) for name in self.__struct_fields__]

    def _shown(self, name: str) -> Any:
        value = getattr(self, name)
        if name in self.__secret_fields__ and value:
            return _MASK
        if isinstance(value, msgspec.Raw):
            return RawRepr(bytes(value))
        return value

    def _repr_items(self) -> Iterator[str]:
        for name in self.__struct_fields__:
            shown = self._shown(name)
            yield f"{name}={_MASK if shown is _MASK else repr(shown)}"


def _as_raw(cls: type, name: str, value: Any) -> msgspec.Raw:
    if value is None or (isinstance(value, msgspec.Raw | bytes | bytearray) and not value):
        return NULL
    if isinstance(value, bytes | bytearray):
        # JSON text given as bytes: sent as is, not base64-encoded.
        return msgspec.Raw(bytes(value))
    if isinstance(value, msgspec.Raw):
        return value
    raise ArgumentTypeError(
        f"{cls.__name__}.{name} is raw JSON: pass msgspec.Raw or bytes of JSON text, "
        f"or raw_json(value) for a Python value (got {type(value).__name__})"
    )


class RawRepr(bytes):
    """How a raw JSON field shows in a repr: its bytes."""

    def __repr__(self) -> str:
        return f"Raw({bytes.__repr__(self)})"


def _require_aware(cls: type, name: str, value: Any) -> None:
    if isinstance(value, datetime) and value.tzinfo is None:
        raise NaiveDatetimeError(
            f"{cls.__name__}.{name} is a naive datetime; pass a timezone-aware one "
            "(e.g. datetime.now(timezone.utc)) so it is not sent as local time"
        )


class _Layout:
    __slots__ = ("lists", "maps", "nested", "raws", "times")

    def __init__(self, cls: type[WireStruct]) -> None:
        info = cast(Any, msgspec.inspect.type_info(cls))
        self.lists: list[str] = []
        self.maps: list[str] = []
        self.raws: list[str] = []
        self.times: list[str] = []
        # Fields that hold wire structs (directly or in a list): where check_times looks.
        self.nested: list[str] = []
        for field in info.fields:
            if _holds_struct(field.type):
                self.nested.append(field.name)
            kinds = _kinds(field.type)
            if msgspec.inspect.ListType in kinds:
                self.lists.append(field.name)
            if msgspec.inspect.DictType in kinds:
                self.maps.append(field.name)
            if msgspec.inspect.RawType in kinds:
                self.raws.append(field.name)
            if msgspec.inspect.DateTimeType in kinds:
                self.times.append(field.name)


def _holds_struct(t: Any) -> bool:
    members = t.types if isinstance(t, msgspec.inspect.UnionType) else (t,)
    return any(
        isinstance(member, msgspec.inspect.StructType)
        or (isinstance(member, msgspec.inspect.ListType) and _holds_struct(member.item_type))
        for member in members
    )


def _kinds(t: Any) -> set[type]:
    if isinstance(t, msgspec.inspect.UnionType):
        return {type(member) for member in t.types}
    return {type(t)}


_LAYOUTS: dict[type, _Layout] = {}


def _layout(cls: type[WireStruct]) -> _Layout:
    layout = _LAYOUTS.get(cls)
    if layout is None:
        layout = _LAYOUTS[cls] = _Layout(cls)
    return layout


def check_times(value: Any) -> None:
    """Raise :class:`NaiveDatetimeError` for a naive datetime anywhere in a request body:
    one assigned to a wire type after construction, or one inside a plain dict or list."""
    if isinstance(value, WireStruct):
        cls = type(value)
        layout = _layout(cls)
        for name in layout.times:
            _require_aware(cls, name, getattr(value, name))
        for name in layout.nested:
            check_times(getattr(value, name))
    elif isinstance(value, list | tuple):
        for item in value:
            check_times(item)
    elif isinstance(value, dict):
        for item in value.values():
            check_times(item)
    elif isinstance(value, datetime) and value.tzinfo is None:
        raise NaiveDatetimeError(
            "a request body holds a naive datetime; pass a timezone-aware one "
            "(e.g. datetime.now(timezone.utc)) so it is not sent as local time"
        )


def raw_json(value: Any) -> msgspec.Raw:
    """Encode a Python value as a raw JSON field (for payload/data/subject/object).

    Raises :class:`ArgumentError` for a value JSON cannot hold (or nested too deep).
    """
    try:
        return msgspec.Raw(msgspec.json.encode(value))
    except JSON_ENCODE_ERRORS as exc:
        raise ArgumentError(f"raw_json: cannot encode the value as JSON: {exc}") from None


def decode_raw(raw: msgspec.Raw | bytes, type: type[T] = Any) -> T:  # type: ignore[assignment]
    """Decode a raw JSON field, optionally into ``type``.

    Raises :class:`ResponseError` when the bytes are not JSON or not of that shape.
    """
    try:
        return msgspec.json.decode(bytes(raw), type=type)
    except msgspec.ValidationError as exc:
        raise ResponseError(f"raw JSON field does not fit the expected type: {exc}") from None
    except JSON_DECODE_ERRORS as exc:
        raise ResponseError(f"raw JSON field is not valid JSON: {exc}") from None


# --- registration ---------------------------------------------------------


class BinaryInfo(WireStruct):
    """The node's plexd binary."""

    version: str = _always_str()
    checksum: str = _always_str()


class ActionParam(WireStruct):
    """A parameter of an action or hook."""

    name: str = _always_str()
    type: str = _always_str()
    required: bool = _always_bool()
    description: str = _always_str()


class ActionInfo(WireStruct):
    """A built-in action the node can run."""

    name: str = _always_str()
    description: str = _always_str()
    parameters: GoList[ActionParam] = _always_list()


class HookInfo(WireStruct):
    """A hook script installed on the node."""

    name: str = _always_str()
    description: str = _always_str()
    source: str = _always_str()
    checksum: str = _always_str()
    parameters: GoList[ActionParam] = _always_list()
    timeout: str = _always_str()
    sandbox: str = _always_str()


class CapabilitiesPayload(WireStruct):
    """What the node can do: its binary, built-in actions and hooks."""

    binary: BinaryInfo | None = None
    builtin_actions: GoList[ActionInfo] = _always_list()
    hooks: GoList[HookInfo] = _always_list()


class RegisterRequest(WireStruct):
    """Body of ``POST /v1/register``."""

    __secret_fields__ = frozenset({"token"})

    token: str = _always_str()
    public_key: str = _always_str()
    hostname: str = _always_str()
    metadata: GoMap[str, str] = _omitempty_map()
    capabilities: CapabilitiesPayload | None = None


class Peer(WireStruct):
    """A mesh peer."""

    __secret_fields__ = frozenset({"psk"})

    id: str = _always_str()
    public_key: str = _always_str()
    mesh_ip: str = _always_str()
    endpoint: str = _always_str()
    allowed_ips: GoList[str] = _always_list()
    psk: str = _always_str()


class RegisterResponse(WireStruct):
    """Answer to a registration; ``node_secret_key`` is the node's bearer token from then on."""

    __secret_fields__ = frozenset({"node_secret_key"})

    node_id: str = _always_str()
    mesh_ip: str = _always_str()
    signing_public_key: str = _always_str()
    node_secret_key: str = _always_str()
    peers: GoList[Peer] = _always_list()


# --- heartbeat and state --------------------------------------------------


class MeshInfo(WireStruct):
    """The node's mesh interface."""

    interface: str = _always_str()
    peer_count: int = _always_int()
    listen_port: int = _always_int()


class NATInfo(WireStruct):
    """What the node learned about its NAT."""

    public_endpoint: str = _always_str()
    type: str = _always_str()


class HeartbeatRequest(WireStruct):
    """Body of ``POST /v1/nodes/{node_id}/heartbeat``."""

    node_id: str = _always_str()
    timestamp: Time = _always_time()
    status: str = _always_str()
    uptime: str = _always_str()
    binary_checksum: str = _always_str()
    mesh: MeshInfo | None = None
    nat: NATInfo | None = None


class HeartbeatResponse(WireStruct):
    """What the control plane wants the node to do next."""

    reconcile: bool = _always_bool()
    rotate_keys: bool = _always_bool()


class PolicyRule(WireStruct):
    """One rule of a network policy."""

    src: str = _always_str()
    dst: str = _always_str()
    port: int = _always_int()
    protocol: str = _always_str()
    action: str = _always_str()


class Policy(WireStruct):
    """A network policy."""

    id: str = _always_str()
    rules: GoList[PolicyRule] = _always_list()


class SigningKeys(WireStruct):
    """The control plane's event-signing keys (base64 Ed25519 public keys)."""

    current: str = _always_str()
    previous: str = ""
    transition_expires: Time | None = None


class DataEntry(WireStruct):
    """A data entry pushed to the node; ``payload`` is raw JSON."""

    key: str = _always_str()
    content_type: str = _always_str()
    payload: msgspec.Raw = _always_raw()
    version: int = _always_int()
    updated_at: Time = _always_time()


class SecretRef(WireStruct):
    """A reference to a secret the node may fetch."""

    key: str = _always_str()
    version: int = _always_int()


class StateResponse(WireStruct):
    """The node's full desired state."""

    peers: GoList[Peer] = _always_list()
    policies: GoList[Policy] = _always_list()
    signing_keys: SigningKeys | None = None
    metadata: GoMap[str, str] = _omitempty_map()
    data: GoList[DataEntry] = _always_list()
    secret_refs: GoList[SecretRef] = _always_list()


class SecretResponse(WireStruct):
    """An encrypted secret."""

    __secret_fields__ = frozenset({"ciphertext"})

    key: str = _always_str()
    ciphertext: str = _always_str()
    nonce: str = _always_str()
    version: int = _always_int()


# --- reports --------------------------------------------------------------


class DriftCorrection(WireStruct):
    """One correction the node made to drifted state."""

    type: str = _always_str()
    detail: str = _always_str()


class DriftReport(WireStruct):
    """Body of ``POST /v1/nodes/{node_id}/drift``."""

    timestamp: Time = _always_time()
    corrections: GoList[DriftCorrection] = _always_list()


class ReportEntry(WireStruct):
    """A report the node syncs; ``payload`` is raw JSON."""

    key: str = _always_str()
    content_type: str = _always_str()
    payload: msgspec.Raw = _always_raw()
    version: int = _always_int()
    updated_at: Time = _always_time()


class ReportSyncRequest(WireStruct):
    """Body of ``POST /v1/nodes/{node_id}/report``."""

    entries: GoList[ReportEntry] = _always_list()
    deleted: GoList[str] = _always_list()


class ExecutionAck(WireStruct):
    """Acknowledgement of an action request."""

    execution_id: str = _always_str()
    status: str = _always_str()
    reason: str = _always_str()


class TriggeredBy(WireStruct):
    """Who triggered an execution."""

    type: str = _always_str()
    session_id: str = _always_str()
    user_id: str = _always_str()
    email: str = _always_str()


class ExecutionResult(WireStruct):
    """The outcome of an execution."""

    execution_id: str = _always_str()
    status: str = _always_str()
    exit_code: int = _always_int()
    stdout: str = _always_str()
    stderr: str = _always_str()
    duration: str = _always_str()
    finished_at: Time = _always_time()
    triggered_by: TriggeredBy | None = None


class MetricPoint(WireStruct):
    """One metric sample; ``data`` is raw JSON."""

    timestamp: Time = _always_time()
    group: str = _always_str()
    peer_id: str = ""
    data: msgspec.Raw = _always_raw()


class LogEntry(WireStruct):
    """One log line."""

    timestamp: Time = _always_time()
    source: str = _always_str()
    unit: str = _always_str()
    message: str = _always_str()
    severity: str = _always_str()
    hostname: str = _always_str()


class AuditEntry(WireStruct):
    """One audit record; ``subject`` and ``object`` are raw JSON, ``raw`` is a string."""

    timestamp: Time = _always_time()
    source: str = _always_str()
    event_type: str = _always_str()
    subject: msgspec.Raw = _always_raw()
    object: msgspec.Raw = _always_raw()
    action: str = _always_str()
    result: str = _always_str()
    hostname: str = _always_str()
    raw: str = _always_str()


class EndpointReport(WireStruct):
    """Body of ``PUT /v1/nodes/{node_id}/endpoint``."""

    public_endpoint: str = _always_str()
    nat_type: str = _always_str()


class PeerEndpoint(WireStruct):
    """A peer's current endpoint."""

    peer_id: str = _always_str()
    endpoint: str = _always_str()


class EndpointResponse(WireStruct):
    """The peers' endpoints, in answer to an endpoint report."""

    peer_endpoints: GoList[PeerEndpoint] = _always_list()


class KeyRotateRequest(WireStruct):
    """Body of ``POST /v1/keys/rotate``."""

    node_id: str = _always_str()
    new_public_key: str = _always_str()


class KeyRotateResponse(WireStruct):
    """The peers updated by a key rotation."""

    updated_peers: GoList[Peer] = _always_list()


# --- events ---------------------------------------------------------------


class EventType(StrEnum):
    """The 12 event types of the control plane. An unknown type is not an error."""

    PEER_ADDED = "peer_added"
    PEER_REMOVED = "peer_removed"
    PEER_KEY_ROTATED = "peer_key_rotated"
    PEER_ENDPOINT_CHANGED = "peer_endpoint_changed"
    POLICY_UPDATED = "policy_updated"
    ACTION_REQUEST = "action_request"
    SESSION_REVOKED = "session_revoked"
    SSH_SESSION_SETUP = "ssh_session_setup"
    ROTATE_KEYS = "rotate_keys"
    SIGNING_KEY_ROTATED = "signing_key_rotated"
    NODE_STATE_UPDATED = "node_state_updated"
    NODE_SECRETS_UPDATED = "node_secrets_updated"


_NANOS_PER_SECOND = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = _EPOCH.toordinal()
# Go cannot write an offset of 24 hours or more, and Python cannot hold one.
_MAX_OFFSET_MINUTES = 24 * 60

# RFC 3339 as Go's Time.UnmarshalJSON accepts it. Go tries a strict parser first and then
# time.Parse(time.RFC3339, ...), which also takes a one-digit hour, a comma before the
# fraction, more than 9 fraction digits (truncated), and offsets up to 24:60.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{1,2}):([0-9]{2}):([0-9]{2})(?:[.,]([0-9]+))?"
    r"(?:(Z)|([+-])([0-9]{2}):([0-9]{2}))",
    re.ASCII,
)
# Text that Go's RFC3339Nano writes (fields in range, no trailing zero in the fraction,
# Z rather than a zero offset); group 1 is the fraction.
_RFC3339NANO_CANONICAL = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.([0-9]{0,8}[1-9]))?"
    r"(?:Z|[+-](?!00:00)(?:[01][0-9]|2[0-3]):[0-5][0-9])",
    re.ASCII,
)
_ZONES: dict[int, timezone] = {0: UTC}


def _zone(offset_minutes: int) -> timezone:
    zone = _ZONES.get(offset_minutes)
    if zone is None:
        zone = _ZONES[offset_minutes] = timezone(timedelta(minutes=offset_minutes))
    return zone


def parse_rfc3339(text: str) -> tuple[datetime, int]:
    """Parse an RFC 3339 time as Go does: the datetime and its full nanoseconds (0..999999999).

    The datetime keeps the received offset; its microseconds are the nanoseconds truncated.
    Raises ValueError for anything Go would reject, and for the few times Go reads but
    Python cannot hold (year 0, an offset of 24 hours or more).
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second, fraction, z, sign, off_h, off_m = match.groups()
    nanos = int(fraction[:9].ljust(9, "0")) if fraction else 0
    if z:
        zone: timezone = UTC
    else:
        # Go's time.Parse accepts offset fields up to 24 and 60 ("some people do write them").
        if int(off_h) > 24 or int(off_m) > 60:
            raise ValueError(f"time zone offset out of range in {text!r}")
        minutes = int(off_h) * 60 + int(off_m)
        if minutes >= _MAX_OFFSET_MINUTES:
            raise ValueError(f"time zone offset of 24 hours or more in {text!r}")
        zone = _zone(-minutes if sign == "-" else minutes)
    when = datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second),
        nanos // 1000, tzinfo=zone,
    )  # fmt: skip
    return when, nanos


def format_rfc3339nano(when: datetime, nanos: int | None = None) -> str:
    """Format like Go's ``time.RFC3339Nano``: trailing zeros of the fraction dropped,
    no fraction when zero, ``Z`` for a zero offset, otherwise ``+hh:mm``.

    ``nanos`` (0..999999999) overrides the datetime's microseconds when given.
    """
    if when.tzinfo is None:
        raise NaiveDatetimeError("issued_at is a naive datetime; pass a timezone-aware one")
    if nanos is None:
        nanos = when.microsecond * 1000
    text = (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}"
        f"T{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
    )
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    offset = when.utcoffset()
    seconds = 0 if offset is None else int(offset.total_seconds())
    if seconds == 0:
        return text + "Z"
    # Go divides the offset in seconds by 60 truncating toward zero, then writes the sign.
    minutes = abs(seconds) // 60
    sign = "-" if seconds < 0 and minutes else "+"
    hours, mins = divmod(minutes, 60)
    return f"{text}{sign}{hours:02d}:{mins:02d}"


def _epoch_ns(when: datetime, nanos: int) -> int:
    """Nanoseconds since the Unix epoch of an aware datetime whose sub-second part is ``nanos``."""
    delta = when - _EPOCH
    return (delta.days * 86400 + delta.seconds) * _NANOS_PER_SECOND + nanos


class SignedEnvelope:
    """A signed event as it arrives in an SSE ``data:`` field.

    Besides the wire fields it keeps what the signature needs of the wire text:
    ``issued_at_nanos`` (Python's datetime holds microseconds only) and
    ``issued_at_text``, the time as Go's RFC3339Nano writes it with the received
    offset; ``payload`` holds the exact payload bytes (``null`` when missing).
    """

    __slots__ = (
        "_issued_at_ns",
        "event_id",
        "event_type",
        "issued_at",
        "issued_at_nanos",
        "issued_at_text",
        "nonce",
        "payload",
        "signature",
    )

    event_type: str
    event_id: str
    issued_at: datetime
    issued_at_nanos: int
    issued_at_text: str
    nonce: str
    payload: msgspec.Raw
    signature: str
    _issued_at_ns: int

    def __init__(
        self,
        *,
        event_type: str,
        event_id: str,
        issued_at: datetime = ZERO_TIME,
        nonce: str = "",
        payload: msgspec.Raw | bytes | None = None,
        signature: str = "",
        issued_at_nanos: int | None = None,
        issued_at_text: str | None = None,
    ) -> None:
        if issued_at.tzinfo is None:
            raise NaiveDatetimeError("issued_at is a naive datetime; pass a timezone-aware one")
        if issued_at_nanos is None:
            issued_at_nanos = issued_at.microsecond * 1000
        elif not 0 <= issued_at_nanos < _NANOS_PER_SECOND:
            raise ArgumentError("issued_at_nanos must be within 0..999999999")
        elif issued_at_nanos // 1000 != issued_at.microsecond:
            raise ArgumentError("issued_at_nanos does not agree with issued_at's microseconds")
        text = format_rfc3339nano(issued_at, issued_at_nanos)
        if issued_at_text is not None and issued_at_text != text:
            # The signed message holds this text: a second, different one would be signed wrong.
            raise ArgumentError(
                f"issued_at_text {issued_at_text!r} is not Go's RFC3339Nano form of issued_at "
                f"({text!r})"
            )
        self.event_type = event_type
        self.event_id = event_id
        self.issued_at = issued_at
        self.issued_at_nanos = issued_at_nanos
        self.issued_at_text = text
        self.nonce = nonce
        self.payload = _as_payload(payload)
        self.signature = signature
        self._issued_at_ns = _epoch_ns(issued_at, issued_at_nanos)

    @property
    def issued_at_ns(self) -> int:
        """``issued_at`` as nanoseconds since the Unix epoch, at full wire precision."""
        return self._issued_at_ns

    def decode_payload(self, type: type[T] = Any) -> T:  # type: ignore[assignment]
        """The payload decoded from JSON, optionally into ``type``.

        Raises :class:`EnvelopeError` when it is not JSON or not of that shape.
        """
        try:
            return msgspec.json.decode(bytes(self.payload), type=type)
        except msgspec.ValidationError as exc:
            raise EnvelopeError(f"payload does not fit the expected type: {exc}") from exc
        except JSON_DECODE_ERRORS as exc:
            raise EnvelopeError(f"payload is not valid JSON: {exc}") from exc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SignedEnvelope):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _ENVELOPE_FIELDS)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"SignedEnvelope(event_type={self.event_type!r}, event_id={self.event_id!r}, "
            f"issued_at={self.issued_at_text!r}, nonce={self.nonce!r}, "
            f"payload=<{len(self.payload)} bytes>)"
        )


_ENVELOPE_FIELDS = (
    "event_type", "event_id", "issued_at_text", "nonce", "payload", "signature",
)  # fmt: skip


def _as_payload(payload: msgspec.Raw | bytes | bytearray | memoryview | None) -> msgspec.Raw:
    if payload is None or not len(payload):
        # Go writes a nil RawMessage as null.
        return NULL
    if isinstance(payload, msgspec.Raw):
        return payload
    return msgspec.Raw(bytes(payload))


# --- envelope decoding, as Go's encoding/json does it ------------------------
#
# The common case goes through msgspec. What msgspec rejects but Go accepts (invalid
# UTF-8 or a lone surrogate escape in a string, a null field, a key in another case,
# nesting deeper than msgspec's limit) goes through _scan_json, a transcription of the
# rules of Go's scanner, so the envelope reads exactly as a Go control plane reads it.

_ABSENT = msgspec.Raw(b"")


class _EnvelopeWire(msgspec.Struct, forbid_unknown_fields=True):
    # Strings without `| None` and unknown fields forbidden: a null or a key Go would fold
    # to a field name takes the exact path below rather than being read differently.
    event_type: str = ""
    event_id: str = ""
    issued_at: msgspec.Raw = _ABSENT
    nonce: str = ""
    payload: msgspec.Raw = NULL
    signature: str = ""


_envelope_decoder = msgspec.json.Decoder(_EnvelopeWire)

_GO_MAX_DEPTH = 10000  # encoding/json's scanner: "exceeded max depth"
_SPACE = rb"[ \t\n\r]*+"
_STRING = rb'"(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+"'
_NUMBER = rb"-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+"
_SCALAR = rb"(?:" + _STRING + rb"|" + _NUMBER + rb"|true|false|null)"
_JSON_TOKEN = re.compile(
    _SPACE + rb"(?:(?P<s>" + _STRING + rb")|(?P<n>" + _NUMBER + rb")"
    rb"|(?P<l>true|false|null)|(?P<p>[{}\[\],:]))"
)
_JSON_SPACE = re.compile(_SPACE)
# Runs of `,scalar` in an array and `,"key":scalar` in an object, taken in one match so
# that a large payload costs a few regex calls rather than a Python step per token.
_ARRAY_RUN = re.compile(rb"(?:" + _SPACE + rb"," + _SPACE + _SCALAR + rb")*+")
_OBJECT_RUN = re.compile(
    rb"(?:" + _SPACE + rb"," + _SPACE + _STRING + _SPACE + rb":" + _SPACE + _SCALAR + rb")*+"
)
_OPEN_OBJECT, _CLOSE_OBJECT, _OPEN_ARRAY, _CLOSE_ARRAY = b"{}[]"
_COMMA, _COLON = b",:"
# Scanner states: what the next token may be.
_VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON_NEXT, _COMMA_OR_CLOSE, _END = range(7)


def _scan_json(data: bytes) -> list[tuple[bytes, int, int]] | None:
    """Check ``data`` as Go's JSON scanner does; raises ValueError where Go reports a syntax
    error. Returns the members of a top-level object as (key token, value start, value end),
    or None when the top-level value is not an object.

    Like Go's, the scanner lets bytes that are not UTF-8 through inside strings.
    """
    stack = bytearray()
    members: list[tuple[bytes, int, int]] = []
    state, pos, key, member_start = _VALUE, 0, b"", 0
    match = _JSON_TOKEN.match
    while state != _END:
        if state == _COMMA_OR_CLOSE and len(stack) > 1:
            run = _OBJECT_RUN if stack[-1] == _OPEN_OBJECT else _ARRAY_RUN
            pos = _match_end(run, data, pos)
        token = match(data, pos)
        if token is None:
            raise ValueError(f"invalid character at byte {_space_end(data, pos)}")
        kind = token.lastgroup or ""
        start, pos = token.start(kind), token.end()
        char = data[start] if kind == "p" else 0
        if state == _COLON_NEXT:
            if char != _COLON:
                raise ValueError(f"expected ':' at byte {start}")
            state = _VALUE
            continue
        if state in (_KEY, _KEY_OR_CLOSE):
            if kind == "s":
                if len(stack) == 1:
                    key = data[start:pos]
                state = _COLON_NEXT
                continue
            if not (state == _KEY_OR_CLOSE and char == _CLOSE_OBJECT):
                raise ValueError(f"expected a string key at byte {start}")
            stack.pop()
        elif state == _COMMA_OR_CLOSE:
            top = stack[-1]
            if char == _COMMA:
                state = _KEY if top == _OPEN_OBJECT else _VALUE
                continue
            if not (char == _CLOSE_OBJECT if top == _OPEN_OBJECT else char == _CLOSE_ARRAY):
                raise ValueError(f"expected ',' or a closing bracket at byte {start}")
            stack.pop()
        else:  # _VALUE or _VALUE_OR_CLOSE
            if len(stack) == 1 and stack[0] == _OPEN_OBJECT:
                member_start = start
            if char in (_OPEN_OBJECT, _OPEN_ARRAY):
                stack.append(char)
                if len(stack) > _GO_MAX_DEPTH:
                    raise ValueError("exceeded max depth")
                state = _KEY_OR_CLOSE if char == _OPEN_OBJECT else _VALUE_OR_CLOSE
                continue
            if char == _CLOSE_ARRAY and state == _VALUE_OR_CLOSE:
                stack.pop()
            elif kind == "p":
                raise ValueError(f"expected a value at byte {start}")
        # A value ended at `pos`.
        if not stack:
            state = _END
        else:
            if len(stack) == 1 and stack[0] == _OPEN_OBJECT:
                members.append((key, member_start, pos))
            state = _COMMA_OR_CLOSE
    if _space_end(data, pos) != len(data):
        raise ValueError(f"invalid character after top-level value at byte {pos}")
    return members if data[_space_end(data, 0)] == _OPEN_OBJECT else None


def _space_end(data: bytes, pos: int) -> int:
    return _match_end(_JSON_SPACE, data, pos)


def _match_end(pattern: re.Pattern[bytes], data: bytes, pos: int) -> int:
    found = pattern.match(data, pos)
    return pos if found is None else found.end()


def _go_utf8(raw: bytes) -> str:
    """UTF-8 decoded as Go's encoding/json does: each byte of a bad sequence becomes its own
    U+FFFD (Python's "replace" would take a whole bad subpart as one)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        pass
    view = memoryview(raw)
    parts: list[str] = []
    pos = 0
    while True:
        try:
            parts.append(str(view[pos:], "utf-8"))
            return "".join(parts)
        except UnicodeDecodeError as exc:
            parts.append(str(view[pos : pos + exc.start], "utf-8"))
            parts.append("\ufffd")
            pos += exc.start + 1


_GO_ESCAPE = re.compile(
    rb"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|\\u([0-9a-fA-F]{4})"
    rb"|\\(.)",
    re.DOTALL,
)
_SIMPLE_ESCAPES = {ord(k): v for k, v in zip('"\\/bfnrt', '"\\/\b\f\n\r\t', strict=True)}


def _go_unquote(token: bytes) -> str:
    """A JSON string token decoded as Go's encoding/json does: each byte that is not UTF-8
    and each lone surrogate escape becomes U+FFFD."""
    body = token[1:-1]
    if b"\\" not in body:
        return _go_utf8(body)
    parts: list[str] = []
    pos = 0
    for escape in _GO_ESCAPE.finditer(body):
        parts.append(_go_utf8(body[pos : escape.start()]))
        high, low, unit, simple = escape.groups()
        if high is not None:
            code = 0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00)
            parts.append(chr(code))
        elif unit is not None:
            code = int(unit, 16)
            parts.append("\ufffd" if 0xD800 <= code <= 0xDFFF else chr(code))
        else:
            parts.append(_SIMPLE_ESCAPES[simple[0]])
        pos = escape.end()
    parts.append(_go_utf8(body[pos:]))
    return "".join(parts)


_ENVELOPE_KEYS = frozenset(("event_type", "event_id", "issued_at", "nonce", "payload", "signature"))
# The only non-ASCII letters whose Unicode case folding reaches an ASCII letter:
# KELVIN SIGN folds with k, LATIN SMALL LETTER LONG S with s.
_FOLD_TO_ASCII = str.maketrans({"\u212a": "k", "\u017f": "s"})


def _go_field(key_token: bytes) -> str | None:
    """The envelope field a key names, matched case-insensitively as Go matches struct fields."""
    key = _go_unquote(key_token).translate(_FOLD_TO_ASCII)
    if not key.isascii():
        return None
    key = key.lower()
    return key if key in _ENVELOPE_KEYS else None


def _parse_envelope_exact(data: bytes) -> SignedEnvelope:
    """Decode an envelope as Go's json.Unmarshal does, whatever msgspec thought of it."""
    try:
        members = _scan_json(data)
    except ValueError as exc:
        raise EnvelopeError(f"invalid envelope JSON: {exc}") from None
    if members is None:
        raise EnvelopeError("invalid envelope JSON: not an object")
    strings = {"event_type": "", "event_id": "", "nonce": "", "signature": ""}
    issued_at: bytes | None = None
    payload = NULL
    for key_token, start, end in members:
        field = _go_field(key_token)
        if field is None:
            continue
        value = data[start:end]
        if field == "payload":
            payload = msgspec.Raw(value)
        elif value == b"null":
            # Go: null leaves a string or a time.Time as it was.
            continue
        elif field == "issued_at":
            issued_at = value
        elif value[:1] != b'"':
            raise EnvelopeError(f"invalid envelope JSON: {field} is not a string")
        else:
            strings[field] = _go_unquote(value)
    return _envelope_from_wire(
        strings["event_type"], strings["event_id"], issued_at,
        strings["nonce"], payload, strings["signature"],
    )  # fmt: skip


def _issued_at_from_wire(raw: msgspec.Raw | bytes | None) -> tuple[datetime, int, str]:
    if raw is None:
        return ZERO_TIME, 0, _ZERO_TIME_TEXT
    try:
        quoted = str(raw, "ascii")
    except UnicodeDecodeError:
        raise EnvelopeError("bad issued_at: not an RFC 3339 time") from None
    # Go's Time.UnmarshalJSON takes the text between the quotes as it is: no JSON unescaping.
    if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
        raise EnvelopeError("bad issued_at: not a JSON string")
    text = quoted[1:-1]
    canonical = _RFC3339NANO_CANONICAL.fullmatch(text)
    if canonical is not None:
        # What a Go control plane sends: let the C parser do it (the pattern has checked
        # the grammar; it truncates digits past the microsecond, as checked below).
        fraction = canonical.group(1)
        nanos = int(fraction.ljust(9, "0")) if fraction else 0
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            pass  # out of range (a 31st of February): parse_rfc3339 says why
        else:
            if when.microsecond == nanos // 1000:
                return when, nanos, text
    try:
        when, nanos = parse_rfc3339(text)
    except ValueError as exc:
        raise EnvelopeError(f"bad issued_at: {exc}") from None
    return when, nanos, format_rfc3339nano(when, nanos)


_ZERO_TIME_TEXT = "0001-01-01T00:00:00Z"


def _envelope_from_wire(
    event_type: str,
    event_id: str,
    issued_at_raw: msgspec.Raw | bytes | None,
    nonce: str,
    payload: msgspec.Raw,
    signature: str,
) -> SignedEnvelope:
    if not event_type:
        raise EnvelopeError("missing or empty event_type")
    if not event_id:
        raise EnvelopeError("missing or empty event_id")
    issued_at, nanos, text = _issued_at_from_wire(issued_at_raw)
    # Every part is known to be consistent here: skip __init__'s checks.
    envelope = SignedEnvelope.__new__(SignedEnvelope)
    envelope.event_type = event_type
    envelope.event_id = event_id
    envelope.issued_at = issued_at
    envelope.issued_at_nanos = nanos
    envelope.issued_at_text = text
    envelope.nonce = nonce
    envelope.payload = payload if len(payload) else NULL
    envelope.signature = signature
    envelope._issued_at_ns = _epoch_ns(issued_at, nanos)
    return envelope


def _wire_bytes(data: str) -> bytes:
    try:
        # Text decoded with errors="surrogateescape" gets its original bytes back.
        return data.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return data.encode("utf-8", "surrogatepass")


def parse_envelope(data: bytes | str) -> SignedEnvelope:
    """Parse an SSE event's data as a :class:`SignedEnvelope`, reading it as Go does.

    Raises :class:`EnvelopeError` for invalid JSON, a bad ``issued_at``, or a missing
    or empty ``event_type`` / ``event_id``. Bytes that are not UTF-8 are fine (as in Go,
    they read as U+FFFD in the string fields and stay as they are in the payload); for
    text, decode the stream with ``errors="surrogateescape"`` to keep them.
    """
    try:
        wire = _envelope_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeError, RecursionError):
        return _parse_envelope_exact(_wire_bytes(data) if isinstance(data, str) else bytes(data))
    issued_at: msgspec.Raw | None = wire.issued_at
    if issued_at is _ABSENT:
        issued_at = None
    elif issued_at == NULL:
        # A null leaves an earlier issued_at in place in Go: let the exact path see them all.
        return _parse_envelope_exact(_wire_bytes(data) if isinstance(data, str) else bytes(data))
    return _envelope_from_wire(
        wire.event_type, wire.event_id, issued_at, wire.nonce, wire.payload, wire.signature
    )
