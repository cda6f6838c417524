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

from .errors import EnvelopeError, PlexdError, ResponseError

T = TypeVar("T")

# Go's zero time.Time, which a Go server sends for a time it never set.
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
NULL = msgspec.Raw(b"null")


class NaiveDatetimeError(PlexdError, ValueError):
    """A wire type was given a datetime without a timezone (it would be sent as local time)."""


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
    raise TypeError(
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
    """Encode a Python value as a raw JSON field (for payload/data/subject/object)."""
    return msgspec.Raw(msgspec.json.encode(value))


def decode_raw(raw: msgspec.Raw | bytes, type: type[T] = Any) -> T:  # type: ignore[assignment]
    """Decode a raw JSON field, optionally into ``type``.

    Raises :class:`ResponseError` when the bytes are not JSON or not of that shape.
    """
    try:
        return msgspec.json.decode(bytes(raw), type=type)
    except msgspec.ValidationError as exc:
        raise ResponseError(f"raw JSON field does not fit the expected type: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
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

# RFC 3339 as Go's time.Parse(time.RFC3339, ...) accepts it.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:(Z)|([+-])(\d{2}):(\d{2}))"
)
# Text that Go's RFC3339Nano would write unchanged: no trailing zero in the
# fraction, and Z rather than a zero offset.
_RFC3339NANO_CANONICAL = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{0,8}[1-9])?(?:Z|[+-](?!00:00)\d{2}:\d{2})"
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
    Raises ValueError for anything Go would reject.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second, fraction, z, sign, off_h, off_m = match.groups()
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    if z:
        zone: timezone = UTC
    else:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError(f"time zone offset out of range in {text!r}")
        minutes = int(off_h) * 60 + int(off_m)
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
    minutes = 0 if offset is None else int(offset.total_seconds()) // 60
    if minutes == 0:
        return text + "Z"
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{text}{sign}{hours:02d}:{mins:02d}"


class SignedEnvelope:
    """A signed event as it arrives in an SSE ``data:`` field.

    Besides the wire fields it keeps what the signature needs of the wire text:
    ``issued_at_nanos`` (Python's datetime holds microseconds only) and
    ``issued_at_text``, the time as Go's RFC3339Nano writes it with the received
    offset; ``payload`` holds the exact payload bytes.
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
        elif issued_at_nanos // 1000 != issued_at.microsecond:
            raise ValueError("issued_at_nanos does not agree with issued_at's microseconds")
        if payload is None or not bytes(payload):
            payload = NULL
        elif not isinstance(payload, msgspec.Raw):
            payload = msgspec.Raw(payload)
        self.event_type = event_type
        self.event_id = event_id
        self.issued_at = issued_at
        self.issued_at_nanos = issued_at_nanos
        self.issued_at_text = issued_at_text or format_rfc3339nano(issued_at, issued_at_nanos)
        self.nonce = nonce
        self.payload = payload
        self.signature = signature
        self._issued_at_ns: int | None = None

    @property
    def issued_at_ns(self) -> int:
        """``issued_at`` as nanoseconds since the Unix epoch, at full wire precision."""
        if self._issued_at_ns is None:
            whole = self.issued_at.replace(microsecond=0) - _EPOCH
            seconds = whole.days * 86400 + whole.seconds
            self._issued_at_ns = seconds * _NANOS_PER_SECOND + self.issued_at_nanos
        return self._issued_at_ns

    def decode_payload(self, type: type[T] = Any) -> T:  # type: ignore[assignment]
        """The payload decoded from JSON, optionally into ``type``."""
        return msgspec.json.decode(bytes(self.payload), type=type)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SignedEnvelope):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _ENVELOPE_FIELDS)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"SignedEnvelope(event_type={self.event_type!r}, event_id={self.event_id!r}, "
            f"issued_at={self.issued_at_text!r}, nonce={self.nonce!r}, "
            f"payload=<{len(bytes(self.payload))} bytes>)"
        )


_ENVELOPE_FIELDS = (
    "event_type", "event_id", "issued_at_text", "nonce", "payload", "signature",
)  # fmt: skip


class _EnvelopeWire(msgspec.Struct):
    event_type: str = ""
    event_id: str = ""
    issued_at: str | None = None
    nonce: str | None = None
    payload: msgspec.Raw = NULL
    signature: str | None = None


_envelope_decoder = msgspec.json.Decoder(_EnvelopeWire)


def parse_envelope(data: bytes | str) -> SignedEnvelope:
    """Parse an SSE event's data as a :class:`SignedEnvelope`.

    Raises :class:`EnvelopeError` for invalid JSON, a bad ``issued_at``, or a missing
    or empty ``event_type`` / ``event_id``.
    """
    try:
        wire = _envelope_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"invalid envelope JSON: {exc}") from None
    if not wire.event_type:
        raise EnvelopeError("missing or empty event_type")
    if not wire.event_id:
        raise EnvelopeError("missing or empty event_id")
    if wire.issued_at is None:
        issued_at, nanos, text = ZERO_TIME, 0, "0001-01-01T00:00:00Z"
    else:
        try:
            issued_at, nanos = parse_rfc3339(wire.issued_at)
        except ValueError as exc:
            raise EnvelopeError(f"bad issued_at: {exc}") from None
        if _RFC3339NANO_CANONICAL.fullmatch(wire.issued_at):
            text = wire.issued_at
        else:
            text = format_rfc3339nano(issued_at, nanos)
    return SignedEnvelope(
        event_type=wire.event_type,
        event_id=wire.event_id,
        issued_at=issued_at,
        nonce=wire.nonce or "",
        payload=wire.payload,
        signature=wire.signature or "",
        issued_at_nanos=nanos,
        issued_at_text=text,
    )
