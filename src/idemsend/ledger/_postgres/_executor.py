"""How a batch of ledger calls reaches PostgreSQL (``GroupCommit``'s executor).

Round by round (a key at most once per round, ``rounds``), each round one statement per
kind of call, the kinds at once on their own connections. A statement the database
refuses for one call's data is split until that call stands alone (``isolate``): it
alone gets the error, the others their answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from .._base import LedgerUnavailableError
from .._group import isolate
from ._pool import Connections
from ._rows import Op, answer, params, rounds

__all__ = ["Executor", "data_error", "unavailable"]


class Executor:
    """Runs one GroupCommit batch of ``Op``: ``sql`` holds each kind's statement,
    ``retention`` (seconds) is what the statements that write a record give it."""

    def __init__(self, db: Connections, sql: dict[str, str], *, retention: float) -> None:
        self.db = db
        self.sql = sql
        self.retention = retention

    async def __call__(self, ops: Sequence[Op]) -> list[Any]:
        results: list[Any] = [None] * len(ops)
        for indexes in rounds(ops):
            kinds: dict[str, list[int]] = {}
            for i in indexes:
                kinds.setdefault(ops[i].kind, []).append(i)
            await asyncio.gather(*(self._run_kind(kind, [ops[i] for i in idx], idx, results)
                                   for kind, idx in kinds.items()))
        return results

    async def _run_kind(self, kind: str, ops: list[Op], indexes: list[int], results: list[Any]) -> None:
        """One statement for ``ops`` (all of one kind); a statement refused for one call's
        data is split until that call stands alone (``isolate``): it alone gets the error."""

        async def statement(part: Sequence[Op]) -> list[Any]:
            rows = await self.db.fetch(self.sql[kind], *params(kind, part, self.retention))
            if len(rows) != len(part):
                raise LedgerUnavailableError(f"{kind}: {len(rows)} answers for {len(part)} calls")
            return rows

        failures: dict[int, LedgerUnavailableError] = {}  # one error object per statement's failure
        for i, op, row in zip(indexes, ops, await isolate(statement, ops, data_error), strict=True):
            if isinstance(row, Exception):
                if id(row) not in failures:
                    failures[id(row)] = row if isinstance(row, LedgerUnavailableError) else self.db.fail(row)
                results[i] = failures[id(row)]
                continue
            try:
                results[i] = answer(kind, op, row)
            except (LedgerUnavailableError, ValueError, TypeError, IndexError) as exc:
                results[i] = exc if isinstance(exc, LedgerUnavailableError) else LedgerUnavailableError(
                    f"malformed {kind} answer for key {op.key!r}: {exc}"
                )


def data_error(exc: Exception) -> bool:
    """Whether a statement failed for some call's data, not for the store: a data exception
    (SQLSTATE class 22: a value out of range, a character the encoding cannot hold; also
    what asyncpg raises for an argument it cannot encode), an integrity violation (23), or
    a program limit (54: a key too long for the btree). The same calls would fail the same
    way again, and the calls without the culprit would not. Everything else (the server
    down, a timeout, the table missing, a deadlock, resources) is the store's."""
    return isinstance(exc, (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
                            asyncpg.ProgramLimitExceededError))


def unavailable(exc: BaseException) -> LedgerUnavailableError:
    """A batch's store failure, as every caller in it gets it."""
    if isinstance(exc, LedgerUnavailableError):
        return exc
    return LedgerUnavailableError(f"{type(exc).__name__}: {exc}")
