"""Group commit: many concurrent calls to a store, sent as a few batches.

A ledger call is one short operation on one key, and a worker makes hundreds at once.
Sending each on its own costs a round trip apiece; ``GroupCommit`` queues them instead
and sends what queued meanwhile as one batch, with at most ``max_pipelines`` batches on
the wire. At low load a call goes out on the next event-loop turn (a batch of one); at
high load one round trip serves hundreds of calls. RedisLedger sends a batch as one
EVALSHA (or one pipeline on Cluster); a SQL ledger can send one statement.

The store-specific part is one async callable, ``execute(ops)``, that runs a batch and
answers one result per operation (or an exception for that operation alone). No
telemetry is imported here: ``on_batch(size)`` lets a caller count batches.

A store that sends a batch as one atomic statement gets one error for the lot, even when
one operation's data alone caused it; ``isolate`` finds that operation (it runs halves
of the batch again), so its caller alone gets the error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from .._errors import ConfigError

__all__ = ["GroupCommit", "isolate"]

log = logging.getLogger("idemsend.ledger")

Op = TypeVar("Op")
R = TypeVar("R")


async def isolate(
    run: Callable[[Sequence[Op]], Awaitable[Sequence[R]]],
    ops: Sequence[Op],
    per_item: Callable[[Exception], bool],
) -> list[R | Exception]:
    """``run(ops)``'s results, one per operation; when it raises an error ``per_item`` says
    some operation's data caused (not the store), each half of ``ops`` is run on its own,
    and so on down, so that error goes to the operation(s) causing it alone and every other
    one gets its result. Any other error fails every operation of the part that raised it,
    and is not tried again. A cancellation is not caught.

    Only for an atomic ``run`` (one statement: when it raises, none of it took effect), so
    that running a part again cannot apply anything twice. ``b`` bad operations among
    ``n`` cost at most about ``2 * b * log2(n)`` more runs, one after the other."""
    try:
        return list(await run(ops))
    except Exception as exc:
        if len(ops) == 1 or not per_item(exc):
            return [exc] * len(ops)
    half = len(ops) // 2
    return [*await isolate(run, ops[:half], per_item), *await isolate(run, ops[half:], per_item)]


def _keep(exc: BaseException) -> BaseException:
    """The default error mapping: an exception as it is; an interruption (cancellation)
    as a RuntimeError, so a caller never mistakes it for its own cancellation."""
    if isinstance(exc, Exception):
        return exc
    return RuntimeError(f"the batch was interrupted ({type(exc).__name__}) before it had a result")


class GroupCommit(Generic[Op, R]):
    """Queue operations and send them in batches through ``execute``.

    * ``submit(op)`` (or ``await call(op)``) queues ``op``; calls keep their order, within
      a batch and from batch to batch.
    * At most ``max_pipelines`` batches are in flight at once. A new batch starts on the
      next loop turn after a call while there is room, and whenever a batch finishes; it
      carries everything queued meanwhile, up to ``max_batch`` operations.
    * ``execute(ops)`` runs one batch and returns one item per operation, in order: the
      operation's result, or an exception (that operation failed alone).
    * Every caller gets its result or a failure, never waits forever: when ``execute``
      raises (or is cancelled, or returns the wrong number of items), every caller of that
      batch gets the failure. ``error`` maps what each caller receives (RedisLedger makes
      every failure a ``LedgerUnavailableError``); the original is its ``__cause__``.
      Without ``error``, an exception is passed on as it is (one object, shared by the
      batch's callers) and an interruption becomes a ``RuntimeError``.
    * A caller that stops waiting (its task is cancelled) does not withdraw its operation:
      once queued, it is sent. (A settlement, for one, should still be recorded.)
    * ``on_batch(size)`` is called as each batch starts (telemetry); if it raises, the
      error is logged and the batch goes on.

    One instance serves one event loop at a time.
    """

    def __init__(
        self,
        execute: Callable[[Sequence[Op]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_batch: int = 512,
        max_pipelines: int = 2,
        on_batch: Callable[[int], object] | None = None,
        error: Callable[[BaseException], BaseException] | None = None,
    ) -> None:
        for name, value in (("max_batch", max_batch), ("max_pipelines", max_pipelines)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        self.execute = execute
        self.max_batch = max_batch
        self.max_pipelines = max_pipelines
        self.on_batch = on_batch
        self.error = error or _keep
        self._pending: list[tuple[Op, asyncio.Future[R]]] = []
        self._scheduled = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return (
            f"<GroupCommit pending={len(self._pending)} in_flight={self._in_flight}/{self.max_pipelines}"
            f" max_batch={self.max_batch}>"
        )

    @property
    def pending(self) -> int:
        """Operations queued and not yet in a batch."""
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        """Batches being executed now (at most ``max_pipelines``)."""
        return self._in_flight

    def submit(self, op: Op) -> asyncio.Future[R]:
        """Queue ``op``; the future resolves to its result, or to the failure. Needs a
        running event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((op, future))
        self._schedule(loop)
        return future

    async def call(self, op: Op) -> R:
        """Queue ``op`` and wait for its result (``await submit(op)``)."""
        return await self.submit(op)

    async def drain(self) -> None:
        """Wait until everything queued so far has been executed (the callers have their
        answers). Failures are the callers' to see, not raised here."""
        while self._pending or self._tasks:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            else:  # queued, its batch starts on the next loop turn
                await asyncio.sleep(0)

    # -- batching ----------------------------------------------------------------------

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pending and not self._scheduled and self._in_flight < self.max_pipelines:
            self._scheduled = True
            loop.call_soon(self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        if not self._pending or self._in_flight >= self.max_pipelines:
            return
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        self._in_flight += 1
        task = loop.create_task(self._run(batch), name="idemsend-group-commit")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        self._schedule(loop)  # more than max_batch queued: the next batch, if there is room

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        self._schedule(task.get_loop())

    def _fail(self, future: asyncio.Future[R], exc: BaseException) -> None:
        if future.done():
            return
        mapped = self.error(exc)
        if mapped is not exc and mapped.__cause__ is None:
            mapped.__cause__ = exc
        future.set_exception(mapped)

    async def _run(self, batch: list[tuple[Op, asyncio.Future[R]]]) -> None:
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch))
            except Exception:
                log.exception("idemsend: the on_batch callback failed; the batch goes on")
        try:
            results = await self.execute([op for op, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"execute answered {len(results)} results for {len(batch)} operations")
        except BaseException as exc:
            # A connection error, a bug, a cancellation: no caller may wait forever.
            for _, future in batch:
                self._fail(future, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                self._fail(future, result)
            elif not future.done():
                future.set_result(result)
