"""SSEParser's fast path (whole events read by one regular expression) against its general path.

The fast path must change nothing but speed: every test here either states the expected
events outright or compares a parser forced onto the fast path with one held on the general
path (and with the character-by-character reference of test_sse_parser), feed by feed:
events, comments, retry and oversize calls, and the last event ID.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexd.api import SSEComment, SSEEvent, SSEParser
from plexd.api._sse import _COMPLETE_EVENT, DEFAULT_MAX_EVENT_SIZE
from test_sse_parser import BOM, Outcome, cut, reference_parse

Item = SSEEvent | SSEComment
ALWAYS = 0
NEVER = sys.maxsize


# --------------------------------------------------------------------------- helpers


def make_parser(fast_path_min_size: int, **kwargs: object) -> SSEParser:
    parser = SSEParser(**kwargs)  # type: ignore[arg-type]
    parser._fast_path_min_size = fast_path_min_size
    return parser


@dataclasses.dataclass
class Trace:
    """What each feed did, in order: the calls it made, then what it returned and the
    last event ID after it."""

    log: list[object]
    parser: SSEParser

    def items(self) -> list[Item]:
        return [item for entry in self.log if isinstance(entry, list) for item in entry]

    def calls(self, name: str) -> list[int]:
        return [entry[1] for entry in self.log if isinstance(entry, tuple) and entry[0] == name]

    def outcome(self) -> Outcome:
        retries, oversizes = self.calls("retry"), self.calls("over")
        return Outcome(
            self.items(), self.parser.last_event_id, retries, len(oversizes), self.parser.resume_id
        )


def trace(
    chunks: Iterable[bytes],
    fast_path_min_size: int,
    *,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    last_event_id: str = "",
) -> Trace:
    log: list[object] = []
    parser = make_parser(
        fast_path_min_size,
        on_retry=lambda ms: log.append(("retry", ms)),
        on_oversize=lambda size: log.append(("over", size)),
        max_event_size=max_event_size,
        last_event_id=last_event_id,
    )
    for chunk in chunks:
        log.append(parser.feed_items(chunk))
        log.append(("last_event_id", parser.last_event_id, parser.resume_id))
    return Trace(log, parser)


def fast_events(stream: bytes | Sequence[bytes], **kwargs: object) -> list[SSEEvent]:
    parser = make_parser(ALWAYS, **kwargs)
    chunks = [stream] if isinstance(stream, bytes) else stream
    return [event for chunk in chunks for event in parser.feed(chunk)]


def message(data: str, id: str = "", type: str = "message") -> SSEEvent:
    return SSEEvent(type=type, data=data, id=id)


def blocks_left_to_the_general_path(text: str) -> list[str]:
    parts = _COMPLETE_EVENT.split(text)
    step = _COMPLETE_EVENT.groups + 1
    assert parts[::step] == [""] * len(parts[::step]), "the blocks must be contiguous"
    return [block for block in parts[step - 1 :: step] if block is not None]


# --------------------------------------------------------------------------- the pattern


@pytest.mark.parametrize(
    "block",
    [
        "data: x\n\n",
        "data: \n\n",
        "id: 1\nevent: message\ndata: {}\n\n",
        "event: add\nid: 1\ndata: a\ndata: b\n\n",
        "id: \ndata: x\n\n",
        "event: \ndata: x\n\n",
        "id: 1\nid: 2\nevent: a\nevent: b\ndata: x\n\n",
        "data: a: b\x00\u2028\x85\ufffd\n\n",
        "data:  x\n\n",
    ],
)
def test_common_event_shapes_take_the_fast_path(block: str) -> None:
    assert blocks_left_to_the_general_path(block * 3) == []


@pytest.mark.parametrize(
    "block",
    [
        "\n",
        ": keep-alive\n\n",
        "data: x\n: comment\n\n",
        "retry: 10\ndata: x\n\n",
        "data:x\n\n",
        "id:1\ndata: x\n\n",
        "event:add\ndata: x\n\n",
        "id: a\x00b\ndata: x\n\n",
        "data: x\nid: 1\n\n",
        "data: x\nevent: add\n\n",
        "id: 1\n\n",
        "event: add\n\n",
        "foo: bar\ndata: x\n\n",
        "Data: x\n\n",
        "data : x\n\n",
        " data: x\n\n",
        "data\n\n",
    ],
)
def test_other_blocks_go_whole_to_the_general_path(block: str) -> None:
    text = "data: a\n\n" + block + "data: b\n\n"
    assert blocks_left_to_the_general_path(text) == [block]


# --------------------------------------------------------------------------- the rules


def test_id_persists_across_events_and_an_empty_id_resets_it() -> None:
    parser = make_parser(ALWAYS, last_event_id="0")
    stream = b"data: a\n\nid: 1\ndata: b\n\ndata: c\n\nid: \ndata: d\n\ndata: e\n\n"
    assert parser.feed(stream) == [
        message("a", id="0"),
        message("b", id="1"),
        message("c", id="1"),
        message("d", id=""),
        message("e", id=""),
    ]
    assert parser.last_event_id == ""


def test_id_with_nul_is_ignored_between_fast_events() -> None:
    parser = make_parser(ALWAYS)
    stream = b"id: 1\ndata: a\n\nid: x\x00y\ndata: b\n\ndata: c\n\n"
    assert parser.feed(stream) == [message("a", id="1"), message("b", id="1"), message("c", id="1")]
    assert parser.last_event_id == "1"


def test_the_last_id_and_event_lines_win() -> None:
    stream = b"id: 1\nevent: a\nid: 2\nevent: b\ndata: x\n\nevent: c\nevent: \ndata: y\n\n"
    assert fast_events(stream) == [message("x", id="2", type="b"), message("y", id="2")]


def test_event_types_vary_and_reset_between_events() -> None:
    stream = b"event: add\ndata: 1\n\ndata: 2\n\nevent: \ndata: 3\n\nevent: del\ndata: 4\n\n"
    assert fast_events(stream) == [
        message("1", type="add"),
        message("2"),
        message("3"),
        message("4", type="del"),
    ]


def test_data_lines_are_joined_with_line_feeds() -> None:
    stream = b"data: a\ndata: data: b\ndata: \n\ndata: \ndata: \n\ndata: one\n\n"
    assert fast_events(stream) == [message("a\ndata: b\n"), message("\n"), message("one")]


def test_crlf_and_cr_streams_give_the_same_events() -> None:
    stream = b"id: 1\nevent: add\ndata: a\ndata: b\n\ndata: c\n\n"
    expected = fast_events(stream)
    assert len(expected) == 2
    assert fast_events(stream.replace(b"\n", b"\r\n")) == expected
    assert fast_events(stream.replace(b"\n", b"\r")) == expected


def test_event_begun_in_an_earlier_chunk_is_finished_first() -> None:
    parser = make_parser(ALWAYS)
    assert parser.feed(b"id: 7\nevent: add\ndata: a") == []
    assert parser.feed(b"b\ndata: c\n\ndata: d\n\n") == [
        message("ab\nc", id="7", type="add"),
        message("d", id="7"),
    ]


def test_id_line_waiting_for_its_blank_line_applies_to_the_next_event() -> None:
    parser = make_parser(ALWAYS, last_event_id="old")
    assert parser.feed(b"data: a\n\nid: 5\n") == [message("a", id="old")]
    assert parser.last_event_id == "old"
    assert parser.feed(b"data: b\n\ndata: c\n\n") == [message("b", id="5"), message("c", id="5")]
    assert parser.last_event_id == "5"


def test_comments_and_retry_keep_their_place_among_fast_events() -> None:
    calls: list[object] = []
    parser = make_parser(ALWAYS, on_retry=calls.append)
    stream = b"data: a\n\n: ping\n\nretry: 50\ndata: b\n\n:x\ndata: c\n\ndata: d\n\n"
    assert parser.feed_items(stream) == [
        message("a"),
        SSEComment(" ping"),
        message("b"),
        SSEComment("x"),
        message("c"),
        message("d"),
    ]
    assert calls == [50]
    assert parser.feed(b": only a comment\n\ndata: e\n\n") == [message("e")]


def test_reset_between_feeds_discards_the_partial_event_and_keeps_the_id() -> None:
    parser = make_parser(ALWAYS)
    assert parser.feed(b"id: 1\ndata: a\n\nid: 2\ndata: cut") == [message("a", id="1")]
    parser.reset()
    assert parser.feed(b"data: b\n\ndata: c\n\n") == [message("b", id="1"), message("c", id="1")]


def test_events_over_the_bound_are_dropped_when_the_chunk_is_longer_than_the_bound() -> None:
    oversizes: list[int] = []
    parser = make_parser(ALWAYS, max_event_size=20, on_oversize=oversizes.append)
    stream = b"data: short\n\ndata: " + b"x" * 30 + b"\n\nid: 3\ndata: ok\n\n"
    assert parser.feed(stream) == [message("short"), message("ok", id="3")]
    assert oversizes == [len("data: ") + 30]


def test_event_at_the_bound_in_a_chunk_within_the_bound_is_dispatched() -> None:
    stream = b"data: 12345\ndata: 67\n\n"
    assert fast_events(stream, max_event_size=len(stream)) == [message("12345\n67")]
    assert fast_events(stream, max_event_size=8) == []


# --------------------------------------------------------------------------- equivalence

values = st.sampled_from(
    ["", "x", "42", " lead", "a: b", "data: in", "\x00", "\u00e9\u20ac", "\U0001f600", "{}"]
)


# The header lines of an event; an id with a control character leaves the resume id as it was.
HEADER_LINES = [
    *("id: 7", "id: 12", "id: ", "id: a\x00b", "id: a\x0bb", "id: \x7f"),
    *("event: add", "event: "),
]


@st.composite
def event_blocks(draw: st.DrawFn) -> str:
    """An event as servers write it: id and event lines, data lines, a blank line; now
    and then with the id after the data, an empty or NUL id, or no data at all."""
    header = draw(
        st.lists(
            st.sampled_from(HEADER_LINES),
            max_size=3,
        )
    )
    data = [f"data: {draw(values)}" for _ in range(draw(st.integers(0, 3)))]
    trailer = draw(st.sampled_from([[], [], [], ["id: 9"], ["event: late"]]))
    return "".join(line + "\n" for line in header + data + trailer) + "\n"


odd_blocks = st.sampled_from(
    [
        ": keep-alive\n",
        ":\n",
        "retry: 250\n",
        "retry: x\n",
        "\n",
        "data:tight\n",
        "id:3\n",
        "foo: bar\n",
        "data\n",
        "data: " + "y" * 40 + "\n",
    ]
)


@st.composite
def realistic_streams(draw: st.DrawFn) -> bytes:
    blocks = draw(st.lists(st.one_of(event_blocks(), event_blocks(), odd_blocks), max_size=25))
    text = "".join(blocks) + draw(st.sampled_from(["", "data: unfinished", "id: 4\n"]))
    line_end = draw(st.sampled_from(["\n", "\n", "\r\n", "\r"]))
    stream = text.replace("\n", line_end).encode()
    if draw(st.booleans()):
        stream = BOM + stream
    if draw(st.integers(0, 9)) == 0:
        stream += b"data: \xff\xe2\x82\n\n"
    return stream


@st.composite
def streams_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    stream = draw(realistic_streams())
    points = draw(st.lists(st.integers(0, len(stream)), max_size=6))
    return stream, points


bounds = st.sampled_from([DEFAULT_MAX_EVENT_SIZE, 16, 40, 90, 300])


@settings(max_examples=300, deadline=None)
@given(streams_and_cuts(), bounds, st.sampled_from(["", "prev"]))
def test_fast_path_agrees_with_the_general_path_feed_by_feed(
    case: tuple[bytes, list[int]], max_event_size: int, last_event_id: str
) -> None:
    stream, points = case
    chunks = cut(stream, points)
    fast = trace(chunks, ALWAYS, max_event_size=max_event_size, last_event_id=last_event_id)
    general = trace(chunks, NEVER, max_event_size=max_event_size, last_event_id=last_event_id)
    assert fast.log == general.log


@settings(max_examples=200, deadline=None)
@given(streams_and_cuts(), bounds)
def test_fast_path_agrees_with_the_reference(
    case: tuple[bytes, list[int]], max_event_size: int
) -> None:
    stream, points = case
    fast = trace(cut(stream, points), ALWAYS, max_event_size=max_event_size)
    assert fast.outcome() == reference_parse(stream, max_event_size=max_event_size)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(realistic_streams(), min_size=20, max_size=40).map(b"".join),
    st.lists(st.integers(1, 64 * 1024), min_size=1, max_size=8),
)
def test_default_fast_path_agrees_with_the_general_path_on_long_streams(
    stream: bytes, sizes: list[int]
) -> None:
    chunks = []
    position = 0
    for size in sizes * (len(stream) // sum(sizes) + 1):
        chunks.append(stream[position : position + size])
        position += size
    fast = trace(chunks, SSEParser._fast_path_min_size)
    assert fast.log == trace(chunks, NEVER).log


def test_benchmark_shaped_stream_in_64_kib_chunks() -> None:
    body = "".join(
        f'id: {i}\nevent: message\ndata: {{"n": {i}, "pad": "{"p" * (i % 300)}"}}\n\n'
        for i in range(3000)
    ).encode()
    chunks = [body[i : i + 64 * 1024] for i in range(0, len(body), 64 * 1024)]
    fast = trace(chunks, SSEParser._fast_path_min_size)
    assert fast.log == trace(chunks, NEVER).log
    events = fast.items()
    assert len(events) == 3000
    assert events[-1] == message(f'{{"n": 2999, "pad": "{"p" * 299}"}}', id="2999")
