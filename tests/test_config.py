import pytest
from hypothesis import given
from hypothesis import strategies as st

from plexd.api import Config, ConfigError, PlexdError


def test_zero_timeouts_take_the_defaults() -> None:
    config = Config(base_url="https://cp.example")
    config.apply_defaults()
    assert (config.connect_timeout, config.request_timeout, config.sse_idle_timeout) == (
        10,
        30,
        90,
    )


def test_explicit_timeouts_are_kept() -> None:
    config = Config(base_url="https://cp.example", connect_timeout=1, request_timeout=2)
    config.apply_defaults()
    assert (config.connect_timeout, config.request_timeout, config.sse_idle_timeout) == (1, 2, 90)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (Config(base_url=""), "base_url"),
        (Config(base_url="ftp://cp.example"), "base_url"),
        (Config(base_url="cp.example"), "base_url"),
        (Config(base_url="https://cp.example", connect_timeout=-1), "connect_timeout"),
        (Config(base_url="https://cp.example", request_timeout=-0.5), "request_timeout"),
        (Config(base_url="https://cp.example", sse_idle_timeout=-3), "sse_idle_timeout"),
    ],
)
def test_validate_names_the_field(config: Config, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.validate()
    assert str(info.value).startswith(field)
    assert isinstance(info.value, PlexdError)
    assert isinstance(info.value, ValueError)


def test_valid_config_with_path_prefix_passes() -> None:
    Config(base_url="https://cp.example/api/").validate()
    Config(base_url="http://127.0.0.1:8080").validate()


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        ("https://user:hunter2@cp.example", "user or password"),
        ("https://user@cp.example/api", "user or password"),
        ("https://:hunter2@cp.example", "user or password"),
        ("https://user:hun@ter2@cp.example", "user or password"),
        ("https://user:hunter2@", "user or password"),
        ("https://cp.example/api?tenant=7", "query or fragment"),
        ("https://cp.example?", "query or fragment"),
        ("https://cp.example/#top", "query or fragment"),
        ("https://cp.example/a b", "whitespace or a control character"),
        ("https://cp.example/\r\n", "whitespace or a control character"),
        ("https://cp.exa\x00mple", "whitespace or a control character"),
        ("https://[::1", "not a usable URL"),
        ("https://cp.example:99999", "not a usable URL"),
        ("https://cp.example:port", "not a usable URL"),
        ("https://cp.example:0", "port 0"),
        ("https:///path", "no host"),
    ],
)
def test_a_base_url_the_client_cannot_use_is_refused(base_url: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        Config(base_url=base_url).validate()
    assert str(info.value).startswith("base_url: ")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("field", ["connect_timeout", "request_timeout", "sse_idle_timeout"])
@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf"), -1e-9, "5", None, True]
)
def test_a_timeout_that_is_not_a_finite_non_negative_number_is_refused(
    field: str, value: object
) -> None:
    config = Config(base_url="https://cp.example", **{field: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        config.validate()


def test_tls_insecure_skip_verify_must_be_a_bool() -> None:
    config = Config(base_url="https://cp.example", tls_insecure_skip_verify="false")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^tls_insecure_skip_verify: "):
        config.validate()


@given(user=st.text(), password=st.text())
def test_repr_of_a_config_never_shows_the_url_password(user: str, password: str) -> None:
    config = Config(base_url=f"https://{user}:{password}@cp.example/api", request_timeout=5)
    assert repr(config) == (
        "Config(base_url='https://***@cp.example/api', tls_insecure_skip_verify=False, "
        "connect_timeout=0, request_timeout=5, sse_idle_timeout=0, max_retries=2, "
        "retry_base_delay=0, retry_max_delay=0, token='', ca_file=None, client_cert=None, "
        "client_key=None, proxy=None, trust_env=False)"
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("see http://u:p@h/x and https://tok@h2/y", "see http://***@h/x and https://***@h2/y"),
        ("GET http://u:p@ss:w@rd@h/x: boom", "GET http://***@h/x: boom"),
        ("mail me@host.example", "mail me@host.example"),
        ("http://h/a@b", "http://h/a@b"),
    ],
)
def test_redact_url_masks_all_user_information_in_a_text(text: str, shown: str) -> None:
    from plexd.api._config import redact_url

    assert redact_url(text) == shown
