"""Go-exact codecs layer: the rules of Go's ``encoding/json`` and ``encoding/base64``.

It owns what the envelope's reader and the signed message need to agree with a Go
control plane byte for byte: the scanner (which JSON Go accepts), how Go unquotes a
string token and matches a key to a field, how ``json.Marshal`` escapes a string and
compacts raw JSON, and how ``base64.StdEncoding`` decodes. Pure functions on bytes and
text; nothing here knows envelopes, wire structs or msgspec.
"""

from __future__ import annotations

import binascii
import re

# --- the scanner ---------------------------------------------------------------------------

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


def scan_json(data: bytes) -> list[tuple[bytes, int, int]] | None:
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


# --- reading strings and keys --------------------------------------------------------------


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


def unquote(token: bytes) -> str:
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


# The only non-ASCII letters whose Unicode case folding reaches an ASCII letter:
# KELVIN SIGN folds with k, LATIN SMALL LETTER LONG S with s.
_FOLD_TO_ASCII = str.maketrans({"\u212a": "k", "\u017f": "s"})


def field_key(key_token: bytes) -> str | None:
    """The lower-case ASCII field name a key token matches, as Go matches struct fields
    case-insensitively; None when it can match no ASCII field name."""
    key = unquote(key_token).translate(_FOLD_TO_ASCII)
    if not key.isascii():
        return None
    return key.lower()


# --- writing strings, as json.Marshal does ---------------------------------------------------

# A string needs Go's escaping when it holds any of these (a lone surrogate is Python's
# stand-in for bytes that are not UTF-8, which Go writes as U+FFFD).
NEEDS_ESCAPING = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')
_SURROGATES_TO_REPLACEMENT = {c: "\ufffd" for c in range(0xD800, 0xE000)}


def _go_string_table() -> dict[int, str]:
    # encoding/json (Go 1.22+) with HTML escaping, as json.Marshal does.
    table: dict[int, str] = {c: f"\\u{c:04x}" for c in range(0x20)}
    table.update({ord("\b"): "\\b", ord("\f"): "\\f", ord("\n"): "\\n", ord("\r"): "\\r"})
    table.update({ord("\t"): "\\t", ord('"'): '\\"', ord("\\"): "\\\\"})
    table.update({ord(c): f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"})
    table.update(_SURROGATES_TO_REPLACEMENT)
    return table


_GO_STRING_TABLE = _go_string_table()


def escape_string(text: str) -> bytes:
    """The inside of the JSON string Go's json.Marshal writes for ``text``."""
    if NEEDS_ESCAPING.search(text) is None:
        return text.encode()
    return text.translate(_GO_STRING_TABLE).encode()


def replace_surrogates(text: str) -> str:
    """``text`` with each lone surrogate as U+FFFD: the string a Go reader gets back."""
    if NEEDS_ESCAPING.search(text) is None:
        return text
    return text.translate(_SURROGATES_TO_REPLACEMENT)


# --- compacting raw JSON, as json.Marshal does with a RawMessage ------------------------------

# Bytes that Go's compaction may change: whitespace, <>&, and 0xE2, the lead byte of
# U+2028/U+2029 (other characters starting with 0xE2 only cost the slower path).
MAY_CHANGE_IN_COMPACTION = b"\t\n\r <>&\xe2"
_WHITESPACE = b" \t\n\r"
# A stretch of JSON without whitespace between tokens (strings are taken whole, so the
# whitespace inside them stays): joining all of them compacts the text.
_WITHOUT_SPACE = re.compile(rb'(?:[^ \t\n\r"]++|"(?:[^"\\]++|\\.)*+")++', re.DOTALL)
_HTML_LEAD = b"<>&\xe2"
_HTML = re.compile(rb"[<>&]|\xe2\x80[\xa8\xa9]")
_HTML_ESCAPES = {
    b"<": b"\\u003c",
    b">": b"\\u003e",
    b"&": b"\\u0026",
    "\u2028".encode(): b"\\u2028",
    "\u2029".encode(): b"\\u2029",
}


def compact(raw: bytes) -> bytes:
    """Raw JSON compacted as json.Marshal compacts a RawMessage: whitespace between tokens
    removed, string contents kept byte for byte except <>& U+2028 U+2029, escaped."""
    # translate() finds out cheaply whether a (much slower) regex pass is needed.
    if len(raw.translate(None, _WHITESPACE)) != len(raw):
        raw = b"".join(_WITHOUT_SPACE.findall(raw))
    if len(raw.translate(None, _HTML_LEAD)) != len(raw):
        raw = _HTML.sub(_html_escape, raw)
    return raw


def escape_html(encoded: bytes) -> bytes:
    """Compact JSON with <>& U+2028 U+2029 escaped, as json.Marshal writes them."""
    return _HTML.sub(_html_escape, encoded)


def _html_escape(match: re.Match[bytes]) -> bytes:
    return _HTML_ESCAPES[match.group()]


# --- base64 as encoding/base64's StdEncoding reads it -------------------------------------------

_BASE64_STD = re.compile(
    r"(?:[A-Za-z0-9+/]{4})*+(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?", re.ASCII
)


def decode_base64(text: str) -> bytes | None:
    """Decode as Go's ``base64.StdEncoding.DecodeString``, or None where Go fails.

    Padding is required, CR and LF are skipped anywhere, anything else outside the
    alphabet (a space, ``-``, ``_``, data after the padding) is an error. Python's
    decoder accepts more (``AAAA====``, a missing padding with ``validate=False``).
    """
    if "\n" in text or "\r" in text:
        text = text.replace("\n", "").replace("\r", "")
    if _BASE64_STD.fullmatch(text) is None:
        return None
    return binascii.a2b_base64(text)
