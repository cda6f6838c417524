"""SSEParser against the WHATWG rules ("9.2.6 Interpreting an event stream").

Each rule has its own test; the hypothesis tests compare the parser with `reference_parse`,
a slow character-by-character transcription of the spec written here, and check that the
way a stream is cut into chunks never changes what comes out.
"""

from __future__ import annotations

import codecs
import dataclasses
import itertools
import tracemalloc
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plexd.api import SSEComment, SSEEvent, SSEParser
from plexd.api._resume import MAX_RESUME_ID_BYTES, is_header_safe
from plexd.api._sse import MAX_RETRY_MS

BOM = b"\xef\xbb\xbf"
Item = SSEEvent | SSEComment


# --------------------------------------------------------------------------- helpers


@dataclasses.dataclass
class Outcome:
    """Everything a stream produces: items in order, the final last event ID, the
    reported retry values, the number of oversize reports and the resume id."""

    items: list[Item]
    last_event_id: str
    retries: list[int]
    oversize_reports: int
    resume_id: str


def sendable(value: str) -> bool:
    """The header rule, read literally: no control character but TAB, no surrogate, and
    at most 4096 bytes of UTF-8."""
    for char in value:
        code = ord(char)
        if (code < 0x20 and char != "\t") or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            return False
    return len(value.encode("utf-8", "surrogatepass")) <= 4096


def run_chunks(
    chunks: Iterable[bytes], *, max_event_size: int = 16 * 1024 * 1024, last_event_id: str = ""
) -> Outcome:
    retries: list[int] = []
    oversizes: list[int] = []
    parser = SSEParser(
        on_retry=retries.append,
        max_event_size=max_event_size,
        on_oversize=oversizes.append,
        last_event_id=last_event_id,
    )
    items: list[Item] = []
    for chunk in chunks:
        items.extend(parser.feed_items(chunk))
    return Outcome(items, parser.last_event_id, retries, len(oversizes), parser.resume_id)


