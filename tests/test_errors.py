"""The exception hierarchy and the mapping of an HTTP error response to an exception."""

from __future__ import annotations

import email.utils

import pytest

from plexd.api import errors as e

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, e.BadRequestError),
        (401, e.UnauthorizedError),
        (403, e.ForbiddenError),
        (404, e.NotFoundError),
        (409, e.ConflictError),
        (413, e.PayloadTooLargeError),
        (429, e.RateLimitError),
        (500, e.ServerError),
        (502, e.ServerError),
        (503, e.ServerError),
        (599, e.ServerError),
        (302, e.APIError),
        (405, e.APIError),
        (418, e.APIError),
        (422, e.APIError),
    ],
)
def test_each_status_maps_to_its_class(status: int, cls: type[e.APIError]) -> None:
    error = e.from_response(status, {}, b"boom", method="POST", path="/v1/register")
    assert type(error) is cls
    assert isinstance(error, e.PlexdError)
    assert error.status_code == status
    assert error.message == "boom"
    assert str(error) == f"POST /v1/register: HTTP {status}: boom"


def test_timeouts_are_connection_errors_and_config_errors_are_value_errors() -> None:
    assert issubclass(e.APITimeoutError, e.APIConnectionError)
    assert issubclass(e.APIConnectionError, e.PlexdError)
    assert issubclass(e.ConfigError, ValueError)
    assert issubclass(e.ResponseError, e.PlexdError)


def test_an_idle_timeout_is_a_timeout() -> None:
    assert issubclass(e.SSEIdleTimeoutError, e.APITimeoutError)


def test_message_is_the_first_4096_bytes_decoded_with_replacement() -> None:
    body = b"\xff" + "é".encode() * 5000
    error = e.from_response(500, {}, body)
    assert error.message == ("\ufffd" + "é" * 2047 + "\ufffd")


def test_problem_json_members_become_attributes() -> None:
    body = (
        b'{"type":"https://plexsphere.example/probs/quota","title":"Quota exceeded",'
        b'"detail":"node n1 used 12 of 10 slots","code":"QUOTA","status":409}'
    )
    headers = {"Content-Type": "application/problem+json; charset=utf-8"}
    error = e.from_response(409, headers, body, method="PUT", path="/v1/x")
    assert isinstance(error, e.ConflictError)
    assert (error.title, error.detail, error.code) == (
        "Quota exceeded",
        "node n1 used 12 of 10 slots",
        "QUOTA",
    )
    assert error.message == body.decode()
    assert str(error) == "PUT /v1/x: HTTP 409: node n1 used 12 of 10 slots"


def test_problem_json_with_odd_members_is_tolerated() -> None:
    headers = {"Content-Type": "application/problem+json"}
    numeric = e.from_response(400, headers, b'{"title":null,"code":42}')
    assert (numeric.title, numeric.detail, numeric.code) == ("", "", "42")
    for body in (b"[1,2]", b"not json", b"", b'{"title":'):
        error = e.from_response(400, headers, body)
        assert (error.title, error.detail, error.code) == ("", "", "")
        assert error.message == body.decode()


def test_problem_members_are_read_only_from_problem_json() -> None:
    error = e.from_response(
        400, {"Content-Type": "application/json"}, b'{"title":"t","detail":"d","code":"c"}'
    )
    assert (error.title, error.detail, error.code) == ("", "", "")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
        (email.utils.formatdate(NOW - 3600, usegmt=True), 0.0),
        # The obsolete forms an HTTP recipient must accept (RFC 9110 5.6.7), both GMT.
        ("Tuesday, 14-Nov-23 22:13:50 GMT", 30.0),
        ("Tue Nov 14 22:13:50 2023", 30.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("١٢", None),
        ("Wed, 32 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_retry_after_delta_seconds_and_http_date(value: str | None, seconds: float | None) -> None:
    assert e.parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_read_on_429_and_503(status: int) -> None:
    error = e.from_response(status, {"Retry-After": "12"}, b"")
    assert error.retry_after == 12.0


def test_retry_after_http_date_is_honoured() -> None:
    future = email.utils.formatdate(4102444800, usegmt=True)  # 2100-01-01
    error = e.from_response(429, {"Retry-After": future}, b"")
    assert isinstance(error, e.RateLimitError)
    assert error.retry_after is not None
    assert error.retry_after > 365 * 24 * 3600


@pytest.mark.parametrize("status", [400, 500, 502])
def test_retry_after_is_ignored_on_other_statuses(status: int) -> None:
    assert e.from_response(status, {"Retry-After": "12"}, b"").retry_after is None


def test_repr_shows_class_status_and_message() -> None:
    error = e.from_response(404, {}, b"no such node")
    assert repr(error) == "NotFoundError(status_code=404, message='no such node')"
    assert str(e.from_response(500, {}, b"")) == "HTTP 500"


def test_str_escapes_control_characters_a_server_sent() -> None:
    # A body that would forge a second log line and recolour a terminal.
    body = b"oops\n2026-12-04 CRITICAL forged line\x1b[31m\r\xc2\x85\xe2\x80\xa8end"
    error = e.from_response(503, {}, body, method="GET", path="/v1/x")
    shown = str(error)
    assert shown.isprintable(), shown
    assert "oops\\x0a2026-12-04 CRITICAL forged line\\x1b[31m\\x0d\\x85\\u2028end" in shown
    assert error.message == body.decode()  # the attribute keeps what was received


def test_problem_detail_is_shown_escaped() -> None:
    body = b'{"title": "t", "detail": "bad\\nINFO all good"}'
    headers = {"Content-Type": "application/problem+json"}
    error = e.from_response(400, headers, body)
    assert error.detail == "bad\nINFO all good"
    assert str(error) == "HTTP 400: bad\\x0aINFO all good"


@pytest.mark.parametrize("text", ["plain", "é ü 日本", "tab\there", "", "\x7f", "\u2029"])
def test_printable_leaves_nothing_unprintable(text: str) -> None:
    shown = e.printable(text)
    assert shown.isprintable()
    if text.isprintable():
        assert shown == text
