"""Every name of API.md is importable from plexd.api, and nothing else leaks in __all__."""

import inspect
import pathlib
import types

import plexd.api

API_MD_NAMES = [
    "Config",
    "ConfigError",
    "ControlPlane",
    "EventStreamResponse",
    "ArtifactStream",
    "PlexdError",
    "APIError",
    "BadRequestError",
    "UnauthorizedError",
    "ForbiddenError",
    "NotFoundError",
    "ConflictError",
    "PayloadTooLargeError",
    "RateLimitError",
    "ServerError",
    "APIConnectionError",
    "APITimeoutError",
    "RegisterRequest",
    "RegisterResponse",
    "Peer",
    "HeartbeatRequest",
    "MeshInfo",
    "NATInfo",
    "HeartbeatResponse",
    "StateResponse",
    "Policy",
    "PolicyRule",
    "SigningKeys",
    "DataEntry",
    "SecretRef",
    "SecretResponse",
    "DriftReport",
    "DriftCorrection",
    "ReportSyncRequest",
    "ReportEntry",
    "ExecutionAck",
    "ExecutionResult",
    "TriggeredBy",
    "MetricPoint",
    "LogEntry",
    "AuditEntry",
    "CapabilitiesPayload",
    "BinaryInfo",
    "ActionInfo",
    "ActionParam",
    "HookInfo",
    "EndpointReport",
    "EndpointResponse",
    "PeerEndpoint",
    "KeyRotateRequest",
    "KeyRotateResponse",
    "EventType",
    "SignedEnvelope",
    "parse_envelope",
    "EnvelopeError",
    "SSEEvent",
    "SSEParser",
    "SSEProtocolError",
    "SSEIdleTimeoutError",
    "SSEStream",
    "EventSource",
    "EventVerifier",
    "VerificationError",
    "NoOpVerifier",
    "NonceStore",
    "Ed25519Verifier",
    "canonical_bytes",
    "EventHandler",
    "EventDispatcher",
    "FailureAction",
    "classify_error",
    "ConnectionState",
    "ReconnectEngine",
    "SSEManager",
    "decrypt_secret",
]


def test_every_api_md_name_is_exported() -> None:
    missing = [name for name in API_MD_NAMES if name not in plexd.api.__all__]
    assert missing == []
    for name in API_MD_NAMES:
        assert getattr(plexd.api, name) is not None


def test_public_classes_and_functions_have_docstrings() -> None:
    undocumented = [
        name
        for name in plexd.api.__all__
        if (inspect.isclass(obj := getattr(plexd.api, name)) or inspect.isfunction(obj))
        and not inspect.getdoc(obj)
    ]
    assert undocumented == []


def test_event_type_has_the_twelve_wire_values() -> None:
    assert len(plexd.api.EventType) == 12
    assert plexd.api.EventType.PEER_ADDED == "peer_added"


def test_all_is_exactly_the_public_names() -> None:
    # As httpx's test_exported_members: nothing public is left out of __all__, and
    # __all__ names nothing that is not there. Submodules are not names of the API.
    public = {
        name
        for name, value in vars(plexd.api).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public | {"__version__"} == set(plexd.api.__all__)
    assert len(plexd.api.__all__) == len(set(plexd.api.__all__))


def test_modules_are_private_but_errors() -> None:
    package = pathlib.Path(plexd.api.__file__).parent
    modules = {path.stem for path in package.glob("*.py")} - {"__init__"}
    assert {name for name in modules if not name.startswith("_")} <= {"errors", "sync"}


# API.md, "Additions: sync API, retries, options" (the names of the request half).
ADDED_NAMES = ["ArtifactDownload", "CONFIG_ENV_VARIABLES"]


def test_the_added_names_are_exported() -> None:
    assert [name for name in ADDED_NAMES if name not in plexd.api.__all__] == []
    assert plexd.api.Config("http://cp.example").max_retries == 2
    assert inspect.ismethod(plexd.api.Config.from_env)
    assert plexd.api.APIError(500, "").correlation_id == ""


def test_every_endpoint_method_takes_a_keyword_only_max_retries() -> None:
    # connect_sse is the one left out: its reconnections are SSEManager's and EventSource's.
    endpoints = [
        name
        for name, member in vars(plexd.api.ControlPlane).items()
        if not name.startswith("_")
        and inspect.isfunction(member)
        and name not in {"connect_sse", "set_auth_token", "aclose"}
    ]
    assert len(endpoints) == 19
    for name in endpoints:
        parameter = inspect.signature(getattr(plexd.api.ControlPlane, name)).parameters.get(
            "max_retries"
        )
        assert parameter is not None, name
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, name
        assert parameter.default is None, name


def test_the_sync_module_exports_the_blocking_classes() -> None:
    from plexd.api import sync

    assert set(sync.__all__) == {
        "ControlPlane",
        "SSEManager",
        "EventSource",
        "EventStreamResponse",
        "ArtifactStream",
        "LOOP_THREAD_NAME",
    }
    public = {name for name in vars(sync) if not name.startswith("_")}
    assert set(sync.__all__) <= public
    for name in set(sync.__all__) - {"LOOP_THREAD_NAME"}:
        assert inspect.getdoc(getattr(sync, name))
    # The blocking client has every public method of the asyncio one but the
    # coroutine-only lifecycle, which `with` and close() replace.
    asynchronous = {name for name in dir(plexd.api.ControlPlane) if not name.startswith("_")} - {
        "aclose"
    }
    assert asynchronous <= set(dir(sync.ControlPlane))
    for name in asynchronous:
        assert inspect.getdoc(getattr(sync.ControlPlane, name)), name
    manager_methods = {
        name
        for name in dir(plexd.api.SSEManager)
        if name.startswith(("set_", "register_")) or name in {"shutdown", "state"}
    }
    assert manager_methods <= set(dir(sync.SSEManager))