def cut(stream: bytes, points: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def one_byte_chunks(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


def events(stream: bytes | Sequence[bytes], **kwargs: object) -> list[SSEEvent]:
    parser = SSEParser(**kwargs)  # type: ignore[arg-type]
    chunks = [stream] if isinstance(stream, bytes) else stream
    found: list[SSEEvent] = []
    for chunk in chunks:
        found.extend(parser.feed(chunk))
    return found


def message(data: str, id: str = "", type: str = "message") -> SSEEvent:
    return SSEEvent(type=type, data=data, id=id)


def buffer_sizes(parser: SSEParser) -> dict[str, int]:
    """What the parser holds between feeds, in characters or bytes, read from its state."""
    data, more = parser._data, parser._more_data or ()
    return {
        "undecoded": len(parser._undecoded),
        "line": sum(map(len, parser._line_parts)),
        "data": (0 if data is None else len(data) + 1) + sum(map(len, more)) + len(more),
        "type": len(parser._type),
        "id_buffer": len(parser._id_buffer),
    }


# --------------------------------------------------------------------------- reference


def _retry_value(digits: str) -> int:
    significant = digits.lstrip("0")
    return MAX_RETRY_MS if len(significant) > 19 else min(int(digits), MAX_RETRY_MS)


def reference_parse(
    stream: bytes, *, max_event_size: int = 16 * 1024 * 1024, last_event_id: str = ""
) -> Outcome:
    """The spec, read literally, one character at a time (plus the documented bound)."""
    # "One leading U+FEFF BYTE ORDER MARK character must be ignored if any are present."
    if stream.startswith(BOM):
        stream = stream[3:]
    elif BOM.startswith(stream):
        stream = b""
    # UTF-8 decode; an incomplete sequence at the very end is bytes still to come.
    text, _ = codecs.utf_8_decode(stream, "replace", False)

    lines: list[str] = []
    current: list[str] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char == "\r":
            lines.append("".join(current))
            current = []
            if position + 1 < len(text) and text[position + 1] == "\n":
                position += 1
        elif char == "\n":
            lines.append("".join(current))
            current = []
        else:
            current.append(char)
        position += 1
    unfinished_line = "".join(current)

    items: list[Item] = []
    retries: list[int] = []
    oversize_reports = 0
    data_buffer = ""
    type_buffer = ""
    id_buffer = last_event_id
    resume_id = last_event_id if sendable(last_event_id) else ""
    dropped = False
    for line in lines:
        if len(line) > max_event_size:
            if not dropped:
                dropped = True
                oversize_reports += 1
            continue
        if line == "":
            last_event_id = id_buffer
            if sendable(last_event_id):
                resume_id = last_event_id
            if data_buffer and not dropped:
                data = data_buffer[:-1] if data_buffer.endswith("\n") else data_buffer
                if len(data) > max_event_size:
                    oversize_reports += 1
                else:
                    items.append(SSEEvent(type=type_buffer or "message", data=data, id=id_buffer))
            data_buffer = ""
            type_buffer = ""
            dropped = False
            continue
        if line.startswith(":"):
            items.append(SSEComment(text=line[1:]))
            continue
        if ":" in line:
            field, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            field, value = line, ""
        if field == "event":
            type_buffer = value
        elif field == "data":
            if not dropped:
                data_buffer += value + "\n"
        elif field == "id":
            if "\0" not in value:
                id_buffer = value
        elif field == "retry" and value and all(c in "0123456789" for c in value):
            retries.append(_retry_value(value))

    # The unfinished event is never dispatched, but its bound is enforced as it arrives.
    if not dropped:
        if len(data_buffer) - 1 > max_event_size or len(unfinished_line) > max_event_size:
            oversize_reports += 1
        elif unfinished_line.startswith("data:") and len(unfinished_line) > 5:
            value = unfinished_line[6:] if unfinished_line[5] == " " else unfinished_line[5:]
            if len(data_buffer) + len(value) > max_event_size:
                oversize_reports += 1
    return Outcome(items, last_event_id, retries, oversize_reports, resume_id)


# --------------------------------------------------------------------------- the API


def test_events_are_frozen_dataclasses_with_value_equality() -> None:
    event = SSEParser().feed(b"event: add\ndata: x\nid: 7\n\n")[0]
    assert dataclasses.is_dataclass(event)
    assert event == SSEEvent(type="add", data="x", id="7")
    assert hash(event) == hash(SSEEvent(type="add", data="x", id="7"))
    assert repr(event) == "SSEEvent(type='add', data='x', id='7')"
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = "y"  # type: ignore[misc]


def test_comments_are_frozen_dataclasses() -> None:
    comment = SSEParser().feed_items(b": hi\n")[0]
    assert dataclasses.is_dataclass(comment)
    assert comment == SSEComment(text=" hi")
    assert repr(comment) == "SSEComment(text=' hi')"
    with pytest.raises(dataclasses.FrozenInstanceError):
        comment.text = "x"  # type: ignore[misc]


def test_max_event_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_event_size"):
        SSEParser(max_event_size=0)


def test_last_event_id_is_read_only() -> None:
    parser = SSEParser()
    with pytest.raises(AttributeError):
        parser.last_event_id = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- fields


def test_data_line_makes_a_message_event() -> None:
    assert events(b"data: hello\n\n") == [message("hello")]


def test_multiple_data_lines_are_joined_with_line_feeds() -> None:
    assert events(b"data: a\ndata: b\ndata:c\n\n") == [message("a\nb\nc")]


def test_only_one_leading_space_is_removed_from_the_value() -> None:
    assert events(b"data:  two spaces\n\n") == [message(" two spaces")]
    assert events(b"data:no space\n\n") == [message("no space")]
    assert events(b"data:\tx\n\n") == [message("\tx")]


def test_value_is_split_at_the_first_colon() -> None:
    assert events(b"data: a: b:c\n\n") == [message("a: b:c")]


def test_empty_data_line_dispatches_an_event_with_empty_data() -> None:
    assert events(b"data\n\n") == [message("")]
    assert events(b"data:\n\n") == [message("")]
    assert events(b"data\ndata\n\n") == [message("\n")]


def test_only_one_trailing_line_feed_is_removed() -> None:
    assert events(b"data: a\ndata:\n\n") == [message("a\n")]


def test_line_without_colon_is_a_field_with_empty_value() -> None:
    parser = SSEParser(last_event_id="5")
    assert parser.feed(b"data: x\nid\n\n") == [message("x", id="")]
    assert parser.last_event_id == ""


def test_event_field_sets_the_type() -> None:
    assert events(b"event: add\ndata: x\n\n") == [message("x", type="add")]
    assert events(b"event:add\ndata: x\n\n") == [message("x", type="add")]


def test_empty_event_field_means_message() -> None:
    assert events(b"event: add\nevent:\ndata: x\n\n") == [message("x")]
    assert events(b"event\ndata: x\n\n") == [message("x")]


def test_type_is_reset_after_each_event() -> None:
    assert events(b"event: add\ndata: 1\n\ndata: 2\n\n") == [
        message("1", type="add"),
        message("2"),
    ]


def test_type_is_reset_by_a_blank_line_without_data() -> None:
    assert events(b"event: add\n\ndata: x\n\n") == [message("x")]


def test_field_names_are_case_sensitive() -> None:
    assert events(b"Data: x\nDATA: y\n\n") == []
    assert events(b"Event: add\ndata: x\n\n") == [message("x")]


def test_space_before_the_colon_makes_another_field() -> None:
    assert events(b"data : x\n\n") == []


def test_unknown_fields_are_ignored() -> None:
    assert events(b"foo: bar\ndata: x\nbaz\n\n") == [message("x")]


def test_blank_line_without_data_dispatches_nothing() -> None:
    assert events(b"\n\n\nevent: x\n\n") == []


def test_unterminated_event_is_never_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\n") == []
    assert parser.feed(b"data: y") == []


def test_id_is_carried_by_the_event_and_persists() -> None:
    assert events(b"id: 1\ndata: a\n\ndata: b\n\n") == [message("a", id="1"), message("b", id="1")]


def test_id_set_after_data_still_applies_to_that_event() -> None:
    assert events(b"data: a\nid: 9\n\n") == [message("a", id="9")]


def test_empty_id_resets_the_last_event_id() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 1\ndata: a\n\nid\ndata: b\n\n") == [
        message("a", id="1"),
        message("b", id=""),
    ]
    assert parser.last_event_id == ""
    parser.feed(b"id: 2\n\nid:\n\n")
    assert parser.last_event_id == ""


def test_id_with_nul_is_ignored() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 1\n\nid: a\x00b\ndata: x\n\nid:\x00\n\n") == [message("x", id="1")]
    assert parser.last_event_id == "1"


def test_id_is_kept_verbatim() -> None:
    assert events(b"id:  spaced \xc3\xa9\ndata: x\n\n") == [message("x", id=" spaced \u00e9")]


def test_last_event_id_is_set_by_a_blank_line_even_without_data() -> None:
    parser = SSEParser()
    parser.feed(b"id: 42\n")
    assert parser.last_event_id == ""
    assert parser.feed(b"\n") == []
    assert parser.last_event_id == "42"


def test_initial_last_event_id_applies_until_the_server_sends_one() -> None:
    parser = SSEParser(last_event_id="17")
    assert parser.last_event_id == "17"
    assert parser.feed(b"data: x\n\n") == [message("x", id="17")]
    assert parser.feed(b"id: 18\ndata: y\n\n") == [message("y", id="18")]


def test_retry_with_digits_is_reported_when_the_line_is_read() -> None:
    retries: list[int] = []
    parser = SSEParser(on_retry=retries.append)
    parser.feed(b"retry: 1500\n")
    assert retries == [1500]
    parser.feed(b"retry:0\nretry: 007\n")
    assert retries == [1500, 0, 7]


@pytest.mark.parametrize(
    "line",
    [b"retry: 1.5", b"retry: -1", b"retry: 12a", b"retry: ", b"retry", b"retry: +5",
     b"retry:  5", b"retry: 5 ", "retry: \u0661\u0662".encode(), b"Retry: 5"],
)  # fmt: skip
def test_retry_that_is_not_only_ascii_digits_is_ignored(line: bytes) -> None:
    retries: list[int] = []
    SSEParser(on_retry=retries.append).feed(line + b"\n")
    assert retries == []


def test_huge_retry_is_capped_not_an_error() -> None:
    retries: list[int] = []
    SSEParser(on_retry=retries.append).feed(
        b"retry: " + b"9" * 5000 + b"\nretry: 000000000000000000000000012\n"
    )
    assert retries == [MAX_RETRY_MS, 12]


def test_retry_with_thousands_of_leading_zeros_is_read() -> None:
    retries: list[int] = []
    SSEParser(on_retry=retries.append).feed(b"retry: " + b"0" * 5000 + b"25\nretry: 0000\n")
    assert retries == [25, 0]


def test_retry_does_not_dispatch_or_touch_the_event() -> None:
    retries: list[int] = []
    parser = SSEParser(on_retry=retries.append)
    assert parser.feed(b"data: a\nretry: 10\ndata: b\n\n") == [message("a\nb")]
    assert retries == [10]


def test_retry_without_callback_is_fine() -> None:
    assert events(b"retry: 10\ndata: x\n\n") == [message("x")]


# --------------------------------------------------------------------------- comments


def test_comment_lines_are_not_events() -> None:
    assert events(b": hello\n:\ndata: x\n: bye\n\n") == [message("x")]


def test_feed_items_reports_comments_in_stream_order() -> None:
    parser = SSEParser()
    items = parser.feed_items(b": one\ndata: a\n\n:two\ndata: b\n: three\n\n:\n")
    assert items == [
        SSEComment(" one"),
        message("a"),
        SSEComment("two"),
        SSEComment(" three"),
        message("b"),
        SSEComment(""),
    ]


def test_comment_text_is_everything_after_the_first_colon() -> None:
    assert SSEParser().feed_items(b":  a: b :\n") == [SSEComment("  a: b :")]


def test_feed_drops_comments_but_keeps_event_order() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n\n: c\ndata: b\n\n") == [message("a"), message("b")]
    assert parser.feed(b"data: c\n\n") == [message("c")]


def test_comment_is_reported_as_soon_as_its_line_ends() -> None:
    parser = SSEParser()
    assert parser.feed_items(b": keep") == []
    assert parser.feed_items(b"alive\r") == [SSEComment(" keepalive")]


# --------------------------------------------------------------------------- line ends


@pytest.mark.parametrize("end", [b"\n", b"\r", b"\r\n"])
def test_every_line_end_works(end: bytes) -> None:
    stream = b"id: 1" + end + b"data: a" + end + b"data: b" + end + end
    assert events(stream) == [message("a\nb", id="1")]


def test_mixed_line_ends() -> None:
    assert events(b"data: a\r\ndata: b\rdata: c\n\r\n") == [message("a\nb\nc")]


def test_cr_cr_is_two_line_ends() -> None:
    assert events(b"data: a\r\rdata: b\r\r") == [message("a"), message("b")]


def test_cr_lf_cr_lf_ends_an_event() -> None:
    assert events(b"data: a\r\n\r\n") == [message("a")]


def test_lf_cr_is_two_line_ends() -> None:
    assert events(b"data: a\n\r") == [message("a")]


@pytest.mark.parametrize(
    "char", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
)
def test_only_cr_and_lf_end_lines(char: str) -> None:
    stream = f"data: a{char}b\n\n".encode()
    assert events(stream) == [message(f"a{char}b")]


def test_event_comes_out_of_the_feed_that_completed_it() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\n") == [message("a")]
    assert parser.feed(b"data: b\r") == []
    assert parser.feed(b"\r") == [message("b")]
    assert parser.feed(b"data: c\r\n\r") == [message("c")]


def test_lf_after_a_cr_that_ended_the_previous_chunk_is_skipped() -> None:
    parser = SSEParser()
    parser.feed(b"id: 7\r")
    # Were the LF a line end of its own, it would be a blank line committing the id.
    parser.feed(b"\n")
    assert parser.last_event_id == ""
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\n\r\n") == [message("x", id="7")]


def test_cr_at_end_of_chunk_followed_by_other_text() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"data: b\r\r") == [message("a\nb")]


