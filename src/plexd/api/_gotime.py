"""Go-exact codecs layer: RFC 3339 times with nanoseconds, as Go parses and formats them.

It owns what a time on the wire means: Go's zero time, the grammar ``time.Time``'s
``UnmarshalJSON`` accepts, the text ``time.RFC3339Nano`` writes, nanoseconds since
the Unix epoch (Python's datetime holds microseconds only, the signed message and the
staleness window need nanoseconds), and the one message for a naive datetime.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from .errors import NaiveDatetimeError

NANOS_PER_SECOND = 1_000_000_000
# Go's zero time.Time, which a Go server sends for a time it never set.
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
# ZERO_TIME as time.RFC3339Nano writes it.
ZERO_TIME_TEXT = "0001-01-01T00:00:00Z"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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
# A JSON string of text that Go's RFC3339Nano writes (fields in range, no trailing zero
# in the fraction, Z rather than a zero offset); group 1 is the text, group 2 the fraction.
_QUOTED_RFC3339NANO = re.compile(
    r'"([0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])'
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.([0-9]{0,8}[1-9]))?"
    r'(?:Z|[+-](?!00:00)(?:[01][0-9]|2[0-3]):[0-5][0-9]))"',
    re.ASCII,
)
# Nanoseconds per unit of a fraction of n digits, by n.
_FRACTION_SCALE = tuple(10 ** (9 - digits) for digits in range(10))
_ZONES: dict[int, timezone] = {0: UTC}


def naive_datetime_error(what: str) -> NaiveDatetimeError:
    """The error for a datetime without a timezone; ``what`` names where it was given."""
    return NaiveDatetimeError(
        f"{what} is a naive datetime; pass a timezone-aware one "
        "(e.g. datetime.now(timezone.utc)) so it is not read as local time"
    )


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
        raise naive_datetime_error("issued_at")
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


def unmarshal_json_time(raw: bytes) -> tuple[datetime, int, str, int]:
    """A JSON string read as Go's ``Time.UnmarshalJSON`` reads it: the datetime, its
    nanoseconds, the time as ``time.RFC3339Nano`` writes it with the received offset,
    and the time in nanoseconds since the Unix epoch.

    Raises ValueError where Go fails.
    """
    try:
        quoted = str(raw, "ascii")
    except UnicodeDecodeError:
        raise ValueError("not an RFC 3339 time") from None
    canonical = _QUOTED_RFC3339NANO.fullmatch(quoted)
    if canonical is not None:
        # What a Go control plane sends (every event goes through here): let the C parser
        # do it (the pattern has checked the grammar; it truncates digits past the
        # microsecond, as checked below).
        text, fraction = canonical.groups()
        nanos = int(fraction) * _FRACTION_SCALE[len(fraction)] if fraction else 0
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            pass  # out of range (a 31st of February): parse_rfc3339 says why
        else:
            if when.microsecond == nanos // 1000:
                delta = when - _EPOCH
                seconds = delta.days * 86400 + delta.seconds
                return when, nanos, text, seconds * NANOS_PER_SECOND + nanos
    # Go takes the text between the quotes as it is: no JSON unescaping.
    if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
        raise ValueError("not a JSON string")
    when, nanos = parse_rfc3339(quoted[1:-1])
    return when, nanos, format_rfc3339nano(when, nanos), epoch_ns(when, nanos)


def epoch_ns(when: datetime, nanos: int | None = None) -> int:
    """Nanoseconds since the Unix epoch of an aware datetime; ``nanos`` (0..999999999)
    is its sub-second part at full precision, when it holds more than microseconds."""
    delta = when - _EPOCH
    seconds_ns = (delta.days * 86400 + delta.seconds) * NANOS_PER_SECOND
    return seconds_ns + (delta.microseconds * 1000 if nanos is None else nanos)


def from_epoch_ns(ns: int) -> tuple[datetime, int]:
    """The UTC datetime (microseconds truncated) and its nanoseconds of a time in
    nanoseconds since the Unix epoch, as :func:`parse_rfc3339` returns them."""
    seconds, nanos = divmod(ns, NANOS_PER_SECOND)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000), nanos


ZERO_TIME_NS = epoch_ns(ZERO_TIME, 0)
