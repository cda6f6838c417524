"""Every endpoint of WIRE.md against a real loopback server: method, raw path, exact JSON body."""

from __future__ import annotations

import dataclasses
import gzip
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from aiohttp import web

from plexd.api import (
    ActionInfo,
    ActionParam,
    ArgumentError,
    AuditEntry,
    BinaryInfo,
    CapabilitiesPayload,
    Config,
    ControlPlane,
    DriftCorrection,
    DriftReport,
    EndpointReport,
    EndpointResponse,
    ExecutionAck,
    ExecutionResult,
    HeartbeatRequest,
    HeartbeatResponse,
    HookInfo,
    KeyRotateRequest,
    KeyRotateResponse,
    LogEntry,
    MeshInfo,
    MetricPoint,
    NATInfo,
    Peer,
    PeerEndpoint,
    RegisterRequest,
    RegisterResponse,
    ReportEntry,
    ReportSyncRequest,
    SecretRef,
    SecretResponse,
    StateResponse,
    TriggeredBy,
    raw_json,
)

T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
T0_TEXT = b'"2024-05-06T07:08:09.123456Z"'
PLUS_TWO = timezone(timedelta(hours=2))

CAPABILITIES = CapabilitiesPayload(
    binary=BinaryInfo(version="1.4.0", checksum="c0ffee"),
    builtin_actions=[
        ActionInfo(
            name="restart",
            description="Restart a unit",
            parameters=[
                ActionParam(name="unit", type="string", required=True, description="the unit")
            ],
        )
    ],
    hooks=[
        HookInfo(
            name="backup",
            source="/etc/plexd/hooks/backup",
            checksum="abc",
            timeout="30s",
            sandbox="none",
        )
    ],
)
CAPABILITIES_JSON = (
    b'{"binary":{"version":"1.4.0","checksum":"c0ffee"},'
    b'"builtin_actions":[{"name":"restart","description":"Restart a unit","parameters":'
    b'[{"name":"unit","type":"string","required":true,"description":"the unit"}]}],'
    b'"hooks":[{"name":"backup","description":"","source":"/etc/plexd/hooks/backup",'
    b'"checksum":"abc","parameters":[],"timeout":"30s","sandbox":"none"}]}'
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One endpoint call and what the server must see and answer."""

    call: Callable[[ControlPlane], Awaitable[Any]]
    method: str
    raw_path: str
    body: bytes | None  # the exact request body; None: no body at all
    answer: bytes = b'{"ignored":true}'
    expect: Any = None


CASES: dict[str, Case] = {
    "register": Case(
        lambda cp: cp.register(
            RegisterRequest(
                token="bootstrap-tok",
                public_key="pk",
                hostname="h1",
                metadata={"zone": "a"},
                capabilities=CAPABILITIES,
            )
        ),
        "POST",
        "/v1/register",
        b'{"token":"bootstrap-tok","public_key":"pk","hostname":"h1","metadata":{"zone":"a"},'
        b'"capabilities":' + CAPABILITIES_JSON + b"}",
        answer=b'{"node_id":"n1","mesh_ip":"10.0.0.1","signing_public_key":"spk",'
        b'"node_secret_key":"nsk","peers":[{"id":"p1","public_key":"ppk","mesh_ip":"10.0.0.2",'
        b'"endpoint":"198.51.100.2:51820","allowed_ips":["10.0.0.2/32"],"psk":"psk1"}]}',
        expect=RegisterResponse(
            node_id="n1",
            mesh_ip="10.0.0.1",
            signing_public_key="spk",
            node_secret_key="nsk",
            peers=[
                Peer(
                    id="p1",
                    public_key="ppk",
                    mesh_ip="10.0.0.2",
                    endpoint="198.51.100.2:51820",
                    allowed_ips=["10.0.0.2/32"],
                    psk="psk1",
                )
            ],
        ),
    ),
    "register-empty": Case(
        lambda cp: cp.register(RegisterRequest()),
        "POST",
        "/v1/register",
        b'{"token":"","public_key":"","hostname":""}',
        answer=b'{"node_id":"n2","peers":null}',
        expect=RegisterResponse(node_id="n2"),
    ),
    "heartbeat": Case(
        lambda cp: cp.heartbeat(
            "n1",
            HeartbeatRequest(
                node_id="n1",
                timestamp=T0,
                status="healthy",
                uptime="3h0m0s",
                binary_checksum="sha256:ab",
                mesh=MeshInfo(interface="plexd0", peer_count=3, listen_port=51820),
                nat=NATInfo(public_endpoint="203.0.113.7:51820", type="full_cone"),
            ),
        ),
        "POST",
        "/v1/nodes/n1/heartbeat",
        b'{"node_id":"n1","timestamp":' + T0_TEXT + b',"status":"healthy","uptime":"3h0m0s",'
        b'"binary_checksum":"sha256:ab",'
        b'"mesh":{"interface":"plexd0","peer_count":3,"listen_port":51820},'
        b'"nat":{"public_endpoint":"203.0.113.7:51820","type":"full_cone"}}',
        answer=b'{"reconcile":true,"rotate_keys":false}',
        expect=HeartbeatResponse(reconcile=True, rotate_keys=False),
    ),
    "heartbeat-empty": Case(
        lambda cp: cp.heartbeat("n1", HeartbeatRequest()),
        "POST",
        "/v1/nodes/n1/heartbeat",
        b'{"node_id":"","timestamp":"0001-01-01T00:00:00Z","status":"","uptime":"",'
        b'"binary_checksum":""}',
        answer=b"{}",
        expect=HeartbeatResponse(),
    ),
    "deregister": Case(lambda cp: cp.deregister("n1"), "POST", "/v1/nodes/n1/deregister", None),
    "fetch_state": Case(
        lambda cp: cp.fetch_state("n1"),
        "GET",
        "/v1/nodes/n1/state",
        None,
        answer=b'{"peers":null,"policies":[],"data":null,"secret_refs":[{"key":"db","version":1}]}',
        expect=StateResponse(secret_refs=[SecretRef(key="db", version=1)]),
    ),
    "rotate_keys": Case(
        lambda cp: cp.rotate_keys(KeyRotateRequest(node_id="n1", new_public_key="npk")),
        "POST",
        "/v1/keys/rotate",
        b'{"node_id":"n1","new_public_key":"npk"}',
        answer=b'{"updated_peers":[{"id":"p1"}]}',
        expect=KeyRotateResponse(updated_peers=[Peer(id="p1")]),
    ),
    "update_capabilities": Case(
        lambda cp: cp.update_capabilities("n1", CAPABILITIES),
        "PUT",
        "/v1/nodes/n1/capabilities",
        CAPABILITIES_JSON,
    ),
    "update_capabilities-empty": Case(
        lambda cp: cp.update_capabilities("n1", CapabilitiesPayload()),
        "PUT",
        "/v1/nodes/n1/capabilities",
        b'{"builtin_actions":[],"hooks":[]}',
    ),
    "report_endpoint": Case(
        lambda cp: cp.report_endpoint(
            "n1", EndpointReport(public_endpoint="203.0.113.7:51820", nat_type="symmetric")
        ),
        "PUT",
        "/v1/nodes/n1/endpoint",
        b'{"public_endpoint":"203.0.113.7:51820","nat_type":"symmetric"}',
        answer=b'{"peer_endpoints":[{"peer_id":"p1","endpoint":"198.51.100.2:51820"}]}',
        expect=EndpointResponse(
            peer_endpoints=[PeerEndpoint(peer_id="p1", endpoint="198.51.100.2:51820")]
        ),
    ),
    "report_endpoint-empty": Case(
        lambda cp: cp.report_endpoint("n1", EndpointReport()),
        "PUT",
        "/v1/nodes/n1/endpoint",
        b'{"public_endpoint":"","nat_type":""}',
        answer=b'{"peer_endpoints":null}',
        expect=EndpointResponse(),
    ),
    "report_drift": Case(
        lambda cp: cp.report_drift(
            "n1",
            DriftReport(
                timestamp=datetime(2024, 5, 6, 9, 8, 9, tzinfo=PLUS_TWO),
                corrections=[DriftCorrection(type="peer_added", detail="re-added p1")],
            ),
        ),
        "POST",
        "/v1/nodes/n1/drift",
        b'{"timestamp":"2024-05-06T09:08:09+02:00",'
        b'"corrections":[{"type":"peer_added","detail":"re-added p1"}]}',
    ),
    "report_drift-empty": Case(
        lambda cp: cp.report_drift("n1", DriftReport()),
        "POST",
        "/v1/nodes/n1/drift",
        b'{"timestamp":"0001-01-01T00:00:00Z","corrections":[]}',
    ),
    "fetch_secret": Case(
        lambda cp: cp.fetch_secret("n1", "db/password"),
        "GET",
        "/v1/nodes/n1/secrets/db%2Fpassword",
        None,
        answer=b'{"key":"db/password","ciphertext":"Y2lwaGVy","nonce":"bm9uY2U=","version":3}',
        expect=SecretResponse(
            key="db/password", ciphertext="Y2lwaGVy", nonce="bm9uY2U=", version=3
        ),
    ),
    "sync_reports": Case(
        lambda cp: cp.sync_reports(
            "n1",
            ReportSyncRequest(
                entries=[
                    ReportEntry(
                        key="inv",
                        content_type="application/json",
                        payload=msgspec.Raw(b'{"pkgs": ["a", "b"]}'),
                        version=4,
                        updated_at=T0,
                    )
                ],
                deleted=["old"],
            ),
        ),
        "POST",
        "/v1/nodes/n1/report",
        b'{"entries":[{"key":"inv","content_type":"application/json",'
        b'"payload":{"pkgs": ["a", "b"]},"version":4,"updated_at":' + T0_TEXT + b"}],"
        b'"deleted":["old"]}',
    ),
    "sync_reports-empty": Case(
        lambda cp: cp.sync_reports("n1", ReportSyncRequest()),
        "POST",
        "/v1/nodes/n1/report",
        b'{"entries":[],"deleted":[]}',
    ),
    "ack_execution": Case(
        lambda cp: cp.ack_execution(
            "n1", "ex-1", ExecutionAck(execution_id="ex-1", status="accepted")
        ),
        "POST",
        "/v1/nodes/n1/executions/ex-1/ack",
        b'{"execution_id":"ex-1","status":"accepted","reason":""}',
    ),
    "report_result": Case(
        lambda cp: cp.report_result(
            "n1",
            "ex-1",
            ExecutionResult(
                execution_id="ex-1",
                status="succeeded",
                stdout="ok\n",
                duration="1.5s",
                finished_at=T0,
                triggered_by=TriggeredBy(
                    type="user", session_id="s1", user_id="u1", email="ops@example.com"
                ),
            ),
        ),
        "POST",
        "/v1/nodes/n1/executions/ex-1/result",
        b'{"execution_id":"ex-1","status":"succeeded","exit_code":0,"stdout":"ok\\n",'
        b'"stderr":"","duration":"1.5s","finished_at":' + T0_TEXT + b","
        b'"triggered_by":{"type":"user","session_id":"s1","user_id":"u1",'
        b'"email":"ops@example.com"}}',
    ),
    "report_result-without-trigger": Case(
        lambda cp: cp.report_result(
            "n1", "ex-2", ExecutionResult(execution_id="ex-2", status="failed", exit_code=2)
        ),
        "POST",
        "/v1/nodes/n1/executions/ex-2/result",
        b'{"execution_id":"ex-2","status":"failed","exit_code":2,"stdout":"","stderr":"",'
        b'"duration":"","finished_at":"0001-01-01T00:00:00Z"}',
    ),
    "report_metrics": Case(
        lambda cp: cp.report_metrics(
            "n1",
            (
                MetricPoint(
                    timestamp=T0, group="net", peer_id="p1", data=raw_json({"rx": 1, "tx": 2})
                ),
                MetricPoint(timestamp=T0, group="cpu", data=msgspec.Raw(b"[0.5, 0.25]")),
            ),
        ),
        "POST",
        "/v1/nodes/n1/metrics",
        b'[{"timestamp":' + T0_TEXT + b',"group":"net","peer_id":"p1","data":{"rx":1,"tx":2}},'
        b'{"timestamp":' + T0_TEXT + b',"group":"cpu","data":[0.5, 0.25]}]',
    ),
    "report_metrics-empty": Case(
        lambda cp: cp.report_metrics("n1", []), "POST", "/v1/nodes/n1/metrics", b"[]"
    ),
    "report_logs": Case(
        lambda cp: cp.report_logs(
            "n1",
            [
                LogEntry(
                    timestamp=T0,
                    source="journald",
                    unit="plexd.service",
                    message="started",
                    severity="info",
                    hostname="h1",
                )
            ],
        ),
        "POST",
        "/v1/nodes/n1/logs",
        b'[{"timestamp":' + T0_TEXT + b',"source":"journald","unit":"plexd.service",'
        b'"message":"started","severity":"info","hostname":"h1"}]',
    ),
    "report_logs-empty": Case(
        lambda cp: cp.report_logs("n1", []), "POST", "/v1/nodes/n1/logs", b"[]"
    ),
    "report_audit": Case(
        lambda cp: cp.report_audit(
            "n1",
            [
                AuditEntry(
                    timestamp=T0,
                    source="auditd",
                    event_type="login",
                    subject=msgspec.Raw(b'{"uid":1000}'),
                    action="ssh",
                    result="success",
                    hostname="h1",
                    raw="type=USER_LOGIN msg=audit(1)",
                )
            ],
        ),
        "POST",
        "/v1/nodes/n1/audit",
        b'[{"timestamp":' + T0_TEXT + b',"source":"auditd","event_type":"login",'
        b'"subject":{"uid":1000},"object":null,"action":"ssh","result":"success",'
        b'"hostname":"h1","raw":"type=USER_LOGIN msg=audit(1)"}]',
    ),
    "report_audit-empty": Case(
        lambda cp: cp.report_audit("n1", []), "POST", "/v1/nodes/n1/audit", b"[]"
    ),
    "ping": Case(lambda cp: cp.ping(), "GET", "/v1/ping", None),
    "get_json": Case(
        lambda cp: cp.get_json("/v1/custom?x=1"),
        "GET",
        "/v1/custom?x=1",
        None,
        answer=b'{"a":[1,null]}',
        expect={"a": [1, None]},
    ),
    "get_json-typed": Case(
        lambda cp: cp.get_json("v1/custom", HeartbeatResponse),
        "GET",
        "/v1/custom",
        None,
        answer=b'{"reconcile":true}',
        expect=HeartbeatResponse(reconcile=True),
    ),
    "get_json-empty-body": Case(
        lambda cp: cp.get_json("/v1/custom"), "GET", "/v1/custom", None, answer=b""
    ),
    "post_json": Case(
        lambda cp: cp.post_json("/v1/custom", {"k": [1, "two"], "at": T0}),
        "POST",
        "/v1/custom",
        b'{"k":[1,"two"],"at":' + T0_TEXT + b"}",
        answer=b"[true]",
        expect=[True],
    ),
    "post_json-typed": Case(
        lambda cp: cp.post_json("/v1/custom", KeyRotateRequest(node_id="n1"), KeyRotateResponse),
        "POST",
        "/v1/custom",
        b'{"node_id":"n1","new_public_key":""}',
        answer=b'{"updated_peers":null,"extra":1}',
        expect=KeyRotateResponse(),
    ),
    "post_json-no-body": Case(
        lambda cp: cp.post_json("/v1/custom", None), "POST", "/v1/custom", None, answer=b""
    ),
}


def answer_case(case: Case) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=case.answer, content_type="application/json")

    return answer


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_endpoint_sends_method_path_and_exact_body(loopback: Any, case: Case) -> None:
    server = await loopback(answer_case(case))
    async with server.client() as cp:
        result = await case.call(cp)
    assert len(server.received) == 1
    got = server.last
    assert got.method == case.method
    assert got.raw_path == case.raw_path
    if case.body is None:
        assert got.body == b""
        assert "Content-Type" not in got.headers
        assert "Content-Encoding" not in got.headers
    else:
        assert got.body == case.body
        assert got.headers["Content-Type"] == "application/json"
    assert result == case.expect


async def test_base_url_path_prefix_is_kept_and_trailing_slash_ignored(loopback: Any) -> None:
    server = await loopback()
    cp = ControlPlane(Config(base_url=server.url + "/api/"), "1.2.3")
    async with cp:
        await cp.deregister("n1")
        await cp.get_json("/v2/thing")
        await cp.get_json("v2/other")
    assert [r.raw_path for r in server.received] == [
        "/api/v1/nodes/n1/deregister",
        "/api/v2/thing",
        "/api/v2/other",
    ]


async def test_a_path_leading_out_of_the_base_url_path_is_refused(loopback: Any) -> None:
    server = await loopback()
    async with ControlPlane(Config(base_url=server.url + "/api"), "1") as cp:
        with pytest.raises(ArgumentError, match="out of the base URL"):
            await cp.get_json("../v2/thing")
    assert server.received == []


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_a_none_response_endpoint_accepts_any_2xx_and_ignores_the_body(
    loopback: Any, status: int
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        body = None if status == 204 else b"<html>not json</html>"
        return web.Response(status=status, body=body, content_type="text/html")

    server = await loopback(answer)
    async with server.client() as cp:
        assert await cp.report_drift("n1", DriftReport()) is None
        assert await cp.deregister("n1") is None


# --- path parameters stay inside their segment ------------------------------------

AWKWARD_IDS = {
    "../admin": "..%2Fadmin",
    "a/b": "a%2Fb",
    "?x": "%3Fx",
    "#": "%23",
    "%": "%25",
    "%2F": "%252F",
    "..": "%2E%2E",
    ".": "%2E",
    "a b+c": "a%20b%2Bc",
    "é": "%C3%A9",
    ";x=1": "%3Bx%3D1",
}


@pytest.mark.parametrize(("value", "encoded"), AWKWARD_IDS.items(), ids=AWKWARD_IDS.keys())
async def test_path_parameters_are_percent_encoded_as_one_segment(
    loopback: Any, value: str, encoded: str
) -> None:
    server = await loopback()
    async with server.client() as cp:
        await cp.heartbeat(value, HeartbeatRequest())
        await cp.fetch_secret(value, value)
        await cp.ack_execution(value, value, ExecutionAck())
        await cp.deregister(value)
        async with cp.fetch_artifact(value, value, value):
            pass
        async with cp.connect_sse(value):
            pass
    assert [r.raw_path for r in server.received] == [
        f"/v1/nodes/{encoded}/heartbeat",
        f"/v1/nodes/{encoded}/secrets/{encoded}",
        f"/v1/nodes/{encoded}/executions/{encoded}/ack",
        f"/v1/nodes/{encoded}/deregister",
        f"/v1/artifacts/plexd/{encoded}/{encoded}/{encoded}",
        f"/v1/nodes/{encoded}/events",
    ]


async def test_empty_path_parameter_is_refused_before_sending(loopback: Any) -> None:
    server = await loopback()
    async with server.client() as cp:
        with pytest.raises(ValueError, match="node_id"):
            await cp.heartbeat("", HeartbeatRequest())
        with pytest.raises(ValueError, match="key"):
            await cp.fetch_secret("n1", "")
    assert server.received == []


# --- request bodies over 1 KiB are gzip-compressed ----------------------------------


async def test_body_over_1024_bytes_is_gzipped_with_content_length(loopback: Any) -> None:
    entries = [LogEntry(timestamp=T0, message=f"line {i}", hostname="h1") for i in range(40)]
    expected = (
        b"["
        + b",".join(
            b'{"timestamp":'
            + T0_TEXT
            + b',"source":"","unit":"","message":"line '
            + str(i).encode()
            + b'","severity":"","hostname":"h1"}'
            for i in range(40)
        )
        + b"]"
    )
    assert len(expected) > 1024
    server = await loopback()
    async with server.client() as cp:
        await cp.report_logs("n1", entries)
    got = server.last
    assert got.headers["Content-Encoding"] == "gzip"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Content-Length"] == str(len(got.body))
    assert "Transfer-Encoding" not in got.headers
    assert gzip.decompress(got.body) == expected
    assert len(got.body) < len(expected)


async def test_body_of_exactly_1024_bytes_is_sent_plain(loopback: Any) -> None:
    prefix = b'{"node_id":"'
    suffix = b'","new_public_key":""}'
    node_id = "n" * (1024 - len(prefix) - len(suffix))
    server = await loopback()
    async with server.client() as cp:
        await cp.post_json("/v1/keys/rotate", KeyRotateRequest(node_id=node_id))
        await cp.post_json("/v1/keys/rotate", KeyRotateRequest(node_id=node_id + "n"))
    plain, compressed = server.received
    assert len(plain.body) == 1024
    assert "Content-Encoding" not in plain.headers
    assert compressed.headers["Content-Encoding"] == "gzip"
    assert len(gzip.decompress(compressed.body)) == 1025
