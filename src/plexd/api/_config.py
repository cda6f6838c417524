"""Declarations, above ``errors``: the client configuration (where the control plane
is, how long to wait for it, how to reach it), read from the environment by
:meth:`Config.from_env`, and how a URL is shown without its secrets."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

from yarl import URL

from .errors import MASK, ConfigError

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_SSE_IDLE_TIMEOUT = 90.0
# The retry rules: 2 retries, waits from 0.5 s doubling up to 8 s.
DEFAULT_MAX_RETRIES = 2
DEFAULT_RETRY_BASE_DELAY = 0.5
DEFAULT_RETRY_MAX_DELAY = 8.0

_TIMEOUT_DEFAULTS = {
    "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
    "request_timeout": DEFAULT_REQUEST_TIMEOUT,
    "sse_idle_timeout": DEFAULT_SSE_IDLE_TIMEOUT,
    "retry_base_delay": DEFAULT_RETRY_BASE_DELAY,
    "retry_max_delay": DEFAULT_RETRY_MAX_DELAY,
}
_FILE_FIELDS = ("ca_file", "client_cert", "client_key")

CONFIG_ENV_VARIABLES: Mapping[str, str] = {
    "base_url": "PLEXD_BASE_URL",
    "token": "PLEXD_TOKEN",
    "ca_file": "PLEXD_CA_FILE",
    "client_cert": "PLEXD_CLIENT_CERT",
    "client_key": "PLEXD_CLIENT_KEY",
    "proxy": "PLEXD_PROXY",
    "trust_env": "PLEXD_TRUST_ENV",
    "request_timeout": "PLEXD_TIMEOUT",
    "max_retries": "PLEXD_MAX_RETRIES",
}
"""The environment variable :meth:`Config.from_env` reads for each field (the CLI's
options stand for the same ones)."""
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

# The user information of "scheme://user:password@host" (or of "scheme://token@host") in
# a text: with a password, everything up to the last "@" before a space, so that a
# password with an unencoded "@", ":" or "/" is covered too (at worst more is masked).
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^\s/?#:@]*:\S*|[^\s/?#:@]+)@")
_URL_USERINFO_MASK = rf"\1{MASK}@"
# What no URL may hold: whitespace, C0 controls and DEL (a URL parser would silently
# drop or re-encode them, so the URL used would not be the one configured).
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")


def redact_url(text: str) -> str:
    """``text`` with the user information (a password, or a token in the user's place)
    of every URL in it replaced by ``***``."""
    return _URL_USERINFO.sub(_URL_USERINFO_MASK, text)


@dataclass(repr=False)
class Config:
    """Settings of a :class:`ControlPlane`. Timeouts and delays are in seconds; 0 means
    the default.

    - ``max_retries``: how many times a failed request call is tried again (0: never);
      ``retry_base_delay`` and ``retry_max_delay`` shape the wait between tries
      (0.5 s doubling up to 8 s by default).
    - ``token``: the bearer token the client starts with (``set_auth_token`` changes it).
    - ``ca_file``: a PEM file of CA certificates trusted besides the system's.
    - ``client_cert``, ``client_key``: the client certificate (PEM; the key may be in
      the certificate file) shown to a server that asks for one (mutual TLS). The key
      must not be encrypted.
    - ``proxy``: an ``http://`` proxy every request goes through (HTTPS through a
      CONNECT tunnel); ``trust_env`` takes the proxy from ``HTTPS_PROXY`` /
      ``HTTP_PROXY`` / ``ALL_PROXY`` and honours ``NO_PROXY`` when ``proxy`` is not set.
    """

    base_url: str
    tls_insecure_skip_verify: bool = False
    connect_timeout: float = 0
    request_timeout: float = 0
    sse_idle_timeout: float = 0
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_base_delay: float = 0
    retry_max_delay: float = 0
    token: str = ""
    ca_file: str | os.PathLike[str] | None = None
    client_cert: str | os.PathLike[str] | None = None
    client_key: str | os.PathLike[str] | None = None
    proxy: str | None = None
    trust_env: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """A Config from the ``PLEXD_*`` variables of ``environ`` (default: ``os.environ``).

        ``PLEXD_BASE_URL`` (required), ``PLEXD_TOKEN``, ``PLEXD_CA_FILE``,
        ``PLEXD_CLIENT_CERT``, ``PLEXD_CLIENT_KEY``, ``PLEXD_PROXY``, ``PLEXD_TRUST_ENV``
        (1/true/yes/on or 0/false/no/off), ``PLEXD_TIMEOUT`` (seconds, the request
        timeout), ``PLEXD_MAX_RETRIES``. An empty variable counts as unset. Raises
        :class:`ConfigError` naming the variable when one cannot be read; the values are
        checked by :meth:`validate` (which ``ControlPlane`` runs).
        """
        env = os.environ if environ is None else environ
        values = {
            name: value
            for name, var in CONFIG_ENV_VARIABLES.items()
            if (value := env.get(var, ""))
        }
        if "base_url" not in values:
            raise ConfigError(
                "PLEXD_BASE_URL: not set (the control plane's URL, e.g. https://cp.example.com)"
            )
        config = cls(base_url=values.pop("base_url"))
        for name, text in values.items():
            setattr(config, name, _from_text(name, text))
        return config

    def apply_defaults(self) -> None:
        """Replace every zero timeout and retry delay with its default (10 s connect,
        30 s request, 90 s SSE idle; 0.5 s and 8 s between retries)."""
        for name, default in _TIMEOUT_DEFAULTS.items():
            if getattr(self, name) == 0:
                setattr(self, name, default)

    def __repr__(self) -> str:
        # Built before validate(): a base_url may still hold a password here.
        items = ", ".join(
            f"{f.name}={_shown(f.name, getattr(self, f.name))!r}" for f in fields(self)
        )
        return f"Config({items})"

    def validate(self) -> None:
        """Raise :class:`ConfigError`, naming the field, when a setting cannot work.

        ``base_url`` must be an absolute http(s) URL with a host and nothing the client
        cannot use: no user or password (the control plane authenticates by bearer
        token), no query or fragment (paths are appended to it), no whitespace or control
        character. Timeouts must be finite numbers, not negative.
        """
        _validate_base_url(self.base_url)
        for name in _TIMEOUT_DEFAULTS:
            _validate_timeout(name, getattr(self, name))
        for name in ("tls_insecure_skip_verify", "trust_env"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: must be True or False, got {type(value).__name__}")
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"max_retries: must be an int, not negative, got {retries!r}")
        if not isinstance(self.token, str):
            raise ConfigError(f"token: must be a str, got {type(self.token).__name__}")
        for name in _FILE_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | os.PathLike):
                raise ConfigError(f"{name}: must be a file path, got {type(value).__name__}")
        if self.client_key is not None and self.client_cert is None:
            raise ConfigError("client_key: given without client_cert")
        if self.proxy is not None:
            validate_proxy(self.proxy)


def shown_url(url: str) -> str:
    """One URL as it may be shown: its user information (everything between the scheme
    and the last ``@``, a password or a token in the user's place) replaced by ``***``."""
    scheme, separator, rest = url.partition("://")
    if separator and "@" in rest:
        return f"{scheme}://{MASK}@{rest.rpartition('@')[2]}"
    return redact_url(url)


def _shown(name: str, value: object) -> object:
    if name == "token":
        return MASK if value else value
    return shown_url(value) if isinstance(value, str) else value


def _from_text(name: str, text: str) -> object:
    # The value of field ``name`` from its variable's text.
    var = CONFIG_ENV_VARIABLES[name]
    if name == "trust_env":
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise ConfigError(f"{var}: must be one of 1/true/yes/on or 0/false/no/off")
    if name == "request_timeout":
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{var}: must be a number of seconds") from None
    if name == "max_retries":
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{var}: must be a whole number") from None
    return text


def validate_proxy(proxy: object) -> None:
    if not isinstance(proxy, str):
        raise ConfigError(f"proxy: must be a str, got {type(proxy).__name__}")
    shown = shown_url(proxy)
    if _BAD_URL_CHARS.search(proxy):
        raise ConfigError(f"proxy: whitespace or a control character in {shown!r}")
    try:
        parts = urlsplit(proxy)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"proxy: not a usable URL: {redact_url(str(exc))}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or port == 0:
        raise ConfigError(f"proxy: must be an http:// URL with a host, got {shown!r}")


def _validate_base_url(base_url: object) -> None:
    if not isinstance(base_url, str):
        raise ConfigError(f"base_url: must be a str, got {type(base_url).__name__}")
    if not base_url:
        raise ConfigError("base_url: must not be empty")
    shown = shown_url(base_url)
    if _BAD_URL_CHARS.search(base_url):
        raise ConfigError(f"base_url: whitespace or a control character in {shown!r}")
    try:
        parts = urlsplit(base_url)
    except ValueError as exc:
        raise ConfigError(f"base_url: not a usable URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ConfigError(f"base_url: scheme must be http or https, got {parts.scheme or 'none'!r}")
    if "@" in parts.netloc:
        raise ConfigError(
            "base_url: must not carry a user or password (the control plane "
            "authenticates by bearer token: ControlPlane.set_auth_token)"
        )
    if not parts.hostname:
        raise ConfigError(f"base_url: no host in {shown!r}")
    if "?" in base_url or "#" in base_url:
        raise ConfigError(
            f"base_url: must not have a query or fragment (every path is appended to it), "
            f"got {shown!r}"
        )
    _validate_host_and_port(base_url)


def _validate_host_and_port(base_url: str) -> None:
    # The client parses base_url with yarl: what yarl refuses must fail here, not at a call.
    try:
        port = URL(base_url).port
    except ValueError as exc:
        raise ConfigError(f"base_url: not a usable URL: {exc}") from None
    if port == 0:
        raise ConfigError(f"base_url: port 0 in {base_url!r}")


def _validate_timeout(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}: must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}: must be a finite number of seconds, not negative, got {value}")
