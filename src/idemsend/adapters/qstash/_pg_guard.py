"""``PostgresReplayGuard``: the replay guard in a small PostgreSQL table of its own, so a
token's ``jti`` outlives a restart and is shared by every webhook process.

One row per token: ``jti`` (primary key, ``COLLATE "C"``), the message id it first came
with, and when it may be forgotten (``expires_at``, on the database's clock). Remembering
is one statement, ``INSERT … ON CONFLICT (jti) DO UPDATE … RETURNING message_id``: the
first caller's row is inserted and its message id returned; a later (or concurrent) one
waits for that row's lock and gets the message id already there. (``DO NOTHING`` plus a
``SELECT`` in the same statement would not do: the ``SELECT`` reads the statement's
snapshot, taken before a concurrent first caller committed, and finds no row.) The update
keeps the row as it is unless it has expired, in which case the new caller takes it.

Expired rows are never answered as live (the statement compares ``expires_at`` with
``now()``), and are deleted in small batches (``sweep``), at most once per
``sweep_interval`` in the background of a ``remember``, skipping rows that are locked.

``asyncpg`` is imported only by ``from_url``; ``for_ledger`` shares a ``PostgresLedger``'s
pool, so the ``qstash`` extra does not need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..._errors import ConfigError, MissingExtraError
from ._guards import ReplayGuardUnavailable

__all__ = ["DEFAULT_GUARD_TABLE", "PostgresReplayGuard", "guard_schema_sql", "sweep_due"]

#: The guard's table unless told otherwise (``for_ledger``: ``<ledger table>_jti``).
DEFAULT_GUARD_TABLE = "idemsend_qstash_jti"

# the name at most 51 characters, so its index's name ("<name>_expires_idx") fits in 63
_TABLE = re.compile(r"(?:([a-z_][a-z0-9_]{0,62})\.)?([a-z_][a-z0-9_]{0,50})")

_SCHEMA = """\
CREATE TABLE IF NOT EXISTS {t} (
    jti         text COLLATE "C" PRIMARY KEY,
    message_id  text COLLATE "C" NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS "{name}_expires_idx" ON {t} (expires_at);
"""

# $1 jti, $2 message id, $3 seconds to keep it (from this host's clock; counted on the
# database's clock, so hosts whose clocks disagree still agree on when a row expires).
_REMEMBER = """\
INSERT INTO {t} AS g (jti, message_id, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3::float8))
ON CONFLICT (jti) DO UPDATE SET
    message_id = CASE WHEN g.expires_at <= now() THEN EXCLUDED.message_id ELSE g.message_id END,
    expires_at = CASE WHEN g.expires_at <= now() THEN EXCLUDED.expires_at ELSE g.expires_at END
RETURNING message_id
"""

_SWEEP = """\
DELETE FROM {t} WHERE jti IN (
    SELECT jti FROM {t} WHERE expires_at <= now() ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
)
"""

_EXISTS = "SELECT to_regclass($1) IS NOT NULL"


def _split(table: str) -> tuple[str | None, str]:
    match = _TABLE.fullmatch(table) if isinstance(table, str) else None
    if match is None:
        raise ConfigError(
            f"invalid replay guard table name {table!r}: use `name` or `schema.name` of lower-case letters,"
            " digits and underscores, not starting with a digit, the name at most 51 characters"
        )
    return match.group(1), match.group(2)


def _qualified(table: str) -> str:
    schema, name = _split(table)
    return f'"{schema}"."{name}"' if schema else f'"{name}"'


def guard_schema_sql(table: str = DEFAULT_GUARD_TABLE) -> str:
    """The SQL that creates the guard's table (``CREATE … IF NOT EXISTS``: safe to rerun)."""
    return _SCHEMA.format(t=_qualified(table), name=_split(table)[1])


def sweep_due(last: float | None, now: float, interval: float) -> bool:
    """Whether a sweep should start now: never when ``interval`` is 0, else when none ran
    yet or the last one started at least ``interval`` seconds ago (monotonic clock)."""
    if interval <= 0:
        return False
    return last is None or now - last >= interval


