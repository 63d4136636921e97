"""One started Engine per worker, for adapters that run on the worker's own event loop
(arq, BullMQ, the SQS consumer, the QStash handler).

Every worker shares one Engine (and its connection pool and ledger client) between its
jobs. ``StartedEngine`` is that Engine's lifecycle, written once: made from the adapter's
engine factory on first use, started once (concurrent first callers wait on one start, not
one start each), and closed at shutdown::

    engines = StartedEngine(engine_factory)
    engine = await engines.start()     # the first call makes and starts it; later calls return it
    engines.require("call start first")  # the started Engine, or ConfigError saying what to wire up
    await engines.close()              # at shutdown; a later start() makes a fresh one

``ProcessLocalEngine`` (``_portal.py``) is the sync queues' form: one of these per process,
driven from a loop thread of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .._engine import Engine
from .._errors import ConfigError
from ._common import EngineFactory, build_engine

__all__ = ["Prepare", "StartedEngine"]

#: Runs on the Engine being made, before or after its start (a choice that depends on the
#: engine's ledger, a check of the adapter's options against it); raising refuses it.
Prepare = Callable[[Engine], object]


class StartedEngine:
    """One Engine made by ``factory`` on the first :meth:`start`, started once, shared
    until :meth:`close`."""

    __slots__ = ("_engine", "_lock", "factory")

    def __init__(self, factory: EngineFactory) -> None:
        self.factory = factory
        self._engine: Engine | None = None
        self._lock: asyncio.Lock | None = None  # made on first use, on the loop that uses it

    def __repr__(self) -> str:
        return f"<StartedEngine {'started' if self._engine is not None else 'idle'} engine={self._engine!r}>"

    @property
    def engine(self) -> Engine | None:
        """The started Engine, or None before :meth:`start` (and after :meth:`close`)."""
        return self._engine

    def require(self, hint: str) -> Engine:
        """The started Engine; ``ConfigError(hint)`` when there is none (``hint`` says what
        the worker must call or wire up first)."""
        if self._engine is None:
            raise ConfigError(hint)
        return self._engine

    async def start(self, prepare: Prepare | None = None, check: Prepare | None = None) -> Engine:
        """The started Engine: on the first call made from the factory (checked to be an
        Engine) and started; later calls (and callers that waited on that first start) get
        the same one. For the engine being made, ``prepare(engine)`` runs before its start
        (if it raises, nothing is started; the engine is left as the factory made it, which
        may be an engine it hands out elsewhere too) and ``check(engine)`` after it (if it
        raises, the engine is closed). Whatever raises, nothing is kept and the next call
        tries again."""
        if self._engine is not None:
            return self._engine
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._engine is None:
                engine = build_engine(self.factory)
                if prepare is not None:
                    prepare(engine)
                await engine.start()  # a start that fails closes the engine itself
                if check is not None:
                    try:
                        check(engine)
                    except BaseException:
                        await engine.aclose()
                        raise
                self._engine = engine
            return self._engine

    async def close(self) -> None:
        """Close the started Engine, if any, and forget it."""
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.aclose()