def test_crlf_split_with_empty_chunks_between() -> None:
    assert events([b"data: a\r", b"", b"", b"\n", b"\r", b"", b"\n"]) == [message("a")]


def test_cr_then_incomplete_character_then_lf_is_not_crlf() -> None:
    # The bytes after the CR decode to U+FFFD once the LF shows they were incomplete:
    # a line of its own (an unknown field), ended by that LF.
    assert events([b"data: a\r", b"\xe2\x82", b"\n\n"]) == [message("a")]
    assert events([b"data: a\r", b"\xe2\x82", b"\ndata: b\n\n"]) == [message("a\nb")]


# --------------------------------------------------------------------------- decoding, BOM


def test_leading_bom_is_stripped() -> None:
    assert events(BOM + b"data: x\n\n") == [message("x")]


def test_bom_split_across_chunks_is_stripped() -> None:
    assert events([b"\xef", b"\xbb", b"\xbfdata: x\n\n"]) == [message("x")]
    assert events([b"\xef\xbb", b"\xbf", b"data: x\n\n"]) == [message("x")]
    assert events(one_byte_chunks(BOM + b"data: x\n\n")) == [message("x")]


def test_second_bom_is_data() -> None:
    # The second BOM becomes part of the field name, so no "data" field is seen.
    assert events(BOM + BOM + b"data: x\n\n") == []
    assert events(BOM + b"data: " + BOM + b"x\n\n") == [message("\ufeffx")]
    assert events(b"data: x\n\n" + BOM + b"data: y\n\n") == [message("x")]


