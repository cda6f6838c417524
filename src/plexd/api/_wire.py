"""Declarations layer, at its base: WireStruct, the base of every wire type, and field kinds.

It owns how a wire type is encoded for and decoded from a Go control plane. Encoding:
keys that are not omitempty are always sent; omitempty keys are left out when empty;
times are RFC 3339 with their offset, and a naive datetime is refused before it is
sent. Decoding: JSON ``null`` for a list or map reads as empty, missing keys take the
empty value, unknown keys are ignored, and raw JSON fields keep the exact bytes
received. A repr never shows a secret field (tokens, keys, ciphertext).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeAlias, TypeVar, cast

import msgspec

from ._gotime import ZERO_TIME, naive_datetime_error
from .errors import MASK, ArgumentError, ArgumentTypeError, ResponseError

T = TypeVar("T")

NULL = msgspec.Raw(b"null")
"""JSON ``null`` as a raw field value: what an empty raw field (``payload``, ``data``,
...) is sent as."""

# What msgspec raises for a value JSON cannot hold, and for bytes that are not JSON.
# RecursionError: nesting deeper than msgspec's guard (about 1,000 levels on Python 3.11
# and 3.12, 10,000 on 3.13) in either direction.
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
def always_str() -> Any:
    """A string field sent even when empty."""
    return msgspec.field(default_factory=str)


def always_int() -> Any:
    """An integer field sent even when zero."""
    return msgspec.field(default_factory=int)


def always_bool() -> Any:
    """A boolean field sent even when false."""
    return msgspec.field(default_factory=bool)


def always_list() -> Any:
    """A list field sent even when empty (as ``[]``)."""
    return msgspec.field(default_factory=_empty_list)


def always_time() -> Any:
    """A time field sent even when unset (as Go's zero time)."""
    return msgspec.field(default_factory=_zero_time)


def always_raw() -> Any:
    """A raw JSON field sent even when unset (as ``null``)."""
    return msgspec.field(default_factory=_null_raw)


def omitempty_map() -> Any:
    """A map field left out when empty."""
    return msgspec.field(default_factory=dict)


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
            return MASK
        if isinstance(value, msgspec.Raw):
            return RawRepr(bytes(value))
        return value

    def _repr_items(self) -> Iterator[str]:
        for name in self.__struct_fields__:
            shown = self._shown(name)
            yield f"{name}={MASK if shown is MASK else repr(shown)}"


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
        raise naive_datetime_error(f"{cls.__name__}.{name}")


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
        raise naive_datetime_error("a value in the request body")


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
