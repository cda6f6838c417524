"""Emulator, entry point: the pytest plugin of plexd-api, the ``control_plane``
fixture (a local emulator per test).

    async def test_my_node(control_plane):
        node_id, token = control_plane.register_node("web-1")
        control_plane.publish(node_id, "peer_added", {"id": "peer-1"})
        async with control_plane.client(token) as cp:
            state = await cp.fetch_state(node_id)

The fixture is an async fixture of pytest-asyncio (auto and strict mode alike);
mark a test ``@pytest.mark.control_plane_options(retry_ms=100, ...)`` to pass
keyword arguments to :class:`plexd.emulator.Emulator`. The emulator is imported
only when a test uses the fixture, so loading this plugin costs nothing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from plexd.emulator import Emulator

OPTIONS_MARKER = "control_plane_options"


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker so ``--strict-markers`` and ``-W error`` accept it."""
    config.addinivalue_line(
        "markers",
        f"{OPTIONS_MARKER}(**options): keyword arguments of plexd.emulator.Emulator "
        "for the control_plane fixture",
    )


async def _control_plane(request: pytest.FixtureRequest) -> AsyncIterator[Emulator]:
    from plexd.emulator import Emulator

    marker = request.node.get_closest_marker(OPTIONS_MARKER)
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    async with Emulator(**options) as emulator:
        yield emulator


def _needs_pytest_asyncio() -> None:
    pytest.fail(
        "the control_plane fixture needs pytest-asyncio (pip install 'plexd-api[testing]')"
    )


if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    control_plane = pytest_asyncio.fixture(_control_plane, name="control_plane")
    """A running :class:`plexd.emulator.Emulator` on 127.0.0.1, stopped after the test."""
else:  # pragma: no cover - depends on the installation
    control_plane = pytest.fixture(_needs_pytest_asyncio, name="control_plane")
