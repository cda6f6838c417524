"""I/O layer: the process's verification threads, one pool shared by every stream.

Ed25519 verification holds the CPU, not the GIL (libsodium runs without it), so
threads verify in parallel while the event loop parses and dispatches. The pool
lives only while someone uses it: :meth:`WorkerPool.acquire` starts threads,
and the :meth:`WorkerPool.release` of the last user stops and joins them, so no
thread outlives the last stream. A job is anything with ``run()``; it must not
raise, and one that was cancelled should return at once.

A forked child starts with an empty pool: the parent's threads do not exist there,
and a lock a parent thread held at the fork would never be released.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Protocol

__all__ = ["DEFAULT_VERIFY_THREADS", "MAX_VERIFY_THREADS", "WorkerPool", "default_threads"]

# Above this the event loop, which parses and dispatches every event on its one
# thread (a few microseconds each, against ~45 us for a verify), cannot keep more
# threads busy.
MAX_VERIFY_THREADS = 8

_log = logging.getLogger("plexd.api")


def default_threads() -> int:
    """One verification thread per CPU this process may run on but one, at most
    :data:`MAX_VERIFY_THREADS`: the event loop's thread verifies too whenever it would
    otherwise wait for a thread (and one thread fewer is one fewer taking turns at the
    GIL). None (verify on the event loop) with a single CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return min(cpus - 1, MAX_VERIFY_THREADS) if cpus > 1 else 0


DEFAULT_VERIFY_THREADS = default_threads()


class Job(Protocol):
    """Work for a pool thread."""

    def run(self) -> None:
        """Do the work (never raises)."""


class WorkerPool:
    """Threads that run :class:`Job` objects in the order they were submitted.

    Reference-counted: each user calls :meth:`acquire` (with the number of threads it
    wants; the pool grows to the largest number asked for) and :meth:`release` once
    done. The last release stops the threads and waits for them: a thread finishes
    the job it is running first (a cancelled job returns at once). Thread-safe.
    """

    def __init__(self, name: str = "plexd-verify") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._users = 0
        self._threads: list[threading.Thread] = []
        # One queue per generation of threads: the stop markers of an ending
        # generation cannot reach threads started by a later acquire.
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()

    @property
    def threads(self) -> int:
        """How many threads run now."""
        return len(self._threads)

    @property
    def users(self) -> int:
        """How many acquires are not yet released."""
        return self._users

    def acquire(self, threads: int) -> None:
        """Count one more user and run at least ``threads`` threads."""
        ending: list[threading.Thread] = []
        with self._lock:
            try:
                while len(self._threads) < threads:
                    thread = threading.Thread(
                        target=_work,
                        args=(self._queue,),
                        name=f"{self._name}-{len(self._threads)}",
                        daemon=True,
                    )
                    thread.start()
                    self._threads.append(thread)
            except BaseException:
                # A thread that could not start: this user does not count, and with no
                # other user, the threads just started end at once.
                if not self._users:
                    ending = self._stop()
                raise
            finally:
                for thread in ending:
                    thread.join()
            self._users += 1

    def release(self) -> None:
        """Count one user less; the last one stops the threads and joins them."""
        with self._lock:
            # A user the parent had before a fork may release in the child, where the
            # count started again from zero: it never goes below.
            self._users = max(self._users - 1, 0)
            if self._users:
                return
            threads = self._stop()
        for thread in threads:
            thread.join()

    def _stop(self) -> list[threading.Thread]:
        # Under the lock: the running threads, told to end once their queue is empty.
        threads, self._threads = self._threads, []
        ending, self._queue = self._queue, queue.SimpleQueue()
        for _ in threads:
            ending.put(None)
        return threads

    def forget_after_fork(self) -> None:
        """In a forked child: no thread, no user, a new lock and queue (the parent's
        threads were not copied; its jobs stay with it)."""
        self._lock = threading.Lock()
        self._users = 0
        self._threads = []
        self._queue = queue.SimpleQueue()

    def submit(self, job: Job) -> None:
        """Queue ``job`` for the next free thread (call between acquire and release)."""
        self._queue.put(job)


def _work(jobs: queue.SimpleQueue[Job | None]) -> None:
    while (job := jobs.get()) is not None:
        try:
            job.run()
        except BaseException:  # pragma: no cover - a job must not raise; keep the thread
            _log.exception("a verification job raised")


# The process's one pool.
VERIFY_POOL = WorkerPool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=VERIFY_POOL.forget_after_fork)
