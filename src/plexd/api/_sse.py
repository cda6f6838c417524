"""Pure logic layer: ``SSEParser``, a sans-IO parser of ``text/event-stream``, exact to WHATWG.

This module owns the event-stream rules ("9.2.6 Interpreting an event stream" of the
WHATWG HTML standard, plus one documented bound, ``max_event_size``), the events it
yields (:class:`SSEEvent`, :class:`SSEComment`), and ``resume_id``, the most recent id
that may be sent back as ``Last-Event-ID`` (the rule is ``_resume``). The parser takes
bytes and returns events; it never touches a socket, a clock or an event loop.

The general path takes any text in any parser state: a chunk is decoded in one call
(an incomplete UTF-8 sequence at its end waits for the next chunk), split into lines up
to its last line end, and one loop reads each line with one split and one dispatch on
its field name. Only newly arrived text is searched, so a long line fed in small chunks
costs linear time. The fast path, for large chunks, reads the events that lie whole in
the chunk with one regular expression and builds them a field at a time from C; it
takes only blocks of ``id: ``/``event: ``/``data: `` lines (as servers write them) and
leaves any other block, in its place, to the general path. It gives exactly what the
general path gives, and is kept because it is a quarter of the parser's time on 64 KiB
chunks and a sixth of ``EventSource``'s end to end (``bench/bench_sse.py``).

Bounds (``max_event_size``, counted in characters of decoded text, which equals bytes
for ASCII):

- An event whose data (as it would be dispatched) is longer than ``max_event_size`` is
  dropped. The parser stops buffering its data as soon as a chunk ends past the bound,
  ignores its remaining ``data`` lines up to the blank line that ends it, and calls
  ``on_oversize(size)`` once, ``size`` being the characters of data it had seen when it
  gave up (more than ``max_event_size``; how much more depends on the chunking). Its
  ``id`` and ``retry`` fields are processed as usual, so the last event ID still
  advances at its blank line.
- A single line longer than ``max_event_size`` (field name included), whatever its
  field, is skipped unread (an over-long ``id:`` line does not change the last event
  ID, an over-long comment is not reported) and the event it belongs to is dropped the
  same way, ``size`` being the length of the line seen so far.

Which events are dropped, and how many times ``on_oversize`` is called, never depends on
how the stream is cut into chunks. ``on_retry`` and ``on_oversize`` are called while
``feed`` runs, before it returns the events that preceded them in the stream.

So between two feeds the parser holds at most about ``max_event_size`` characters of
event data, one line of at most ``max_event_size`` characters, and three undecoded
bytes; within a feed, at most one chunk more.
"""

from __future__ import annotations

import re
from codecs import BOM_UTF8, utf_8_decode
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain, compress, repeat
from typing import cast

from ._resume import is_header_safe

__all__ = [
    "DEFAULT_MAX_EVENT_SIZE",
    "MAX_RETRY_MS",
    "SSEComment",
    "SSEEvent",
    "SSEParser",
]