def test_bom_later_in_the_first_chunk_is_data() -> None:
    assert events(b"data: " + BOM + b"\n\n") == [message("\ufeff")]


def test_partial_bom_followed_by_other_bytes_decodes_as_replacement() -> None:
    # EF BB is a maximal incomplete subpart: one U+FFFD, as in WHATWG's decoder.
    assert events(b"\xef\xbb\ndata: x\n\n") == [message("x")]
    assert events(b"data: \xef\xbb\n\n") == [message("\ufffd")]
    assert events([b"\xef", b"\xbbx", b"\n", b"data: y\n\n"]) == [message("y")]
    # The byte after EF BB is kept: here it makes the line an unknown field.
    assert events(b"\xef\xbb:data: x\n\n") == []
    assert events([b"\xef", b"\xbb:data: x\n\n"]) == []


def test_invalid_utf8_becomes_replacement_characters() -> None:
    stream = b"data: a\xffb\xc3(\xed\xa0\x80\xf0\x9f\x98\n\n"
    expected = stream[6:-2].decode("utf-8", "replace")
    assert events(stream) == [message(expected)]
    assert "\ufffd" in expected


def test_multibyte_characters_fed_one_byte_at_a_time() -> None:
    text = "data: \u00e9\u20ac\U0001f600 \u65e5\u672c\n\n"
    assert events(one_byte_chunks(text.encode())) == [
        message("\u00e9\u20ac\U0001f600 \u65e5\u672c")
    ]


