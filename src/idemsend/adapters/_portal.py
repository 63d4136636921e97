"""One started Engine per process on its own event loop, for queues whose jobs are sync
functions (RQ, Celery).

A sync job cannot ``await``; starting an event loop (and an Engine, with its connection
pool and ledger client) per job would throw the pool away every time. ``ProcessLocalEngine``
keeps one anyio blocking portal (an event loop in a thread) and one started Engine per
process, and runs coroutines on it from any thread::

    engines = ProcessLocalEngine(engine_factory)
    result = engines.call(lambda engine: engine.send(job, body))   # sync, from the job

A forked child (RQ's work-horse, Celery's prefork pool) inherits its parent's objects but
not the portal's thread: the pid decides, so the child builds its own on first use. The
engine is closed and the loop stopped at interpreter exit, or by ``close()``.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import TypeVar

import anyio.from_thread
from anyio.from_thread import BlockingPortal

from .._engine import Engine
from ._common import EngineFactory, build_engine

__all__ = ["ProcessLocalEngine"]

T = TypeVar("T")


class ProcessLocalEngine:
    """A started Engine per process, made by ``factory`` on first use, on a loop thread."""

    def __init__(self, factory: EngineFactory) -> None:
        self.factory = factory
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._engine: Engine | None = None

    def __repr__(self) -> str:
        state = "running" if self._pid == os.getpid() and self._engine is not None else "idle"
        return f"<ProcessLocalEngine {state} engine={self._engine!r}>"

    def _runtime(self) -> tuple[BlockingPortal, Engine]:
        with self._lock:
            if self._pid != os.getpid() or self._portal is None or self._engine is None:
                # First use in this process (a forked child inherits a dead portal thread
                # from its parent, so the pid decides).
                self._portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
                self._portal = self._portal_cm.__enter__()
                try:
                    self._engine = self._portal.call(build_engine(self.factory).start)
                except BaseException:
                    self._portal_cm.__exit__(None, None, None)
                    self._portal = self._portal_cm = None
                    raise
                self._pid = os.getpid()
                atexit.register(self.close)
            return self._portal, self._engine

    def engine(self) -> Engine:
        """This process's Engine, started (made on first use)."""
        return self._runtime()[1]

    def call(self, fn: Callable[[Engine], Awaitable[T]]) -> T:
        """Run ``fn(engine)`` on this process's loop and return its result (or raise its
        error). Blocks the calling thread; never call it from the loop thread itself."""
        portal, engine = self._runtime()
        return portal.call(fn, engine)

    def close(self) -> None:
        """Close the engine and stop the loop thread (at exit, or by hand). In a forked
        child that never used it, only forget the parent's."""
        with self._lock:
            portal, engine, cm = self._portal, self._engine, self._portal_cm
            self._portal = self._engine = self._portal_cm = None
            if self._pid != os.getpid():
                return
            self._pid = None
            try:
                if portal is not None and engine is not None:
                    portal.call(engine.aclose)
            finally:
                if cm is not None:
                    cm.__exit__(None, None, None)
