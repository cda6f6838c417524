"""Pure logic, below the facades: the request paths of WIRE.md, percent-encoded.

No I/O: strings in, strings out; ``ControlPlane`` sends what these build as is.
"""

from __future__ import annotations

import functools
from urllib.parse import quote

from .errors import ArgumentError, ArgumentTypeError


def path_segment(value: str, name: str) -> str:
    """Percent-encode ``value`` as exactly one path segment (``/``, ``?``, ``#``, ``%``, ``..``).

    Raises :class:`ArgumentError` for an empty value or one that is not a str.
    """
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value:
        raise ArgumentError(f"{name} must not be empty")
    encoded = quote(value, safe="")
    if encoded in (".", ".."):
        # Dot segments are unreserved, yet a URL resolver would treat them as
        # "this/parent directory": encode them so they stay names.
        encoded = encoded.replace(".", "%2E")
    return encoded


def node_path(node_id: str, *rest: str) -> str:
    """``/v1/nodes/{node_id}`` followed by ``rest`` (encoded already)."""
    if not isinstance(node_id, str):
        # Checked before the cache, which would raise TypeError for an unhashable id.
        raise ArgumentTypeError(f"node_id must be a str, got {type(node_id).__name__}")
    return _node_prefix(node_id) + "".join(rest)


@functools.lru_cache(maxsize=256)
def _node_prefix(node_id: str) -> str:
    # A node makes every call with the same id: encode it once.
    return "/v1/nodes/" + path_segment(node_id, "node_id")


def execution_path(node_id: str, execution_id: str, action: str) -> str:
    """``/v1/nodes/{node_id}/executions/{execution_id}`` followed by ``action``."""
    execution = path_segment(execution_id, "execution_id")
    return node_path(node_id, "/executions/", execution, action)


def artifact_path(version: str, os: str, arch: str) -> str:
    """``/v1/artifacts/plexd/{version}/{os}/{arch}``."""
    return "/v1/artifacts/plexd/" + "/".join(
        path_segment(value, name)
        for value, name in ((version, "version"), (os, "os"), (arch, "arch"))
    )
