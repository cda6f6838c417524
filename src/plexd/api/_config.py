"""Declarations, above ``errors``: the client configuration (where the control plane
is, how long to wait for it) and how a URL is shown without its secrets."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

from yarl import URL

from .errors import MASK, ConfigError

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_SSE_IDLE_TIMEOUT = 90.0

_TIMEOUT_DEFAULTS = {
    "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
    "request_timeout": DEFAULT_REQUEST_TIMEOUT,
    "sse_idle_timeout": DEFAULT_SSE_IDLE_TIMEOUT,
}

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
    """Settings of a :class:`ControlPlane`. Timeouts are in seconds; 0 means the default."""

    base_url: str
    tls_insecure_skip_verify: bool = False
    connect_timeout: float = 0
    request_timeout: float = 0
    sse_idle_timeout: float = 0

    def apply_defaults(self) -> None:
        """Replace every zero timeout with its default (10 s, 30 s, 90 s)."""
        for name, default in _TIMEOUT_DEFAULTS.items():
            if getattr(self, name) == 0:
                setattr(self, name, default)

    def __repr__(self) -> str:
        # Built before validate(): a base_url may still hold a password here.
        items = ", ".join(f"{f.name}={_shown(getattr(self, f.name))!r}" for f in fields(self))
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
        if not isinstance(self.tls_insecure_skip_verify, bool):
            raise ConfigError(
                "tls_insecure_skip_verify: must be True or False, got "
                f"{type(self.tls_insecure_skip_verify).__name__}"
            )


def shown_url(url: str) -> str:
    """One URL as it may be shown: its user information (everything between the scheme
    and the last ``@``, a password or a token in the user's place) replaced by ``***``."""
    scheme, separator, rest = url.partition("://")
    if separator and "@" in rest:
        return f"{scheme}://{MASK}@{rest.rpartition('@')[2]}"
    return redact_url(url)


def _shown(value: object) -> object:
    return shown_url(value) if isinstance(value, str) else value


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
