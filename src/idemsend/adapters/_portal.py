"""One started Engine per process on its own event loop, for queues whose jobs are sync
functions (RQ, Celery, the SQS Lambda handler).

A sync job cannot ``await``; starting an event loop (and an Engine, with its connection
pool and ledger client) per job would throw the pool away every time. ``ProcessLocalEngine``
keeps one event loop in a thread of its own (``_LoopThread``: plain asyncio) and one
started Engine per process, and runs coroutines on it from any thread::

    engines = ProcessLocalEngine(engine_factory)
    result = engines.call(lambda engine: engine.send(job, body))   # sync, from the job

A forked child (RQ's work-horse, Celery's prefork pool) inherits its parent's objects but
not the loop's thread: the pid decides, so the child builds its own on first use. The
engine itself is a ``StartedEngine`` (``_holder.py``) on that loop, so the factory runs on
the loop thread. The engine is closed and the loop stopped at interpreter exit, or by
``close()``.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._engine import Engine
from ._common import EngineFactory
from ._holder import StartedEngine

__all__ = ["ProcessLocalEngine"]

T = TypeVar("T")


class _LoopThread:
    """An asyncio event loop running forever in a daemon thread; ``call`` runs a coroutine
    function on it and blocks the calling thread for its result (or error)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="idemsend-loop", daemon=True)
        self.thread.start()
        ready.wait()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` on the loop; its result here. Never from the loop's own thread."""
        if threading.current_thread() is self.thread:
            raise RuntimeError("ProcessLocalEngine.call was called from its own loop thread: it would deadlock")

        async def run() -> T:
            return await fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()

    def stop(self) -> None:
        """Cancel what is left on the loop, stop it, join its thread and close it."""
        if self.loop.is_closed():
            return

        async def cancel_the_rest() -> None:
            current = asyncio.current_task()
            rest = [task for task in asyncio.all_tasks() if task is not current]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_the_rest(), self.loop).result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            if not self.thread.is_alive():
                self.loop.close()


class ProcessLocalEngine:
    """A started Engine per process, made by ``factory`` on first use, on a loop thread:
    this process's ``StartedEngine``, driven from sync code."""

    def __init__(self, factory: EngineFactory) -> None:
        self.factory = factory
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: _LoopThread | None = None
        self._engines: StartedEngine | None = None

    @property
    def _engine(self) -> Engine | None:
        return None if self._engines is None else self._engines.engine

    def __repr__(self) -> str:
        state = "running" if self._pid == os.getpid() and self._engine is not None else "idle"
        return f"<ProcessLocalEngine {state} engine={self._engine!r}>"

    def _runtime(self) -> tuple[_LoopThread, Engine]:
        with self._lock:
            if self._pid != os.getpid() or self._loop is None or self._engine is None:
                # First use in this process (a forked child inherits a dead loop thread
                # from its parent, so the pid decides).
                loop = _LoopThread()
                engines = StartedEngine(self.factory)
                try:
                    loop.call(engines.start)
                except BaseException:
                    loop.stop()
                    raise
                self._loop, self._engines = loop, engines
                self._pid = os.getpid()
                atexit.register(self.close)
            engine = self._engine
            assert engine is not None
            return self._loop, engine

    def engine(self) -> Engine:
        """This process's Engine, started (made on first use)."""
        return self._runtime()[1]

    def call(self, fn: Callable[[Engine], Awaitable[T]]) -> T:
        """Run ``fn(engine)`` on this process's loop and return its result (or raise its
        error). Blocks the calling thread; never call it from the loop thread itself."""
        loop, engine = self._runtime()
        return loop.call(fn, engine)

    def close(self) -> None:
        """Close the engine and stop the loop thread (at exit, or by hand). In a forked
        child that never used it, only forget the parent's."""
        with self._lock:
            loop, engines = self._loop, self._engines
            self._loop = self._engines = None
            if self._pid != os.getpid():
                return
            self._pid = None
            if loop is None:
                return
            try:
                if engines is not None:
                    loop.call(engines.close)
            finally:
                loop.stop()
