"""Wire types: encoded exactly as the Go control plane expects, decoded as tolerantly as Go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plexd.api as api
from plexd.api._gotime import ZERO_TIME
from plexd.api._wire import check_times
from plexd.api.errors import PlexdError, ResponseError

T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))


def encode(value: object) -> bytes:
    return msgspec.json.encode(value)


# --- encoding: every key that is not omitempty is present, even when empty ----


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (api.RegisterRequest(), b'{"token":"","public_key":"","hostname":""}'),
        (
            api.HeartbeatRequest(),
            b'{"node_id":"","timestamp":"0001-01-01T00:00:00Z","status":"","uptime":"",'
            b'"binary_checksum":""}',
        ),
        (api.MeshInfo(), b'{"interface":"","peer_count":0,"listen_port":0}'),
        (api.NATInfo(), b'{"public_endpoint":"","type":""}'),
        (api.DriftReport(), b'{"timestamp":"0001-01-01T00:00:00Z","corrections":[]}'),
        (api.DriftCorrection(), b'{"type":"","detail":""}'),
        (api.ReportSyncRequest(), b'{"entries":[],"deleted":[]}'),
        (
            api.ReportEntry(),
            b'{"key":"","content_type":"","payload":null,"version":0,'
            b'"updated_at":"0001-01-01T00:00:00Z"}',
        ),
        (api.ExecutionAck(), b'{"execution_id":"","status":"","reason":""}'),
        (
            api.ExecutionResult(),
            b'{"execution_id":"","status":"","exit_code":0,"stdout":"","stderr":"",'
            b'"duration":"","finished_at":"0001-01-01T00:00:00Z"}',
        ),
        (api.TriggeredBy(), b'{"type":"","session_id":"","user_id":"","email":""}'),
        (api.MetricPoint(), b'{"timestamp":"0001-01-01T00:00:00Z","group":"","data":null}'),
        (
            api.LogEntry(),
            b'{"timestamp":"0001-01-01T00:00:00Z","source":"","unit":"","message":"",'
            b'"severity":"","hostname":""}',
        ),
        (
            api.AuditEntry(),
            b'{"timestamp":"0001-01-01T00:00:00Z","source":"","event_type":"","subject":null,'
            b'"object":null,"action":"","result":"","hostname":"","raw":""}',
        ),
        (api.CapabilitiesPayload(), b'{"builtin_actions":[],"hooks":[]}'),
        (api.BinaryInfo(), b'{"version":"","checksum":""}'),
        (api.ActionInfo(), b'{"name":"","description":"","parameters":[]}'),
        (api.ActionParam(), b'{"name":"","type":"","required":false,"description":""}'),
        (
            api.HookInfo(),
            b'{"name":"","description":"","source":"","checksum":"","parameters":[],'
            b'"timeout":"","sandbox":""}',
        ),
        (api.EndpointReport(), b'{"public_endpoint":"","nat_type":""}'),
        (api.KeyRotateRequest(), b'{"node_id":"","new_public_key":""}'),
    ],
)
def test_empty_request_types_send_every_non_omitempty_key(value: object, expected: bytes) -> None:
    assert encode(value) == expected


def test_omitempty_keys_are_left_out_when_empty_and_sent_when_set() -> None:
    assert b"metadata" not in encode(api.RegisterRequest(metadata={}))
    assert b"metadata" not in encode(api.RegisterRequest(metadata=None))
    assert b'"metadata":{"zone":"a"}' in encode(api.RegisterRequest(metadata={"zone": "a"}))
    assert b'"capabilities":{"builtin_actions":[],"hooks":[]}' in encode(
        api.RegisterRequest(capabilities=api.CapabilitiesPayload())
    )
    assert b'"peer_id":"p1"' in encode(api.MetricPoint(peer_id="p1"))
    assert b'"binary":{"version":"1","checksum":""}' in encode(
        api.CapabilitiesPayload(binary=api.BinaryInfo(version="1"))
    )
    # A mesh/nat that is set is sent even when all its members are zero (a Go pointer).
    assert b'"mesh":{"interface":"","peer_count":0,"listen_port":0}' in encode(
        api.HeartbeatRequest(mesh=api.MeshInfo())
    )
    assert b'"triggered_by":{"type":"user"' in encode(
        api.ExecutionResult(triggered_by=api.TriggeredBy(type="user"))
    )


def test_none_for_a_list_is_sent_as_an_empty_list() -> None:
    assert (
        encode(api.ReportSyncRequest(entries=None, deleted=None)) == b'{"entries":[],"deleted":[]}'
    )


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (T0, b'"2024-05-06T07:08:09.123456Z"'),
        (T0.replace(microsecond=0), b'"2024-05-06T07:08:09Z"'),
        (datetime(2024, 5, 6, 9, 8, 9, tzinfo=PLUS_TWO), b'"2024-05-06T09:08:09+02:00"'),
        (
            datetime(2024, 5, 6, 1, 8, 9, 5, tzinfo=timezone(-timedelta(hours=5, minutes=30))),
            b'"2024-05-06T01:08:09.000005-05:30"',
        ),
    ],
)
def test_times_are_rfc3339_with_their_offset(when: datetime, text: bytes) -> None:
    assert encode(api.LogEntry(timestamp=when)).startswith(b'{"timestamp":' + text + b",")


def test_naive_datetime_is_rejected_at_construction_naming_the_field() -> None:
    with pytest.raises(api.NaiveDatetimeError, match=r"HeartbeatRequest\.timestamp.*naive"):
        api.HeartbeatRequest(timestamp=datetime(2024, 1, 1))
    assert issubclass(api.NaiveDatetimeError, PlexdError)


def test_naive_datetime_assigned_later_is_caught_before_sending() -> None:
    entry = api.ReportEntry(updated_at=T0)
    entry.updated_at = datetime(2024, 1, 1)
    request = api.ReportSyncRequest(entries=[entry])
    with pytest.raises(api.NaiveDatetimeError, match=r"ReportEntry\.updated_at"):
        check_times(request)
    with pytest.raises(api.NaiveDatetimeError, match="naive"):
        check_times({"batch": [{"at": datetime(2024, 1, 1)}]})
    check_times({"batch": [{"at": T0}], "n": 1})


def test_raw_field_is_sent_as_given() -> None:
    text = b'{ "b" : [1, 2], "a": "\\u00e9" }'
    assert encode(api.MetricPoint(data=msgspec.Raw(text))).endswith(b'"data":' + text + b"}")
    assert encode(api.MetricPoint(data=text)).endswith(b'"data":' + text + b"}")
    assert encode(api.MetricPoint(data=api.raw_json({"rx": 1}))).endswith(b'"data":{"rx":1}}')
    assert encode(api.MetricPoint(data=b"")).endswith(b'"data":null}')


def test_raw_field_given_a_python_value_says_to_use_raw_json() -> None:
    with pytest.raises(TypeError, match="raw_json"):
        api.MetricPoint(data={"rx": 1})  # type: ignore[arg-type]


# --- decoding: as tolerant as Go --------------------------------------------------


def test_null_lists_and_maps_decode_as_empty() -> None:
    state = msgspec.json.decode(
        b'{"peers":null,"policies":[{"id":"p","rules":null}],"metadata":null,"data":null,'
        b'"secret_refs":null}',
        type=api.StateResponse,
    )
    assert state.peers == []
    assert state.policies == [api.Policy(id="p", rules=[])]
    assert state.metadata == {}
    assert state.data == []
    assert state.secret_refs == []


def test_missing_keys_take_the_empty_value() -> None:
    response = msgspec.json.decode(b"{}", type=api.RegisterResponse)
    assert (response.node_id, response.mesh_ip, response.node_secret_key) == ("", "", "")
    assert response.peers == []
    entry = msgspec.json.decode(b"{}", type=api.DataEntry)
    assert entry.payload == api.NULL
    assert entry.version == 0
    assert entry.updated_at == ZERO_TIME


def test_unknown_keys_are_ignored() -> None:
    answer = msgspec.json.decode(
        b'{"reconcile":true,"future_field":{"x":[1,2]},"rotate_keys":false}',
        type=api.HeartbeatResponse,
    )
    assert answer == api.HeartbeatResponse(reconcile=True, rotate_keys=False)


def test_full_state_response_decodes() -> None:
    body = (
        b'{"peers":[{"id":"p1","public_key":"pk","mesh_ip":"10.0.0.2","endpoint":"1.2.3.4:51820",'
        b'"allowed_ips":["10.0.0.2/32"],"psk":"s3cret"}],'
        b'"policies":[{"id":"pol","rules":[{"src":"a","dst":"b","port":22,"protocol":"tcp",'
        b'"action":"allow"}]}],'
        b'"signing_keys":{"current":"cur","previous":"prev",'
        b'"transition_expires":"2024-05-06T09:08:09+02:00"},'
        b'"metadata":{"k":"v"},'
        b'"data":[{"key":"d","content_type":"application/json","payload":[1, {"x":null}],'
        b'"version":3,"updated_at":"2024-05-06T07:08:09.123456Z"}],'
        b'"secret_refs":[{"key":"db","version":2}]}'
    )
    state = msgspec.json.decode(body, type=api.StateResponse)
    assert state.peers[0].allowed_ips == ["10.0.0.2/32"]
    assert state.peers[0].psk == "s3cret"
    assert state.policies[0].rules[0] == api.PolicyRule(
        src="a", dst="b", port=22, protocol="tcp", action="allow"
    )
    assert state.signing_keys is not None
    assert state.signing_keys.transition_expires == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert state.signing_keys.transition_expires.utcoffset() == timedelta(hours=2)
    assert bytes(state.data[0].payload) == b'[1, {"x":null}]'
    assert state.data[0].updated_at == T0
    assert state.secret_refs == [api.SecretRef(key="db", version=2)]


def test_raw_fields_keep_the_exact_bytes_received() -> None:
    payload = b'{ "z" : 1,\n "a" : "\\u003c&" }'
    entry = msgspec.json.decode(b'{"payload":' + payload + b"}", type=api.DataEntry)
    assert bytes(entry.payload) == payload
    assert api.decode_raw(entry.payload) == {"z": 1, "a": "<&"}
    null_entry = msgspec.json.decode(b'{"payload":null}', type=api.DataEntry)
    assert bytes(null_entry.payload) == b"null"
    assert api.decode_raw(null_entry.payload) is None


def test_decode_raw_into_a_type_and_its_errors_are_plexd_errors() -> None:
    class Counter(msgspec.Struct):
        rx: int

    assert api.decode_raw(msgspec.Raw(b'{"rx":5}'), Counter) == Counter(rx=5)
    with pytest.raises(ResponseError, match="expected type"):
        api.decode_raw(msgspec.Raw(b'{"rx":"five"}'), Counter)
    with pytest.raises(ResponseError, match="not valid JSON"):
        api.decode_raw(b"{nope")


def test_a_time_without_offset_is_rejected_as_go_does() -> None:
    with pytest.raises(msgspec.ValidationError, match="timezone"):
        msgspec.json.decode(b'{"updated_at":"2024-05-06T07:08:09"}', type=api.DataEntry)


# --- secrets never show --------------------------------------------------------------


def test_secrets_never_appear_in_repr_or_str() -> None:
    values = [
        api.RegisterRequest(token="bootstrap-SECRET", hostname="h"),
        api.RegisterResponse(
            node_id="n1", node_secret_key="node-SECRET", peers=[api.Peer(id="p", psk="psk-SECRET")]
        ),
        api.SecretResponse(key="db", ciphertext="cipher-SECRET", nonce="n"),
        api.StateResponse(peers=[api.Peer(id="p", psk="psk-SECRET")]),
    ]
    for value in values:
        for shown in (repr(value), str(value), repr(value.__rich_repr__())):  # type: ignore[attr-defined]
            assert "SECRET" not in shown
            assert "***" in shown
    assert "hostname='h'" in repr(values[0])
    assert "node_id='n1'" in repr(values[1])


def test_an_empty_secret_shows_as_empty() -> None:
    assert "token=''" in repr(api.RegisterRequest())


# --- round trip --------------------------------------------------------------------

aware_times = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
) | st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.builds(
        lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-23 * 60, 23 * 60)
    ),
)
texts = st.text(max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    execution_id=texts,
    exit_code=st.integers(-(2**31), 2**31),
    stdout=texts,
    finished_at=aware_times,
    triggered=st.none() | st.builds(api.TriggeredBy, type=texts, email=texts),
)
def test_execution_result_round_trips(
    execution_id: str,
    exit_code: int,
    stdout: str,
    finished_at: datetime,
    triggered: api.TriggeredBy | None,
) -> None:
    value = api.ExecutionResult(
        execution_id=execution_id,
        exit_code=exit_code,
        stdout=stdout,
        finished_at=finished_at,
        triggered_by=triggered,
    )
    decoded = msgspec.json.decode(encode(value), type=api.ExecutionResult)
    assert decoded == value
    assert decoded.finished_at.utcoffset() == finished_at.utcoffset()


@settings(max_examples=150, deadline=None)
@given(payload=json_values, version=st.integers(0, 2**62))
def test_report_entry_payload_round_trips_byte_for_byte(payload: object, version: int) -> None:
    raw = api.raw_json(payload)
    entry = api.ReportEntry(key="k", payload=raw, version=version, updated_at=T0)
    decoded = msgspec.json.decode(encode(entry), type=api.ReportEntry)
    assert bytes(decoded.payload) == bytes(raw)
    assert api.decode_raw(decoded.payload) == payload


def test_report_entry_is_a_data_entry_under_its_own_name() -> None:
    # WIRE.md gives both the same fields: one declaration, two names in reprs and errors.
    assert issubclass(api.ReportEntry, api.DataEntry)
    assert api.ReportEntry.__struct_fields__ == api.DataEntry.__struct_fields__
    assert repr(api.ReportEntry(key="k")).startswith("ReportEntry(key='k',")
