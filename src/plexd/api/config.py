"""Client configuration: where the control plane is and how long to wait for it."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ConfigError

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_SSE_IDLE_TIMEOUT = 90.0

_TIMEOUT_DEFAULTS = {
    "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
    "request_timeout": DEFAULT_REQUEST_TIMEOUT,
    "sse_idle_timeout": DEFAULT_SSE_IDLE_TIMEOUT,
}


@dataclass
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

    def validate(self) -> None:
        """Raise :class:`ConfigError`, naming the field, when a setting cannot work."""
        if not self.base_url:
            raise ConfigError("base_url: must not be empty")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https"):
            raise ConfigError(
                f"base_url: scheme must be http or https, got {parts.scheme or 'none'!r}"
            )
        if not parts.hostname:
            raise ConfigError(f"base_url: no host in {self.base_url!r}")
        for name in _TIMEOUT_DEFAULTS:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must not be negative, got {getattr(self, name)}")