# API.md: the default bound on one event or one line.
DEFAULT_MAX_EVENT_SIZE = 16 * 1024 * 1024
# WHATWG: the type of an event whose event type buffer is empty.
DEFAULT_EVENT_TYPE = "message"
# A larger `retry` value would mean "never" anyway; the cap also keeps int() away from
# its digit limit and from parsing a huge number.
MAX_RETRY_MS = 2**63 - 1
_MAX_RETRY_DIGITS = len(str(MAX_RETRY_MS))
# "data:" plus the one optional space: the shortest prefix of a data line before its value.
_DATA_PREFIX = len("data:")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched server-sent event.

    ``type`` is the ``event`` field (``"message"`` when absent or empty), ``data`` the
    ``data`` lines joined with LF, and ``id`` the last event ID in effect at dispatch
    (it persists across events, as in WHATWG).
    """

    type: str
    data: str
    id: str


@dataclass(frozen=True, slots=True)
class SSEComment:
    """A comment line of the stream; ``text`` is everything after the first colon, verbatim."""

    text: str


# A frozen dataclass's generated __init__ goes through object.__setattr__ once per field;
# setting the slots through their descriptors builds an event in about half the time.
# The objects are identical to the ones the constructor makes.
_new_object = object.__new__
_set_event_type: Callable[[SSEEvent, str], None] = SSEEvent.__dict__["type"].__set__
_set_event_data: Callable[[SSEEvent, str], None] = SSEEvent.__dict__["data"].__set__
_set_event_id: Callable[[SSEEvent, str], None] = SSEEvent.__dict__["id"].__set__
_set_comment_text: Callable[[SSEComment, str], None] = SSEComment.__dict__["text"].__set__


class _DiscardedData(list[str]):
    """Marks the data of an event being dropped; appending to it keeps nothing."""

    def append(self, value: str, /) -> None:
        pass


_DISCARDED = _DiscardedData()


# --------------------------------------------------------------------------- the fast path

# One whole event in its common form: "id: " lines (no U+0000 in the value) and "event: "
# lines in any order, then "data: " lines, then a blank line; every line ends with LF (the
# text has no CR left). A repeated group keeps its last capture: WHATWG's "the last one
# wins". Groups: the id (None without an id line), the event type, the first data value,
# the further data lines verbatim; then any other block of lines, up to and including its
# blank line, for the general path: on text made of whole blocks the matches are
# contiguous. Possessive quantifiers: no part ever has to give back what it matched.
_COMPLETE_EVENT = re.compile(
    r"(?:id: ([^\n\0]*+)\n|event: (.*+)\n)*+data: (.*+)\n((?:data: .*+\n)*+)\n"
    r"|((?:.++\n)*+\n)"
)
# split() gives, for each block, the text before it (empty here) and then its groups.
_COLUMNS = _COMPLETE_EVENT.groups + 1
_DATA_LINE_START = "\ndata: "


def _event_data(first_data: list[str], more_data: list[str]) -> list[str]:
    # Most events have a single data line: then the first one is all of the data. A
    # further-lines group is "data: b\ndata: c\n": each value follows "data: " at a line start.
    if more_data.count("") == len(more_data):
        return first_data
    return [
        first + ("\n" + more[:-1]).replace(_DATA_LINE_START, "\n") if more else first
        for first, more in zip(first_data, more_data, strict=True)
    ]


def _event_types(types: list[str | None]) -> Iterable[str]:
    # Most streams send one type (or none) throughout: one string serves every event.
    first = types[0]
    if types.count(first) == len(types):
        return repeat(first or DEFAULT_EVENT_TYPE, len(types))
    return [event_type or DEFAULT_EVENT_TYPE for event_type in types]


# --------------------------------------------------------------------------- the parser


class SSEParser:
    """A sans-IO, incremental parser of an event stream, exact to WHATWG.

    ``feed(chunk)`` takes the bytes as they arrive, in chunks of any size, and returns
    the events the chunk completed; ``feed_items(chunk)`` also returns the comments, in
    stream order. A ``retry`` field calls ``on_retry(milliseconds)`` as soon as its line
    is read. See the module docstring for ``max_event_size`` and ``on_oversize``.

    ``last_event_id`` starts as the ``last_event_id`` argument (the ID a reconnecting
    client had) and is updated by every blank line, as in WHATWG. ``resume_id`` is the
    most recent of those values that can be sent back as ``Last-Event-ID``
    (:func:`is_header_safe`). Call :meth:`reset` when a new connection starts.
    """

    # The fast path runs on chunks holding at least this many characters of whole events:
    # on fewer, its fixed cost outweighs what it saves. The general path alone gives the
    # same results (tests compare the two by changing it).
    _fast_path_min_size = 8 * 1024

    def __init__(
        self,
        on_retry: Callable[[int], None] | None = None,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        on_oversize: Callable[[int], None] | None = None,
        *,
        last_event_id: str = "",
    ) -> None:
        if max_event_size < 1:
            raise ValueError(f"max_event_size must be positive, got {max_event_size}")
        self._on_retry = on_retry
        self._on_oversize = on_oversize
        self._max_event_size = max_event_size
        self._last_event_id = last_event_id
        self._resume_id = last_event_id if is_header_safe(last_event_id) else ""
        self._comment_seen = False
        self.reset()

    @property
    def last_event_id(self) -> str:
        """The last event ID string: set from the ``id`` fields at each blank line."""
        return self._last_event_id

    @property
    def resume_id(self) -> str:
        """The most recent last event ID that is a valid ``Last-Event-ID`` value.

        Equal to :attr:`last_event_id` unless that one holds a control character or is
        longer than ``MAX_RESUME_ID_BYTES``; such an id is skipped as a resume cursor.
        """
        return self._resume_id

    @property
    def max_event_size(self) -> int:
        """The bound on one event's data and on one line, in characters."""
        return self._max_event_size

    def reset(self) -> None:
        """Start a new connection: forget the partial line and the partial event (a partial
        event cut by a disconnect is discarded) and expect a byte order mark again.
        ``last_event_id`` is kept."""
        self._expect_bom = True
        self._undecoded = b""
        self._skip_lf = False
        self._line_parts: list[str] = []
        self._line_size = 0
        self._skipping_line = False
        self._data: str | None = None
        self._more_data: list[str] | None = None
        self._more_size = 0
        self._data_size = 0
        self._type = ""
        self._id_buffer = self._last_event_id

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse the next bytes of the stream; return the events they completed."""
        items = self._parse(chunk)
        if self._comment_seen:
            return [item for item in items if type(item) is SSEEvent]
        return cast("list[SSEEvent]", items)

    def feed_items(self, chunk: bytes) -> list[SSEEvent | SSEComment]:
        """Like :meth:`feed`, with the comment lines kept, in stream order."""
        return self._parse(chunk)

    def _parse(self, chunk: bytes) -> list[SSEEvent | SSEComment]:
        self._comment_seen = False
        text = self._decode(chunk)
        if self._skip_lf and text:
            # The previous chunk ended with CR: an LF right after it ends the same line.
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if not text:
            return []
        if "\r" in text:
            # A CR ends its line at once; an LF that starts the next chunk belongs to it.
            self._skip_lf = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" not in text:
            # Only more of the current line (a long line arriving in pieces, say).
            self._extend_line(text)
            return []
        out: list[SSEEvent | SSEComment] = []
        if len(text) >= self._fast_path_min_size:
            text = self._parse_complete_events(text, out)
        if text:
            self._parse_lines(text, out)
        return out

    def _parse_complete_events(self, text: str, out: list[SSEEvent | SSEComment]) -> str:
        # The fast path, for the events that lie whole in ``text``: from the end of its
        # first blank line (what comes before, the end of an event in progress, goes
        # through the general path first) to the end of its last one (what comes after is
        # returned, for the general path).
        start = text.find("\n\n") + 2
        end = text.rfind("\n\n") + 2
        # Within max_event_size, no line or event of the region can be over the bound.
        if start < 2 or not self._fast_path_min_size <= end - start <= self._max_event_size:
            return text
        self._parse_lines(text[:start], out)
        # Each column is a slice of split()'s list. A run of blocks the pattern read
        # becomes events, one field at a time for all of them from C (map() calls the
        # slot setters, any() drives it); any other block goes to the general path.
        parts = _COMPLETE_EVENT.split(text[start:end])
        ids, types, first_data, more_data, others = (parts[g::_COLUMNS] for g in range(1, _COLUMNS))
        run_start = 0
        for index in chain(compress(range(len(others)), others), [len(others)]):
            if run_start < index:
                run = slice(run_start, index)
                events = list(map(_new_object, repeat(SSEEvent, index - run_start)))
                any(map(_set_event_data, events, _event_data(first_data[run], more_data[run])))
                any(map(_set_event_type, events, _event_types(types[run])))
                any(map(_set_event_id, events, self._event_ids(ids[run])))
                out += events
            if index < len(others):
                self._parse_lines(others[index], out)
            run_start = index + 1
        return text[end:]

    def _event_ids(self, ids: list[str | None]) -> Iterable[str]:
        # An event without an id line carries the last event ID on; an id line sets it.
        missing = ids.count(None)
        if missing == len(ids):
            return repeat(self._last_event_id, missing)
        event_ids = cast("list[str]", ids)
        if missing:
            event_ids = []
            last_event_id = self._last_event_id
            for event_id in ids:
                if event_id is not None:
                    last_event_id = event_id
                event_ids.append(last_event_id)
        self._last_event_id = self._id_buffer = event_ids[-1]
        for event_id in reversed(ids):
            # The most recent id that a header can carry (nearly always the last one).
            if event_id is not None and is_header_safe(event_id):
                self._resume_id = event_id
                break
        return event_ids

    def _parse_lines(self, text: str, out: list[SSEEvent | SSEComment]) -> None:
        # The general path: any text, any parser state.
        lines = text.split("\n")
        rest = lines.pop()
        if not lines:
            self._extend_line(rest)
            return
        new_size = self._line_size + len(text)
        may_hold_long_line = new_size > self._max_event_size
        if self._skipping_line:
            # The rest of a line already reported as too long.
            self._skipping_line = False
            del lines[0]
        elif self._line_parts:
            self._line_parts.append(lines[0])
            lines[0] = "".join(self._line_parts)
        if may_hold_long_line:
            self._mark_too_long_lines(lines)
        self._line_parts = [rest] if rest else []
        self._line_size = len(rest)
        self._interpret(lines, new_size, out)
        self._bound_partial_line()

    def _decode(self, chunk: bytes) -> str:
        if self._undecoded:
            chunk = self._undecoded + chunk
        if self._expect_bom:
            if len(chunk) < len(BOM_UTF8) and BOM_UTF8.startswith(chunk):
                # Maybe the start of a byte order mark: wait for more bytes.
                self._undecoded = bytes(chunk)
                return ""
            self._expect_bom = False
            if chunk[:3] == BOM_UTF8:
                chunk = chunk[3:]
        # final=False keeps an incomplete UTF-8 sequence at the end for the next chunk;
        # line ends are ASCII, so decoding up to any of them is decoding the whole stream.
        text, consumed = utf_8_decode(chunk, "replace", False)
        self._undecoded = bytes(chunk[consumed:]) if consumed < len(chunk) else b""
        return text

    def _interpret(self, lines: list[str], new_size: int, out: list[SSEEvent | SSEComment]) -> None:
        # The hot path: one loop over the lines, the parser state in locals; one split and
        # one dispatch on the field name per line. The first data line of an event is kept
        # as a plain string (most events have one); further lines go to a list, joined
        # once at dispatch.
        data = self._data
        more = self._more_data
        more_at_start = more
        more_count_at_start = 0 if more is None else len(more)
        event_type = self._type
        id_buffer = self._id_buffer
        last_event_id = self._last_event_id
        resume_id = self._resume_id
        max_event_size = self._max_event_size
        # Whether an event dispatched by these lines can be over the bound at all.
        may_overflow = self._data_size + new_size > max_event_size
        default_type = DEFAULT_EVENT_TYPE
        discarded = _DISCARDED
        append = out.append
        new_object = _new_object
        set_type = _set_event_type
        set_data = _set_event_data
        set_id = _set_event_id
        for line in lines:
            if line:
                # WHATWG splits at the first colon and drops one space after it: when that
                # colon is followed by a space, as servers write it, partition(": ") is the
                # same split. Otherwise the name holds the colon: the line is split again at
                # it and goes once more through the same dispatch (checking every name for
                # a colon first would cost the common lines 4%).
                name, _, value = line.partition(": ")
                while True:
                    if name == "data":
                        if data is None:
                            data = value
                        elif more is None:
                            more = [value]
                        else:
                            more.append(value)
                    elif name == "id":
                        if "\0" not in value:
                            id_buffer = value
                    elif name == "event":
                        event_type = value
                    elif name == "retry":
                        self._retry(value)
                    elif not name:
                        comment = new_object(SSEComment)
                        _set_comment_text(comment, line[1:])
                        append(comment)
                        self._comment_seen = True
                    elif name[0] == "\n" and more is not discarded:
                        data = None
                        more = discarded
                        self._report_oversize(int(name[1:]))
                    elif ":" in name:
                        name, _, value = line.partition(":")
                        continue
                    break
            else:
                if id_buffer is not last_event_id:
                    # Only after an id line: most events take the last event ID on as is.
                    last_event_id = id_buffer
                    if is_header_safe(id_buffer):
                        resume_id = id_buffer
                if data is not None and more is not discarded:
                    if more is not None:
                        data = "\n".join([data, *more])
                    if may_overflow and len(data) > max_event_size:
                        self._report_oversize(len(data))
                    else:
                        event = new_object(SSEEvent)
                        set_type(event, event_type or default_type)
                        set_data(event, data)
                        set_id(event, last_event_id)
                        append(event)
                data = None
                more = None
                event_type = ""
        self._type = event_type
        self._id_buffer = id_buffer
        self._last_event_id = last_event_id
        self._resume_id = resume_id
        # Keep the data of the event in progress, and drop the event if it is over the bound.
        self._more_data = more
        if more is discarded:
            self._data = None
            return
        self._data = data
        if more is None:
            self._more_size = 0
        else:
            # Only the data lines these lines added are measured: linear time in all.
            if more is not more_at_start:
                self._more_size = more_count_at_start = 0
            added = more[more_count_at_start:]
            self._more_size += sum(map(len, added)) + len(added)
        # The data buffer holds one LF per line; the dispatched data has one less.
        data_size = self._data_size = self._more_size + (0 if data is None else len(data) + 1)
        if data_size - 1 > max_event_size:
            self._drop_event(data_size - 1)

    def _retry(self, value: str) -> None:
        # WHATWG: "If the field value consists of only ASCII digits".
        if self._on_retry is None or not (value.isdigit() and value.isascii()):
            return
        digits = value.lstrip("0")
        if len(digits) > _MAX_RETRY_DIGITS:
            self._on_retry(MAX_RETRY_MS)
        else:
            self._on_retry(min(int(digits or "0"), MAX_RETRY_MS))

    def _extend_line(self, text: str) -> None:
        if self._skipping_line:
            return
        self._line_parts.append(text)
        self._line_size += len(text)
        self._bound_partial_line()

    def _mark_too_long_lines(self, lines: list[str]) -> None:
        # A line never holds LF, so "\n" and a length cannot be mistaken for a line: it
        # stands for a line too long to keep (the loop reads it as a field name).
        for index, line in enumerate(lines):
            if len(line) > self._max_event_size:
                lines[index] = "\n" + str(len(line))

    def _bound_partial_line(self) -> None:
        # Keep the unfinished line within bounds: too long for any line, or a data line
        # whose value already takes the event past the bound.
        size = self._line_size
        if size > self._max_event_size:
            self._skip_line(size)
        elif self._more_data is not _DISCARDED and self._data_size + size - _DATA_PREFIX > (
            self._max_event_size
        ):
            head = self._line_head()
            if head.startswith("data:") and len(head) > _DATA_PREFIX:
                value_size = size - _DATA_PREFIX - (head[_DATA_PREFIX] == " ")
                if self._data_size + value_size > self._max_event_size:
                    self._skip_line(self._data_size + value_size)

    def _line_head(self) -> str:
        # The first characters of the unfinished line, without joining all of it.
        parts = self._line_parts
        while len(parts) > 1 and len(parts[0]) <= _DATA_PREFIX:
            parts[0:2] = [parts[0] + parts[1]]
        return parts[0][: _DATA_PREFIX + 1] if parts else ""

    def _skip_line(self, size: int) -> None:
        self._line_parts = []
        self._line_size = 0
        self._skipping_line = True
        self._drop_event(size)

    def _drop_event(self, size: int) -> None:
        if self._more_data is not _DISCARDED:
            self._data = None
            self._more_data = _DISCARDED
            self._report_oversize(size)

    def _report_oversize(self, size: int) -> None:
        if self._on_oversize is not None:
            self._on_oversize(size)
