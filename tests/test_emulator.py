"""The emulator's node endpoints, its authorization rules, the admin API and TLS,
driven with the real client (``ControlPlane``) or plain aiohttp."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import signal
import ssl
import string
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import msgspec
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from plexd.api import (
    APIConnectionError,
    AuditEntry,
    BadRequestError,
    CapabilitiesPayload,
    Config,
    ControlPlane,
    DriftCorrection,
    DriftReport,
    EndpointReport,
    ExecutionAck,
    ExecutionResult,
    ForbiddenError,
    HeartbeatRequest,
    KeyRotateRequest,
    LogEntry,
    MetricPoint,
    NotFoundError,
    Policy,
    PolicyRule,
    RateLimitError,
    RegisterRequest,
    ReportEntry,
    ReportSyncRequest,
    ServerError,
    UnauthorizedError,
    decrypt_secret,
    raw_json,
)
from plexd.emulator import CHECKSUM_HEADER, Emulator
from plexd.emulator.exchange import MAX_REQUEST_BODY, is_loopback

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
URL_SAFE = set(string.ascii_letters + string.digits + "-_")


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(tokens=["boot-1", "boot-2"], artifact_size=4096) as emulator:
        yield emulator


@pytest.fixture
async def anonymous(emulator: Emulator) -> AsyncIterator[ControlPlane]:
    async with emulator.client() as client:
        yield client


async def register(emulator: Emulator, hostname: str = "web-1") -> tuple[str, str]:
    async with emulator.client() as client:
        resp = await client.register(
            RegisterRequest(token="boot-1", public_key="pk-" + hostname, hostname=hostname)
        )
    return resp.node_id, resp.node_secret_key


# --- registration -------------------------------------------------------------------


async def test_register_returns_node_id_mesh_ip_signing_key_and_node_token(
    emulator: Emulator, anonymous: ControlPlane
) -> None:
    resp = await anonymous.register(
        RegisterRequest(token="boot-2", public_key="pk", hostname="web-1", metadata={"a": "b"})
    )
    assert resp.node_id == "node-1"
    assert resp.mesh_ip == "10.99.0.1"
    assert resp.signing_public_key == emulator.signing_public_key
    assert resp.node_secret_key == emulator.node("node-1").token
    node = emulator.node(resp.node_id)
    assert (node.hostname, node.public_key, node.metadata) == ("web-1", "pk", {"a": "b"})


async def test_register_with_an_unknown_bootstrap_token_is_401(
    emulator: Emulator, anonymous: ControlPlane
) -> None:
    with pytest.raises(UnauthorizedError):
        await anonymous.register(RegisterRequest(token="nope", public_key="pk", hostname="h"))
    assert emulator.nodes == {}


async def test_register_lists_the_other_nodes_as_peers(anonymous: ControlPlane) -> None:
    first = await anonymous.register(RegisterRequest(token="boot-1", public_key="pk1"))
    second = await anonymous.register(RegisterRequest(token="boot-1", public_key="pk2"))
    assert first.peers == []
    assert [(p.id, p.public_key, p.allowed_ips) for p in second.peers] == [
        (first.node_id, "pk1", [f"{first.mesh_ip}/32"])
    ]


async def test_a_generated_bootstrap_token_is_accepted() -> None:
    async with Emulator() as emulator, emulator.client() as client:
        resp = await client.register(RegisterRequest(token=emulator.bootstrap_token))
    assert resp.node_id == "node-1"


async def test_the_node_token_is_not_in_the_node_repr(emulator: Emulator) -> None:
    node_id, token = emulator.register_node("web-1")
    assert token not in repr(emulator.node(node_id))


# --- authorization ----------------------------------------------------------------------


async def test_a_node_call_without_a_token_is_401(
    emulator: Emulator, anonymous: ControlPlane
) -> None:
    node_id, _ = emulator.register_node()
    with pytest.raises(UnauthorizedError):
        await anonymous.fetch_state(node_id)


async def test_an_unknown_token_is_401(emulator: Emulator) -> None:
    node_id, _ = emulator.register_node()
    async with emulator.client("not-a-token") as client:
        with pytest.raises(UnauthorizedError):
            await client.fetch_state(node_id)


async def test_a_node_token_cannot_touch_another_node(emulator: Emulator) -> None:
    node_a, token_a = emulator.register_node("a")
    node_b, _ = emulator.register_node("b")
    async with emulator.client(token_a) as client:
        with pytest.raises(ForbiddenError):
            await client.fetch_state(node_b)
        with pytest.raises(ForbiddenError):
            await client.report_logs(node_b, [LogEntry(timestamp=NOW, message="x")])
        with pytest.raises(ForbiddenError):
            await client.rotate_keys(KeyRotateRequest(node_id=node_b, new_public_key="evil"))
        await client.fetch_state(node_a)
    assert emulator.node(node_b).logs == []
    assert emulator.node(node_b).public_key != "evil"


async def test_an_unknown_node_is_404(emulator: Emulator) -> None:
    _, token = emulator.register_node()
    async with emulator.client(token) as client:
        with pytest.raises(NotFoundError):
            await client.fetch_state("node-99")


async def test_a_node_id_with_a_slash_or_dots_addresses_no_other_node(emulator: Emulator) -> None:
    node_id, token = emulator.register_node()
    async with emulator.client(token) as client:
        for tricky in (f"../nodes/{node_id}", f"{node_id}/state", "..", f"{node_id}?x=1"):
            with pytest.raises(NotFoundError):
                await client.fetch_state(tricky)
    assert [call.node_id for call in emulator.calls] == [
        f"../nodes/{node_id}", f"{node_id}/state", "..", f"{node_id}?x=1"
    ]  # fmt: skip


async def test_after_deregister_the_node_token_is_401(emulator: Emulator) -> None:
    node_id, token = await register(emulator)
    async with emulator.client(token) as client:
        await client.deregister(node_id)
        with pytest.raises(UnauthorizedError):
            await client.fetch_state(node_id)
    assert node_id not in emulator.nodes


async def test_the_artifact_endpoint_needs_a_node_token(
    emulator: Emulator, anonymous: ControlPlane
) -> None:
    with pytest.raises(UnauthorizedError):
        async with anonymous.fetch_artifact("1.0.0", "linux", "amd64"):
            pass


async def test_ping_needs_no_token(anonymous: ControlPlane) -> None:
    await anonymous.ping()


# --- heartbeat, state, secrets ------------------------------------------------------------


async def test_heartbeat_is_recorded_and_answers_the_flags_set_from_python(
    emulator: Emulator,
) -> None:
    node_id, token = await register(emulator)
    async with emulator.client(token) as client:
        beat = HeartbeatRequest(node_id=node_id, timestamp=NOW, status="healthy", uptime="1m")
        first = await client.heartbeat(node_id, beat)
        emulator.node(node_id).reconcile = True
        emulator.node(node_id).rotate_keys = True
        second = await client.heartbeat(node_id, beat)
    assert (first.reconcile, first.rotate_keys) == (False, False)
    assert (second.reconcile, second.rotate_keys) == (True, True)
    assert [b.status for b in emulator.node(node_id).heartbeats] == ["healthy", "healthy"]
    assert emulator.node(node_id).heartbeats[0].timestamp == NOW


async def test_fetching_state_clears_reconcile_and_rotating_keys_clears_rotate_keys(
    emulator: Emulator,
) -> None:
    node_id, token = await register(emulator)
    node = emulator.node(node_id)
    node.reconcile = node.rotate_keys = True
    async with emulator.client(token) as client:
        await client.fetch_state(node_id)
        assert (node.reconcile, node.rotate_keys) == (False, True)
        await client.rotate_keys(KeyRotateRequest(node_id=node_id, new_public_key="pk-new"))
        beat = await client.heartbeat(node_id, HeartbeatRequest(node_id=node_id, timestamp=NOW))
    assert (beat.reconcile, beat.rotate_keys) == (False, False)
    assert node.public_key == "pk-new"


async def test_heartbeat_for_another_node_id_in_the_body_is_400(emulator: Emulator) -> None:
    node_id, token = await register(emulator)
    async with emulator.client(token) as client:
        with pytest.raises(BadRequestError):
            await client.heartbeat(node_id, HeartbeatRequest(node_id="node-7", timestamp=NOW))


async def test_state_has_peers_policies_signing_keys_data_and_secret_refs(
    emulator: Emulator,
) -> None:
    node_id, token = await register(emulator, "a")
    peer_id, _ = await register(emulator, "b")
    node = emulator.node(node_id)
    node.policies = [Policy(id="p1", rules=[PolicyRule(src="a", dst="b", port=22)])]
    emulator.put_data(node_id, "cfg", {"x": 1})
    emulator.put_data(node_id, "cfg", {"x": 2})
    emulator.put_secret(node_id, "db", "s3cret")
    async with emulator.client(token) as client:
        state = await client.fetch_state(node_id)
    assert [p.id for p in state.peers] == [peer_id]
    assert state.policies == node.policies
    assert state.signing_keys is not None
    assert state.signing_keys.current == emulator.signing_public_key
    assert [(d.key, bytes(d.payload), d.version) for d in state.data] == [("cfg", b'{"x":2}', 2)]
    assert [(s.key, s.version) for s in state.secret_refs] == [("db", 1)]


async def test_fetch_secret_returns_it_and_an_unknown_key_is_404(emulator: Emulator) -> None:
    node_id, token = await register(emulator)
    emulator.put_secret(node_id, "db/password", "s3cret")
    emulator.put_secret(node_id, "db/password", b"s3cret\x00v2")
    async with emulator.client(token) as client:
        secret = await client.fetch_secret(node_id, "db/password")
        with pytest.raises(NotFoundError):
            await client.fetch_secret(node_id, "other")
    assert (secret.key, secret.version) == ("db/password", 2)
    assert decrypt_secret(token, secret) == b"s3cret\x00v2"


async def test_a_secret_is_aes_256_gcm_with_the_key_string_bytes_and_a_12_byte_nonce(
    emulator: Emulator,
) -> None:
    # Decrypted here by hand, as plexd's Go agent does, not by the library's helper.
    node_id, token = await register(emulator)
    secret = emulator.put_secret(node_id, "api-key", "value-1")
    nonce = base64.b64decode(secret.nonce, validate=True)
    sealed = base64.b64decode(secret.ciphertext, validate=True)
    assert len(nonce) == 12
    assert len(sealed) == len(b"value-1") + 16
    assert AESGCM(token.encode()).decrypt(nonce, sealed, None) == b"value-1"
    again = emulator.put_secret(node_id, "api-key", "value-1")
    assert again.nonce != secret.nonce


async def test_the_node_secret_key_is_32_url_safe_characters(emulator: Emulator) -> None:
    keys = [(await register(emulator, f"n{i}"))[1] for i in range(20)]
    assert all(len(key) == 32 for key in keys)
    assert all(set(key) <= URL_SAFE for key in keys)
    assert len(set(keys)) == 20


# --- reports ------------------------------------------------------------------------------


async def test_metrics_logs_and_audit_batches_are_stored_and_counted(emulator: Emulator) -> None:
    node_id, token = await register(emulator)
    metrics = [
        MetricPoint(timestamp=NOW, group="cpu", data=raw_json({"load": i})) for i in range(50)
    ]
    async with emulator.client(token) as client:
        await client.report_metrics(node_id, metrics)  # > 1 KiB: sent gzip-compressed
        await client.report_logs(node_id, [LogEntry(timestamp=NOW, message="hello")])
        await client.report_audit(
            node_id, [AuditEntry(timestamp=NOW, action="login", subject=raw_json({"u": 1}))]
        )
    node = emulator.node(node_id)
    assert [bytes(m.data) for m in node.metrics] == [bytes(m.data) for m in metrics]
    assert node.logs[0].message == "hello"
    assert bytes(node.audit[0].subject) == b'{"u":1}'
    counts = emulator.counts(node_id)
    assert (counts["metrics"], counts["logs"], counts["audit"]) == (50, 1, 1)
    metrics_call = next(c for c in emulator.calls if c.path.endswith("/metrics"))
    assert metrics_call.headers.get("Content-Encoding") == "gzip"
    assert len(metrics_call.body) == 50


async def test_drift_reports_and_execution_ack_and_result_are_stored(emulator: Emulator) -> None:
    node_id, token = await register(emulator)
    async with emulator.client(token) as client:
        await client.report_drift(
            node_id,
            DriftReport(timestamp=NOW, corrections=[DriftCorrection(type="peer", detail="d")]),
        )
        await client.sync_reports(
            node_id,
            ReportSyncRequest(
                entries=[ReportEntry(key="k1", payload=raw_json([1])), ReportEntry(key="k2")]
            ),
        )
        await client.sync_reports(node_id, ReportSyncRequest(deleted=["k2"]))
        await client.ack_execution(node_id, "ex/1", ExecutionAck(status="accepted"))
        await client.report_result(
            node_id, "ex/1", ExecutionResult(execution_id="ex/1", exit_code=3, finished_at=NOW)
        )
    node = emulator.node(node_id)
    assert node.drift[0].corrections[0].detail == "d"
    assert list(node.reports) == ["k1"]
    assert node.acks["ex/1"].status == "accepted"
    assert node.results["ex/1"].exit_code == 3


async def test_an_execution_id_in_the_body_that_differs_from_the_path_is_400(
    emulator: Emulator,
) -> None:
    node_id, token = await register(emulator)
    async with emulator.client(token) as client:
        with pytest.raises(BadRequestError):
            await client.ack_execution(node_id, "ex-1", ExecutionAck(execution_id="ex-2"))


async def test_capabilities_are_stored_and_endpoint_reports_return_the_peers_endpoints(
    emulator: Emulator,
) -> None:
    node_a, token_a = await register(emulator, "a")
    node_b, token_b = await register(emulator, "b")
    async with emulator.client(token_a) as client_a, emulator.client(token_b) as client_b:
        await client_a.update_capabilities(node_a, CapabilitiesPayload(hooks=[]))
        first = await client_a.report_endpoint(node_a, EndpointReport(public_endpoint="1.2.3.4:1"))
        second = await client_b.report_endpoint(node_b, EndpointReport(public_endpoint="5.6.7.8:2"))
    assert emulator.node(node_a).capabilities == CapabilitiesPayload(hooks=[])
    assert first.peer_endpoints == []
    assert [(p.peer_id, p.endpoint) for p in second.peer_endpoints] == [(node_a, "1.2.3.4:1")]


async def test_a_body_that_is_not_json_is_400(emulator: Emulator) -> None:
    node_id, token = emulator.register_node()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{emulator.url}/v1/nodes/{node_id}/logs",
            data=b"[{not json",
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        assert resp.status == 400
        assert resp.content_type == "application/problem+json"


async def test_calls_are_recorded_with_method_path_node_and_body(emulator: Emulator) -> None:
    node_id, token = await register(emulator)
    async with emulator.client(token) as client:
        await client.report_logs(node_id, [LogEntry(timestamp=NOW, message="m")])
    register_call, logs_call = emulator.calls
    assert (register_call.method, register_call.path, register_call.node_id) == (
        "POST", "/v1/register", None
    )  # fmt: skip
    assert register_call.status == 200
    assert (logs_call.method, logs_call.path, logs_call.node_id, logs_call.status) == (
        "POST", f"/v1/nodes/{node_id}/logs", node_id, 204
    )  # fmt: skip
    assert logs_call.body[0]["message"] == "m"
    assert logs_call.bearer_token == token
    assert token not in repr(logs_call)
    assert "boot-1" not in repr(register_call)


# --- artifacts -----------------------------------------------------------------------------


async def test_an_artifact_has_its_sha256_in_a_header_and_a_content_length(
    emulator: Emulator,
) -> None:
    _, token = emulator.register_node()
    async with (
        emulator.client(token) as client,
        client.fetch_artifact("1.2.3", "linux", "arm64") as artifact,
    ):
        body = b"".join([chunk async for chunk in artifact.iter_chunks()])
        headers = dict(artifact.headers)
        length = artifact.content_length
    assert length == len(body) == 4096
    assert headers[CHECKSUM_HEADER] == hashlib.sha256(body).hexdigest()
    assert body == emulator.artifact("1.2.3", "linux", "arm64")


@pytest.mark.parametrize(
    ("asked", "status", "content_range", "part"),
    [
        ("bytes=1000-", 206, "bytes 1000-4095/4096", slice(1000, None)),
        ("bytes=0-99", 206, "bytes 0-99/4096", slice(0, 100)),
        ("bytes=-96", 206, "bytes 4000-4095/4096", slice(4000, None)),
        ("bytes=4000-9999", 206, "bytes 4000-4095/4096", slice(4000, None)),
        ("bytes=4096-", 416, "bytes */4096", slice(0, 0)),
        ("bytes=x-y", 200, None, slice(None)),  # does not parse: ignored, the whole blob
    ],
)
async def test_an_artifact_honours_one_byte_range(
    emulator: Emulator, asked: str, status: int, content_range: str | None, part: slice
) -> None:
    _, token = emulator.register_node()
    blob = emulator.artifact("1.2.3", "linux", "arm64")
    url = f"{emulator.url}/v1/artifacts/plexd/1.2.3/linux/arm64"
    headers = {"Authorization": f"Bearer {token}", "Range": asked}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        body = await response.read()
        assert response.status == status
        assert response.headers.get("Content-Range") == content_range
        # The digest is of the whole artifact, whatever part is sent.
        assert response.headers[CHECKSUM_HEADER] == hashlib.sha256(blob).hexdigest()
    assert body == (blob[part] if status != 416 else b"")


async def test_artifacts_are_deterministic_and_differ_per_platform() -> None:
    async with Emulator(artifact_size=64) as one, Emulator(artifact_size=64) as two:
        assert one.artifact("1", "linux", "amd64") == two.artifact("1", "linux", "amd64")
        assert one.artifact("1", "linux", "amd64") != one.artifact("1", "linux", "arm64")


# --- faults on plain requests ----------------------------------------------------------------


async def test_the_next_n_requests_fail_with_5xx_then_succeed(emulator: Emulator) -> None:
    node_id, token = await register(emulator)
    emulator.set_faults(node_id, status=503, status_scope="all", status_count=2)
    async with emulator.client(token) as client:
        for _ in range(2):
            with pytest.raises(ServerError) as caught:
                await client.fetch_state(node_id, max_retries=0)
            assert caught.value.status_code == 503
        await client.fetch_state(node_id)
    assert [c.status for c in emulator.calls[1:]] == [503, 503, 200]


async def test_a_status_fault_for_all_endpoints_carries_retry_after(emulator: Emulator) -> None:
    node_id, token = await register(emulator)
    emulator.set_faults(node_id, status=429, status_scope="all", retry_after="7")
    async with emulator.client(token) as client:
        for _ in range(3):
            with pytest.raises(RateLimitError) as caught:
                await client.heartbeat(
                    node_id, HeartbeatRequest(node_id=node_id, timestamp=NOW), max_retries=0
                )
            assert caught.value.retry_after == 7
        emulator.clear_faults(node_id)
        await client.heartbeat(node_id, HeartbeatRequest(node_id=node_id, timestamp=NOW))


async def test_faults_of_every_node_apply_to_unauthenticated_calls_too(
    emulator: Emulator, anonymous: ControlPlane
) -> None:
    emulator.set_faults("*", status=502, status_scope="all", status_count=1)
    with pytest.raises(ServerError):
        await anonymous.ping(max_retries=0)
    await anonymous.ping()


async def test_a_fault_of_one_node_leaves_other_nodes_alone(emulator: Emulator) -> None:
    node_a, _ = await register(emulator, "a")
    node_b, token_b = await register(emulator, "b")
    emulator.set_faults(node_a, status=500, status_scope="all")
    async with emulator.client(token_b) as client:
        await client.fetch_state(node_b)


async def test_invalid_faults_are_rejected(emulator: Emulator) -> None:
    with pytest.raises(msgspec.ValidationError):
        emulator.set_faults("node-1", corrupt_signatures=-1)
    with pytest.raises(msgspec.ValidationError):
        emulator.set_faults("node-1", status=42)
    assert emulator.faults("node-1").corrupt_signatures == 0


# --- the admin API ----------------------------------------------------------------------------


async def test_admin_endpoint_sets_and_clears_faults(emulator: Emulator) -> None:
    node_id, token = await register(emulator)
    admin = f"{emulator.url}/_emulator/faults/{node_id}"
    async with aiohttp.ClientSession() as session:
        async with session.post(admin, json={"status": 503, "status_scope": "all"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == 503
        async with emulator.client(token) as client:
            with pytest.raises(ServerError):
                await client.fetch_state(node_id, max_retries=0)
            async with session.delete(admin) as resp:
                assert resp.status == 200
            await client.fetch_state(node_id)
        async with session.post(admin, json={"no_such_fault": 1}) as resp:
            assert resp.status == 400


async def test_admin_endpoint_publishes_events_and_lists_nodes(emulator: Emulator) -> None:
    node_id, _ = emulator.register_node("web-1")
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{emulator.url}/_emulator/nodes/{node_id}/events",
            json=[{"event_type": "peer_added", "payload": {"id": "p"}}, {"event_type": "x"}],
        ) as resp:
            assert await resp.json() == {"ids": [1, 2]}
        async with session.get(f"{emulator.url}/_emulator/nodes") as resp:
            listing = await resp.json()
    assert [e.event_type for e in emulator.events(node_id)] == ["peer_added", "x"]
    assert bytes(emulator.events(node_id)[0].payload) == b'{"id":"p"}'
    assert listing["nodes"][0]["id"] == node_id
    assert listing["nodes"][0]["events"] == 2


async def test_admin_endpoint_sets_heartbeat_flags(emulator: Emulator) -> None:
    node_id, _ = emulator.register_node()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{emulator.url}/_emulator/nodes/{node_id}/flags", json={"reconcile": True}
        ) as resp,
    ):
        assert await resp.json() == {"reconcile": True, "rotate_keys": False}
    assert emulator.node(node_id).reconcile


async def test_admin_calls_are_neither_recorded_nor_faulted(emulator: Emulator) -> None:
    emulator.set_faults("*", status=500, status_scope="all")
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{emulator.url}/_emulator/nodes") as resp,
    ):
        assert resp.status == 200
    assert emulator.calls == []


async def test_admin_api_with_an_admin_token_rejects_requests_without_it() -> None:
    async with Emulator(admin_token="adm") as emulator, aiohttp.ClientSession() as session:
        url = f"{emulator.url}/_emulator/nodes"
        async with session.get(url) as resp:
            assert resp.status == 401
        async with session.get(url, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        async with session.get(url, headers={"Authorization": "Bearer adm"}) as resp:
            assert resp.status == 200


async def test_node_tokens_do_not_open_the_admin_api() -> None:
    async with Emulator(admin_token="adm") as emulator, aiohttp.ClientSession() as session:
        _, token = emulator.register_node()
        async with session.get(
            f"{emulator.url}/_emulator/nodes", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 401


# --- TLS -----------------------------------------------------------------------------------------


async def test_tls_mode_serves_https_with_a_certificate_from_the_written_ca(
    tmp_path: Path,
) -> None:
    async with Emulator(tls=True, tls_dir=tmp_path) as emulator:
        assert emulator.url.startswith("https://127.0.0.1:")
        assert emulator.ca_file == tmp_path / "ca.pem"
        context = emulator.client_ssl_context()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{emulator.url}/v1/ping", ssl=context) as resp:
                assert resp.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(f"{emulator.url}/v1/ping", ssl=ssl.create_default_context()):
                    pass


async def test_tls_mode_is_refused_by_a_client_that_does_not_trust_the_ca() -> None:
    async with Emulator(tls=True) as emulator:
        assert emulator.ca_file is not None and emulator.ca_file.exists()
        async with emulator_client(emulator.url) as client:
            with pytest.raises(APIConnectionError):
                await client.ping()
        ca_dir = emulator.ca_file.parent
    assert not ca_dir.exists()
    assert emulator.ca_file is None


# --- bad input, the admin guard, the command line ---------------------------------------


async def test_a_gzip_body_that_inflates_past_the_cap_is_413(emulator: Emulator) -> None:
    node_id, token = emulator.register_node()
    bomb = gzip.compress(b"[" + b" " * (MAX_REQUEST_BODY + 1) + b"]")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{emulator.url}/v1/nodes/{node_id}/logs",
            data=bomb,
            headers={"Authorization": f"Bearer {token}", "Content-Encoding": "gzip"},
        ) as resp,
    ):
        assert resp.status == 413
    assert emulator.node(node_id).logs == []


@pytest.mark.parametrize(
    ("remote", "loopback"),
    [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("10.0.0.1", False),
     ("::ffff:10.0.0.1", False), ("", False), (None, False), ("not-an-ip", False)],
)  # fmt: skip
def test_only_loopback_peers_count_as_local(remote: str | None, loopback: bool) -> None:
    assert is_loopback(remote) is loopback


async def test_python_dash_m_runs_the_emulator_until_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "plexd.emulator", "--port", "0", "--token", "cli-token",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            banner = (await process.stdout.readline()).decode()
            url = banner.rsplit(" ", 1)[-1].strip()
            async with emulator_client(url) as client:
                reg = await client.register(RegisterRequest(token="cli-token"))
            process.send_signal(signal.SIGTERM)
            rest = await process.stdout.read()
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert banner.startswith("plexd emulator listening on http://127.0.0.1:")
    assert reg.node_id == "node-1"
    # The same banner as plexd-api emulator: lines to paste into the node's shell.
    assert b"\nexport PLEXD_BOOTSTRAP_TOKEN=cli-token\n" in rest
    assert rest.startswith(f"admin API: {url}/_emulator/ (loopback clients only)\n".encode())


def emulator_client(url: str) -> ControlPlane:
    return ControlPlane(Config(base_url=url), "test")