def test_truncated_character_at_end_of_line_is_one_replacement() -> None:
    assert events([b"data: \xf0\x9f", b"\x98\n\n"]) == [message("\ufffd")]


def test_nul_is_kept_in_data() -> None:
    assert events(b"data: a\x00b\n\n") == [message("a\x00b")]


def test_accepts_bytearray_and_memoryview() -> None:
    parser = SSEParser()
    assert parser.feed(bytearray(b"data: a\n\n")) == [message("a")]
    assert parser.feed(memoryview(b"data: \xe2\x82")) == []  # type: ignore[arg-type]
    assert parser.feed(memoryview(b"\xac\n\n")) == [message("\u20ac")]  # type: ignore[arg-type]


# --------------------------------------------------------------------------- chunking

STREAM = (
    BOM
    + b": hello\r\n"
    + b'id: 1\nevent: add\ndata: {"k": "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"}\n\n'
    + b"data: two\rdata: lines\r\r"
    + b"retry: 250\r\nid\r\n\r\n"
    + b"event: x\ndata\n\n"
    + b"id: 9\r\ndata: last\r\n\r\n"
    + b"data: unterminated"
)
STREAM_EVENTS = [
    message('{"k": "\u00e9\u20ac\U0001f600"}', id="1", type="add"),
    message("two\nlines", id="1"),
    message("", id="", type="x"),
    message("last", id="9"),
]


def test_whole_stream() -> None:
    outcome = run_chunks([STREAM])
    assert [i for i in outcome.items if isinstance(i, SSEEvent)] == STREAM_EVENTS
    assert outcome.items[0] == SSEComment(" hello")
    assert outcome.retries == [250]
    assert outcome.last_event_id == "9"


def test_whole_stream_one_byte_per_chunk() -> None:
    assert run_chunks(one_byte_chunks(STREAM)) == run_chunks([STREAM])


