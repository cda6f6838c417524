"""Emulator, bottom layer (pure): fault injection, what the emulator does wrong on
purpose, per node, deterministically.

A :class:`Faults` object holds the faults of one node (or of every node, under the
node id ``"*"``). Counted faults are consumed as they fire, so a test that sets
``corrupt_signatures=2`` gets exactly the next two events corrupted and then a
healthy stream again. The functions here only decide; the server applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

# The node id whose faults apply to every request, whatever node it is for.
ALL_NODES = "*"

Count = Annotated[int, msgspec.Meta(ge=0)]
HTTPStatus = Annotated[int, msgspec.Meta(ge=100, le=599)]
# A Retry-After value a header can carry: visible ASCII, spaces and tabs, no line break
# (a CR or LF would make every answer carrying it unsendable).
RetryAfter = Annotated[str, msgspec.Meta(pattern=r"\A[\t\x20-\x7e]*\Z", max_length=128)]
StatusScope = Literal["events", "all"]
MalformedKind = Literal["invalid_json", "missing_event_id"]


class Faults(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The faults of one node. Every field is off by default; change them at any time.

    Event stream connections (counted per connection attempt, in order):

    - ``cut_after_bytes``: the next ``cut_streams`` stream connections are closed
      abruptly once they have sent this many body bytes (possibly mid-line; the
      ``retry:`` line and keep-alives count). ``0`` closes right after the headers.
      Once the last counted connection took it, ``cut_after_bytes`` is None again.
    - ``stall_after_bytes``: the next ``stall_streams`` stream connections stop
      sending anything (no events, no keep-alives) after this many body bytes and
      stay open until the client leaves or the emulator stops (likewise reset).

    Statuses, answered before authentication:

    - ``status``: answer this status (with ``Retry-After: retry_after`` when set) to
      the node's event stream requests (``status_scope="events"``) or to all of its
      requests (``"all"``); ``status_count`` requests, or every one while
      ``status_count`` is None; ``retry_after`` is sent as it is (visible ASCII, at most
      128 characters). "Reject the next 3 requests with 503" is
      ``status=503, status_scope="all", status_count=3``.

    Events (counted per event written to any stream of the node, replays included;
    the event keeps its ``id:`` so a client that skips it moves past it):

    - ``corrupt_signatures``: the next N events carry a wrong signature.
    - ``malformed_events``: the next N events are sent as a broken envelope:
      truncated JSON (``malformed_kind="invalid_json"``) or without ``event_id``.
    """

    cut_after_bytes: Count | None = None
    cut_streams: Count = 1
    stall_after_bytes: Count | None = None
    stall_streams: Count = 1
    status: HTTPStatus | None = None
    status_scope: StatusScope = "events"
    status_count: Count | None = None
    retry_after: RetryAfter | None = None
    corrupt_signatures: Count = 0
    malformed_events: Count = 0
    malformed_kind: MalformedKind = "invalid_json"


def faults_to_builtins(faults: Faults) -> dict[str, object]:
    """The faults as a JSON-ready dict (every field, for the admin endpoint's answer)."""
    return {name: getattr(faults, name) for name in faults.__struct_fields__}


@dataclass(frozen=True)
class StatusAnswer:
    """A status a fault answers instead of the real response."""

    status: int
    retry_after: str | None


@dataclass(frozen=True)
class StreamPlan:
    """How one stream connection misbehaves: byte counts after which it is cut or stalls."""

    cut_after_bytes: int | None = None
    stall_after_bytes: int | None = None


HEALTHY_STREAM = StreamPlan()

EventMutation = Literal["corrupt_signature", "invalid_json", "missing_event_id"]


def take_status(applicable: Iterable[Faults], is_event_stream: bool) -> StatusAnswer | None:
    """The status to answer a request with, consuming one count; None when none fires."""
    for faults in applicable:
        if faults.status is None:
            continue
        if faults.status_scope == "events" and not is_event_stream:
            continue
        if faults.status_count is not None:
            if faults.status_count == 0:
                continue
            faults.status_count -= 1
        return StatusAnswer(faults.status, faults.retry_after)
    return None


def take_stream_plan(applicable: Iterable[Faults]) -> StreamPlan:
    """The cut/stall thresholds of a new stream connection, consuming one connection each."""
    cut: int | None = None
    stall: int | None = None
    for faults in applicable:
        if cut is None:
            cut = _take_connection(faults, "cut_after_bytes", "cut_streams")
        if stall is None:
            stall = _take_connection(faults, "stall_after_bytes", "stall_streams")
    if cut is None and stall is None:
        return HEALTHY_STREAM
    return StreamPlan(cut, stall)


def _take_connection(faults: Faults, after_bytes: str, connections: str) -> int | None:
    """The byte threshold ``faults.<after_bytes>`` for one more connection, counted down
    in ``faults.<connections>``; the last counted connection switches the fault off."""
    threshold: int | None = getattr(faults, after_bytes)
    remaining: int = getattr(faults, connections)
    if threshold is None or remaining <= 0:
        return None
    if remaining == 1:
        setattr(faults, after_bytes, None)
        setattr(faults, connections, 1)
    else:
        setattr(faults, connections, remaining - 1)
    return threshold


def take_event_mutation(applicable: Iterable[Faults]) -> EventMutation | None:
    """How to spoil the next event written, consuming one count; None to send it intact."""
    for faults in applicable:
        if faults.malformed_events > 0:
            faults.malformed_events -= 1
            return faults.malformed_kind
        if faults.corrupt_signatures > 0:
            faults.corrupt_signatures -= 1
            return "corrupt_signature"
    return None


def mutates_events(applicable: Iterable[Faults]) -> bool:
    """Whether any of the faults would spoil the next event (the fast path skips checks)."""
    return any(f.malformed_events > 0 or f.corrupt_signatures > 0 for f in applicable)