def _detail(exc: BaseException) -> str:
    # fields, not a repr: the type and the first line of the text (asyncpg's texts name
    # hosts and users, never a password)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class PostgresReplayGuard:
    """A ``SignatureReplayGuard`` in a PostgreSQL table, shared by every webhook process and
    kept across restarts.

    ``PostgresReplayGuard(pool)`` takes an asyncpg pool you own; ``from_url(dsn)`` makes
    (and closes) its own; ``for_ledger(ledger)`` shares a ``PostgresLedger``'s pool (the
    handler's default when its engine has one). Options: ``table`` (``name`` or
    ``schema.name``), ``create_table`` (``start()`` creates a missing table instead of
    raising ``ConfigError``), ``timeout`` (seconds, per statement), ``sweep_interval``
    (seconds between background sweeps of expired rows, 0 for none) and ``sweep_batch``.
    Any store failure raises ``ReplayGuardUnavailable`` (the handler answers 503).
    """

    def __init__(
        self, pool: Any = None, *, table: str = DEFAULT_GUARD_TABLE, create_table: bool = False,
        timeout: float = 5.0, sweep_interval: float = 60.0, sweep_batch: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self._t = _qualified(table)
        if not timeout > 0:
            raise ConfigError(f"timeout must be > 0, got {timeout!r}")
        if not sweep_interval >= 0:
            raise ConfigError(f"sweep_interval must be >= 0 (0: no background sweep), got {sweep_interval!r}")
        if isinstance(sweep_batch, bool) or not isinstance(sweep_batch, int) or sweep_batch < 1:
            raise ConfigError(f"sweep_batch must be an int >= 1, got {sweep_batch!r}")
        self.pool: Any = pool
        self.create_table = create_table
        self.timeout = float(timeout)
        self.sweep_interval = float(sweep_interval)
        self.sweep_batch = sweep_batch
        self._clock = clock
        self._remember_sql = _REMEMBER.format(t=self._t)
        self._sweep_sql = _SWEEP.format(t=self._t)
        # how to get the pool when none was given: make one (from_url), or the ledger's
        self._get_pool: Callable[[], Awaitable[Any]] | None = None
        self._close_pool = False
        self._started = False
        self._closed = False
        self._last_sweep: float | None = None
        self._sweeper: asyncio.Task[int] | None = None

    @classmethod
    def from_url(
        cls, dsn: str, *, table: str = DEFAULT_GUARD_TABLE, create_table: bool = False, timeout: float = 5.0,
        pool_size: int = 4, sweep_interval: float = 60.0, sweep_batch: int = 500,
    ) -> PostgresReplayGuard:
        """A guard over an asyncpg pool it makes on first use (closed by ``aclose``) for
        ``dsn`` (``postgresql://user:password@host/db``)."""
        try:
            import asyncpg
        except ImportError as exc:
            raise MissingExtraError("postgres", "asyncpg") from exc
        guard = cls(
            None, table=table, create_table=create_table, timeout=timeout,
            sweep_interval=sweep_interval, sweep_batch=sweep_batch,
        )
        lock = asyncio.Lock()

        async def make() -> Any:
            async with lock:
                if guard.pool is None:
                    guard.pool = await asyncpg.create_pool(
                        dsn, min_size=0, max_size=pool_size, timeout=timeout, command_timeout=timeout,
                        server_settings={"application_name": "idemsend-qstash-guard"},
                    )
            return guard.pool

        guard._get_pool, guard._close_pool = make, True
        return guard

    @classmethod
    def for_ledger(cls, ledger: Any, *, table: str | None = None) -> PostgresReplayGuard:
        """A guard on the pool of ``ledger`` (a ``PostgresLedger``, through its public
        ``pool``, ``table``, ``timeout`` and ``create_table``; the pool is made by the
        ledger's ``start()``, and stays the ledger's). The table is ``<ledger table>_jti``
        unless given, made by ``start()`` when the ledger may create its own tables."""
        guard = cls(
            None, table=table or f"{ledger.table}_jti", create_table=bool(ledger.create_table),
            timeout=float(ledger.timeout),
        )

        async def ledger_pool() -> Any:
            if ledger.pool is None:
                await ledger.start()  # idempotent; it makes the ledger's pool
            if ledger.pool is None:
                raise ReplayGuardUnavailable("the ledger's PostgreSQL pool is closed")
            return ledger.pool

        guard._get_pool = ledger_pool
        return guard

    def __repr__(self) -> str:
        return f"<PostgresReplayGuard table={self.table!r}>"

    async def _pool(self) -> Any:
        if self._closed:
            raise ReplayGuardUnavailable("the replay guard is closed")
        if self._get_pool is not None:
            return await self._get_pool()
        if self.pool is None:
            raise ReplayGuardUnavailable("the replay guard has no PostgreSQL pool")
        return self.pool

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        try:
            pool = await self._pool()
            async with pool.acquire(timeout=self.timeout) as con:
                return await con.fetchval(sql, *args, timeout=self.timeout)
        except (ReplayGuardUnavailable, ConfigError):
            raise
        except Exception as exc:  # a store failure: the handler refuses the delivery (503)
            raise ReplayGuardUnavailable(f"the replay guard's PostgreSQL could not answer: {_detail(exc)}") from exc

    async def start(self) -> None:
        """Check that the table exists (or create it, with ``create_table``); idempotent.
        A missing table raises ``ConfigError`` quoting the SQL to run (or ``migrate()``);
        an unreachable server raises ``ReplayGuardUnavailable``."""
        if self._started:
            return
        if not await self._fetchval(_EXISTS, self._t):
            if not self.create_table:
                raise ConfigError(
                    f"the replay guard table {self.table} does not exist: create it once with"
                    f" `await guard.migrate()` or this SQL (or let the guard create it, create_table=True):\n"
                    f"{guard_schema_sql(self.table)}"
                )
            await self.migrate()
        self._started = True

    async def migrate(self) -> None:
        """Create the table and its index if missing (needs CREATE on the schema)."""
        try:
            pool = await self._pool()
            async with pool.acquire(timeout=self.timeout) as con:
                await con.execute(guard_schema_sql(self.table), timeout=self.timeout)
        except (ReplayGuardUnavailable, ConfigError):
            raise
        except Exception as exc:
            raise ReplayGuardUnavailable(f"could not create the replay guard table: {_detail(exc)}") from exc

    async def remember(self, jti: str, message_id: str, expires_at: float) -> str:
        """Record ``message_id`` for ``jti`` if new (or expired); return the one recorded first."""
        keep = max(0.001, expires_at - self._clock())
        first = await self._fetchval(self._remember_sql, jti, message_id, keep if math.isfinite(keep) else 0.001)
        self._maybe_sweep()
        return str(first)

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if self._sweeper is None and sweep_due(self._last_sweep, now, self.sweep_interval):
            self._last_sweep = now
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_once(), name="idemsend-jti-sweep")

    async def _sweep_once(self) -> int:
        try:
            return await self.sweep()
        except ReplayGuardUnavailable:  # the next remember's sweep tries again
            return 0
        finally:
            self._sweeper = None

    async def sweep(self, *, max_batches: int = 100) -> int:
        """Delete expired rows, ``sweep_batch`` a statement, until none are left (or
        ``max_batches``); how many were deleted."""
        deleted = 0
        for _ in range(max_batches):
            try:
                pool = await self._pool()
                async with pool.acquire(timeout=self.timeout) as con:
                    status = await con.execute(self._sweep_sql, self.sweep_batch, timeout=self.timeout)
            except Exception as exc:
                raise ReplayGuardUnavailable(f"the replay guard's sweep failed: {_detail(exc)}") from exc
            count = int(str(status).rsplit(" ", 1)[-1])
            deleted += count
            if count < self.sweep_batch:
                break
        return deleted

    async def aclose(self) -> None:
        """Stop a background sweep, and close the pool if ``from_url`` made it."""
        self._closed = True
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(sweeper, return_exceptions=True)
        if self._close_pool and self.pool is not None:
            pool, self.pool = self.pool, None
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except Exception:  # a dead server: cut the connections
                pool.terminate()