@pytest.mark.parametrize("size", [2, 3, 5, 7, 64])
def test_whole_stream_in_fixed_size_chunks(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert run_chunks(chunks) == run_chunks([STREAM])


def test_every_single_cut_point() -> None:
    whole = run_chunks([STREAM])
    for point in range(len(STREAM) + 1):
        assert run_chunks(cut(STREAM, [point])) == whole, point


def test_every_pair_of_cut_points_in_a_crlf_region() -> None:
    stream = b"data: a\r\n\r\ndata: b\r\r\n\n\r\n"
    whole = run_chunks([stream])
    assert len(whole.items) == 2
    for first in range(len(stream) + 1):
        for second in range(first, len(stream) + 1):
            assert run_chunks(cut(stream, [first, second])) == whole


def test_many_events_in_one_feed() -> None:
    stream = b"".join(b"id: %d\nevent: e\ndata: %d\n\n" % (i, i) for i in range(1000))
    found = SSEParser().feed(stream)
    assert found == [message(str(i), id=str(i), type="e") for i in range(1000)]


def test_long_line_split_in_many_chunks() -> None:
    value = "x" * 100_000
    chunks = one_byte_chunks(b"data: ")
    chunks += [value.encode()[i : i + 1000] for i in range(0, 100_000, 1000)]
    chunks += [b"\n", b"\n"]
    assert events(chunks) == [message(value)]


# --------------------------------------------------------------------------- oversize


def oversize_parser(max_event_size: int) -> tuple[SSEParser, list[int], list[int]]:
    retries: list[int] = []
    oversizes: list[int] = []
    parser = SSEParser(
        on_retry=retries.append, max_event_size=max_event_size, on_oversize=oversizes.append
    )
    return parser, retries, oversizes


def test_event_over_the_bound_is_dropped_and_the_next_is_fine() -> None:
    parser, _, oversizes = oversize_parser(10)
    found = parser.feed(b"data: 12345\ndata: 67890\n\ndata: ok\n\n")
    assert found == [message("ok")]
    assert oversizes == [11]


def test_event_over_the_bound_in_one_feed_is_dropped() -> None:
    parser, _, oversizes = oversize_parser(10)
    assert parser.feed(b"data: 123\ndata: 456\ndata: 789\n\ndata: ok\n\n") == [message("ok")]
    assert oversizes == [len("123\n456\n789")]


def test_event_completed_over_the_bound_by_a_small_feed_is_dropped() -> None:
    parser, _, oversizes = oversize_parser(10)
    assert parser.feed(b"data: 1234\ndata: 1234\n") == []
    assert oversizes == []
    assert parser.feed(b"data: 12\n\n") == []
    assert oversizes == [len("1234\n1234\n12")]


def test_event_at_the_bound_is_dispatched() -> None:
    parser, _, oversizes = oversize_parser(10)
    assert parser.feed(b"data: 123\ndata: 456\ndata: 78\n\n") == [message("123\n456\n78")]
    assert oversizes == []


def test_the_line_bound_counts_the_whole_line() -> None:
    parser, _, oversizes = oversize_parser(10)
    assert parser.feed(b"data: 1234\n\ndata: 12345\n\n") == [message("1234")]
    assert oversizes == [len("data: 12345")]


def test_event_growing_over_the_bound_across_chunks_is_dropped() -> None:
    parser, retries, oversizes = oversize_parser(20)
    chunks = [
        b"id: 1\ndata: 0123456789\n",
        b"data: 0123456789\n",
        b"retry: 5\nid: 2\n",
        b"data: x\n",
    ]
    for chunk in chunks:
        assert parser.feed(chunk) == []
    assert oversizes == [21]
    assert buffer_sizes(parser)["data"] == 0
    assert parser.feed(b"\n") == []
    # id and retry of the dropped event were processed.
    assert retries == [5]
    assert parser.last_event_id == "2"
    assert parser.feed(b"data: next\n\n") == [message("next", id="2")]
    assert oversizes == [21]


def test_oversize_is_reported_once_per_event() -> None:
    parser, _, oversizes = oversize_parser(10)
    for _ in range(5):
        parser.feed(b"data: 123\n")
    parser.feed(b"data: " + b"y" * 50 + b"\n\n")
    assert oversizes == [len("123\n123\n123")]
    parser.feed(b"data: " + b"z" * 30 + b"\n\ndata: ok\n\n")
    assert oversizes == [11, len("data: ") + 30]


def test_line_over_the_bound_is_skipped_and_drops_its_event() -> None:
    parser, retries, oversizes = oversize_parser(10)
    found = parser.feed(
        b"retry: 7\nid: 3\ndata: a\n: this comment is too long\ndata: b\n\ndata: c\n\n"
    )
    assert found == [message("c", id="3")]
    assert oversizes == [len(": this comment is too long")]
    assert retries == [7]


def test_overlong_id_line_does_not_change_the_last_event_id() -> None:
    parser, _, oversizes = oversize_parser(10)
    parser.feed(b"id: 1\n\nid: 12345678901\ndata: x\n\n")
    assert parser.last_event_id == "1"
    assert oversizes == [len("id: 12345678901")]
    assert parser.feed(b"data: y\n\n") == [message("y", id="1")]


def test_overlong_line_fed_in_small_chunks_is_not_kept() -> None:
    parser, _, oversizes = oversize_parser(1000)
    parser.feed(b"id: 5\ndata: ")
    for _ in range(100):
        parser.feed(b"x" * 100)
        sizes = buffer_sizes(parser)
        assert sizes["line"] + sizes["data"] <= 1000 + 1
    assert len(oversizes) == 1
    assert parser.feed(b"\n\ndata: fine\n\n") == [message("fine", id="5")]


def test_id_before_an_overlong_data_line_still_counts() -> None:
    parser, _, oversizes = oversize_parser(50)
    parser.feed(b"id: 5\n")
    for _ in range(10):
        parser.feed(b"data: " + b"x" * 20)
    parser.feed(b"\n\n")
    assert len(oversizes) == 1
    assert parser.last_event_id == "5"


def test_overlong_comment_is_not_reported() -> None:
    parser, _, oversizes = oversize_parser(5)
    assert parser.feed_items(b": 123456\n\n: ok\n") == [SSEComment(" ok")]
    assert len(oversizes) == 1


def test_data_line_that_takes_the_event_over_the_bound_is_dropped_before_it_ends() -> None:
    parser, _, oversizes = oversize_parser(12)
    parser.feed(b"data: 12345\ndata: 1234\n")
    assert oversizes == []
    # 11 characters of data so far; this line's value makes 13 before its end is seen.
    parser.feed(b"data: 12")
    assert oversizes == [13]
    assert buffer_sizes(parser)["line"] == buffer_sizes(parser)["data"] == 0
    assert parser.feed(b"3\n\ndata: ok\n\n") == [message("ok")]
    assert oversizes == [13]


def test_oversize_without_callback_is_fine() -> None:
    parser = SSEParser(max_event_size=8)
    assert parser.feed(b"data: 12345\n\ndata: 1\n\n") == [message("1")]


def test_sixteen_mebibyte_line_fed_in_kibibytes_is_dropped_with_bounded_memory() -> None:
    parser, _, oversizes = oversize_parser(1024 * 1024)
    block = b"x" * 1024
    tracemalloc.start()
    try:
        parser.feed(b"data: ")
        for _ in range(2 * 1024):
            parser.feed(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert max(buffer_sizes(parser).values()) <= 1024 * 1024 + 1
    # Measured from outside too: never much more than the 1 MiB bound held at once.
    assert peak < 1.5 * 1024 * 1024
    assert parser.feed(b"\n\ndata: after\n\n") == [message("after")]
    assert len(oversizes) == 1


# --------------------------------------------------------------------------- reset


def test_reset_discards_the_partial_event_and_line_and_keeps_the_last_event_id() -> None:
    parser = SSEParser()
    parser.feed(b"id: 1\ndata: a\n\n")
    parser.feed(b"id: 2\nevent: e\ndata: partial\ndata: cut")
    parser.reset()
    assert parser.last_event_id == "1"
    # Neither the uncommitted id 2, nor the type, nor the data survive.
    assert parser.feed(b"data: b\n\n") == [message("b", id="1")]


def test_reset_expects_a_bom_again() -> None:
    parser = SSEParser()
    parser.feed(BOM + b"data: a\n\n")
    parser.reset()
    assert parser.feed(BOM + b"data: b\n\n") == [message("b")]
    parser.feed(b"\xef\xbb")
    parser.reset()
    assert parser.feed(b"data: c\n\n") == [message("c")]


def test_reset_forgets_a_pending_cr_and_incomplete_bytes() -> None:
    parser = SSEParser()
    parser.feed(b"id: 4\r")
    parser.reset()
    parser.feed(b"\n")  # a blank line on the new connection: commits nothing new
    assert parser.last_event_id == ""
    parser.feed(b"data: \xe2\x82")
    parser.reset()
    assert parser.feed(b"data: x\n\n") == [message("x")]


def test_reset_ends_the_oversize_state() -> None:
    parser, _, oversizes = oversize_parser(10)
    parser.feed(b"data: " + b"x" * 20)
    parser.reset()
    assert parser.feed(b"data: ok\n\n") == [message("ok")]
    assert len(oversizes) == 1


# --------------------------------------------------------------------------- properties

ALPHABET = [
    b":", b" ", b"\r", b"\n", b"\r\n", b"\n\n", b"d", b"a", b"t", b"i", b"e", b"x", b"1", b"0",
    b"data", b"id", b"event", b"retry", b"data:", b"data: ", b"id: ", b"event: ", b"retry: ",
    BOM, b"\xef", b"\xbb", b"\xbf", b"\xff", b"\xc3", b"\xc3\xa9", b"\xe2\x82\xac", b"\xe2\x82",
    b"\xf0\x9f\x98\x80", b"\xf0\x9f", b"\x00", b"\x0b", b"\xc2\x85", b"\xe2\x80\xa8",
]  # fmt: skip
streams = st.lists(st.sampled_from(ALPHABET), max_size=60).map(b"".join)


@st.composite
def stream_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    stream = draw(streams)
    points = draw(st.lists(st.integers(0, len(stream)), max_size=12))
    return stream, points


@settings(max_examples=300, deadline=None)
@given(streams, st.sampled_from(["", "prev"]))
def test_parser_agrees_with_the_reference(stream: bytes, last_event_id: str) -> None:
    assert run_chunks([stream], last_event_id=last_event_id) == reference_parse(
        stream, last_event_id=last_event_id
    )


@settings(max_examples=300, deadline=None)
@given(stream_and_cuts())
def test_any_chunking_agrees_with_the_reference(case: tuple[bytes, list[int]]) -> None:
    stream, points = case
    assert run_chunks(cut(stream, points)) == reference_parse(stream)


@settings(max_examples=200, deadline=None)
@given(stream_and_cuts(), st.integers(1, 40))
def test_any_chunking_agrees_with_the_reference_under_a_small_bound(
    case: tuple[bytes, list[int]], max_event_size: int
) -> None:
    stream, points = case
    expected = reference_parse(stream, max_event_size=max_event_size)
    assert run_chunks(cut(stream, points), max_event_size=max_event_size) == expected
    assert run_chunks(one_byte_chunks(stream), max_event_size=max_event_size) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
def test_arbitrary_bytes_never_raise_and_chunking_does_not_matter(
    stream: bytes, points: list[int]
) -> None:
    points = [p for p in points if p <= len(stream)]
    assert run_chunks(cut(stream, points)) == run_chunks([stream]) == reference_parse(stream)


@settings(max_examples=200, deadline=None)
@given(stream_and_cuts(), st.integers(1, 16))
def test_buffers_stay_bounded(case: tuple[bytes, list[int]], max_event_size: int) -> None:
    stream, points = case
    parser = SSEParser(max_event_size=max_event_size)
    for chunk in cut(stream * 4, points):
        parser.feed_items(chunk)
        sizes = buffer_sizes(parser)
        assert sizes["undecoded"] <= 3
        assert sizes["line"] <= max_event_size
        assert sizes["data"] <= max_event_size + 1
        assert sizes["type"] <= max_event_size
        assert sizes["id_buffer"] <= max_event_size


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=8),
            st.lists(
                st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20),
                min_size=1,
                max_size=3,
            ),
            st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=8),
        ),
        max_size=8,
    ),
    st.sampled_from(["\n", "\r", "\r\n"]),
)
def test_well_formed_events_round_trip(specs: list[tuple[str, list[str], str]], end: str) -> None:
    stream = ""
    expected = []
    for event_type, data_lines, event_id in specs:
        stream += f"event: {event_type}{end}id: {event_id}{end}"
        stream += "".join(f"data: {line}{end}" for line in data_lines) + end
        expected.append(SSEEvent(event_type or "message", "\n".join(data_lines), event_id))
    assert events(stream.encode()) == expected


