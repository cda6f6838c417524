import pytest

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
