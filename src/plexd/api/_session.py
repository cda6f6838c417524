"""I/O layer, below the facades: a client's one aiohttp session, made on first use and
bound to the event loop of that use, and how it is closed from any loop.

A session's connections belong to the loop that opened them; :class:`LoopBoundSession`
refuses a second loop (:class:`EventLoopError`) and, on close, reaches the owner
loop wherever it is: running here, running in another thread, or already closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from ._transport import release_orphaned_session
from .errors import ClientClosedError, EventLoopError


class LoopBoundSession:
    """The session of one client: ``make()`` builds it on the first :meth:`get`."""

    def __init__(self, make: Callable[[], aiohttp.ClientSession], owner: str) -> None:
        self._make = make
        self._owner = owner
        # The loop of the first call: the session and its connections belong to it.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def get(self) -> aiohttp.ClientSession:
        """The session, made on first use; :class:`ClientClosedError` once closed,
        :class:`EventLoopError` from another loop than the first one."""
        if self._closed:
            raise ClientClosedError(f"{self._owner} is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop and self._loop is not None:
            await self._leave_foreign_loop()
        self._loop = loop
        if self._session is None:
            self._session = self._make()
        return self._session

    async def aclose(self) -> None:
        """Close the session and every connection it holds. Safe to call twice.

        From another event loop than the session's: when that loop is closed the
        connections are released at once; when it runs in another thread the session is
        closed there. A loop that is open but not running cannot be reached:
        :class:`EventLoopError`.
        """
        session, owner = self._session, self._loop
        if session is not None and _unreachable(owner):
            raise self._foreign_loop_error()
        self._closed = True
        self._session = None
        if session is None:
            return
        if owner is None or owner is _running_loop():
            await session.close()
        elif owner.is_running():
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(session.close(), owner))
        else:
            await release_orphaned_session(session)

    async def _leave_foreign_loop(self) -> None:
        # Used from a second loop. When the first one is closed (an earlier asyncio.run()),
        # its connections are dead: release them now rather than warn at exit.
        session, owner = self._session, self._loop
        if session is not None and owner is not None and owner.is_closed():
            self._session = None
            await release_orphaned_session(session)
        raise self._foreign_loop_error()

    def _foreign_loop_error(self) -> EventLoopError:
        return EventLoopError(
            f"this {self._owner} belongs to the event loop it was first used on; "
            "make one client per event loop (per asyncio.run())"
        )


def _unreachable(loop: asyncio.AbstractEventLoop | None) -> bool:
    # Another loop, open but not running: nothing can run a close on it now.
    return (
        loop is not None
        and loop is not _running_loop()
        and not (loop.is_closed() or loop.is_running())
    )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