# --------------------------------------------------------------------------- the resume id


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", True),
        ("42", True),
        ("a\tb", True),  # TAB is allowed in a field value
        ("é ✓ 😀", True),  # sent as UTF-8, as a browser does
        ("\x85\u2028", True),  # not controls to HTTP: their UTF-8 bytes are obs-text
        ("a\x00b", False),
        ("a\x0bb", False),
        ("a\x1fb", False),
        ("a\x7fb", False),
        ("a\nb", False),
        ("a\rb", False),
        ("\ud800", False),  # no UTF-8 form
        ("x" * MAX_RESUME_ID_BYTES, True),
        ("x" * (MAX_RESUME_ID_BYTES + 1), False),
        ("é" * (MAX_RESUME_ID_BYTES // 2), True),
        ("é" * (MAX_RESUME_ID_BYTES // 2 + 1), False),  # counted in bytes, not characters
    ],
)
def test_is_header_safe(value: str, expected: bool) -> None:
    assert is_header_safe(value) is expected
    assert sendable(value) is expected


def test_is_header_safe_without_a_length_bound() -> None:
    assert is_header_safe("x" * 100_000, max_bytes=None)
    assert not is_header_safe("x" * 100_000 + "\n", max_bytes=None)


def test_an_unsendable_id_is_kept_as_the_last_event_id_but_not_as_the_resume_id() -> None:
    parser = SSEParser(last_event_id="1")
    events = parser.feed(b"id: 2\n\nid: a\x0bb\ndata: x\n\ndata: y\n\n")
    assert [e.id for e in events] == ["a\x0bb", "a\x0bb"]  # WHATWG: the id as received
    assert parser.last_event_id == "a\x0bb"
    assert parser.resume_id == "2"  # the most recent id a header can carry
    parser.feed(b"id: 3\n\n")
    assert parser.resume_id == parser.last_event_id == "3"
    parser.feed(b"id\n\n")  # an empty id resets both: no Last-Event-ID is sent
    assert parser.resume_id == parser.last_event_id == ""


def test_an_unsendable_starting_id_gives_an_empty_resume_id() -> None:
    parser = SSEParser(last_event_id="a\nb")
    assert parser.resume_id == ""
    assert parser.feed(b"data: x\n\n")[0].id == "a\nb"
