"""Deleting expired rows: one sweep (``sweep_expired``) and the background task that runs
one now and then (``sweep_forever``). Expired rows are never answered as live meanwhile
(every statement checks ``expires_at``); the sweep only keeps the tables small.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..._log import fields
from .._base import LedgerUnavailableError
from ._pool import Connections

__all__ = ["sweep_expired", "sweep_forever"]

log = logging.getLogger("idemsend.ledger")


async def sweep_expired(db: Connections, statements: Sequence[str], *, size: int, max_batches: int | None) -> int:
    """Run each of ``statements`` (``SWEEP`` for one table: it deletes at most ``size``
    expired rows, skipping locked ones) until it deletes fewer than ``size`` or ran
    ``max_batches`` times; answers how many rows were deleted. Store failures raise
    ``LedgerUnavailableError``."""
    total = 0
    try:
        for sql in statements:
            done = 0
            while max_batches is None or done < max_batches:

                async def delete(con: Any, sql: str = sql) -> str:
                    db.statements += 1
                    return str(await con.execute(sql, size, timeout=db.timeout))

                status = await db.on_connection(delete)
                done += 1
                deleted = int(status.rsplit(" ", 1)[-1])
                total += deleted
                if deleted < size:
                    break
                await asyncio.sleep(0)  # let the ledger's own calls go first
    except LedgerUnavailableError:
        raise
    except Exception as exc:
        raise db.fail(exc, "could not sweep the ledger: ") from exc
    return total


async def sweep_forever(sweep: Callable[[], Awaitable[int]], *, interval: Callable[[], float], table: str) -> None:
    """``await sweep()`` about every ``interval()`` seconds (0.5 to 1.5 times it, so many
    workers' sweeps spread out), until cancelled. A failure is logged (the 1st, 10th and
    every 100th in a row) and the task goes on."""
    failures = 0
    while True:
        # spread the sweeps of many workers over the interval
        await asyncio.sleep(interval() * random.uniform(0.5, 1.5))
        try:
            deleted = await sweep()
        except LedgerUnavailableError as exc:
            failures += 1
            if failures in (1, 10) or failures % 100 == 0:
                log.warning("idemsend: the ledger's sweep of expired records failed (%d in a row): %s",
                            failures, exc, extra=fields(code="unavailable", op="sweep"))
        except Exception:  # pragma: no cover - a bug: say so, and keep the task alive
            log.exception("idemsend: the ledger's sweep of expired records failed")
        else:
            failures = 0
            if deleted:
                log.debug("idemsend: swept %d expired ledger rows from %s", deleted, table)
