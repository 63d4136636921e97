"""PostgresLedger: the ledger over an asyncpg pool; see the package docstring."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from ..._errors import ConfigError
from ..._keys import validate_job_id
from ..._redact import safe_url
from .._base import DEFAULT_RETENTION, ClaimResult, LedgerRecord, LedgerUnavailableError, SettleResult
from .._group import GroupCommit
from .._records import encode_response
from ._executor import Executor, unavailable
from ._fitness import check
from ._pool import Connections, flag, pool_options, split_dsn
from ._rows import Op, clean, record_of
from ._schema import DEFAULT_TABLE, Tables, schema_sql
from ._sql import SWEEP, statements
from ._sweep import sweep_expired, sweep_forever

__all__ = ["PostgresLedger"]


class PostgresLedger:
    """A ledger in a PostgreSQL table, shared by every worker (``pip install 'idemsend[postgres]'``).

    ``PostgresLedger(pool)`` takes an asyncpg pool that you own (made and awaited by you;
    it stays open on ``aclose``); ``PostgresLedger.from_url(dsn)`` makes (and closes) its
    own, on the first call. Options:

    * ``table``: the records table, ``name`` or ``schema.name`` (lower-case letters,
      digits, ``_``); the job map is ``<table>_jobs``. See ``validate_table``.
    * ``retention`` (seconds): how long a record lives after it was claimed, completed or
      failed.
    * ``create_table``: when ``start()`` finds no table, create it (``migrate()``) instead
      of raising ``ConfigError``. Off by default: the role the workers run as should not
      need CREATE rights, and DDL belongs in a deploy step (``await ledger.migrate()``,
      ``idemsend migrate --postgres DSN``), not in every worker's boot.
    * ``timeout`` (seconds): to get a connection and to run one statement; past it the
      call raises ``LedgerUnavailableError`` (the statement is cancelled on the server).
    * ``sweep_interval`` (seconds, 0 for never) and ``sweep_batch``: how often the
      background task deletes expired rows, and how many one statement deletes.
    * ``group_commit``: share round trips between concurrent calls (default). ``False``
      sends every call as its own statement (for measuring what group commit saves).
    * ``on_batch(size)``: called as each batch of calls goes out (telemetry).

    Keys are at most ``max_key_length`` (2,048) characters: a btree entry (the primary key)
    holds at most 2,704 bytes. An ``Engine`` whose provider allows longer keys is refused
    at construction.

    The database must keep what it commits: ``start()`` warns when ``fsync`` or
    ``synchronous_commit`` is off, or the table is UNLOGGED, since a done record lost in a
    crash turns a replay after the provider's window into a double send.
    """

    #: The longest key this ledger stores (engine keys are visible ASCII: characters are bytes).
    max_key_length = 2048

    def __init__(
        self, pool: Any, *, table: str = DEFAULT_TABLE, retention: float = DEFAULT_RETENTION,
        create_table: bool = False, timeout: float = 5.0, sweep_interval: float = 60.0, sweep_batch: int = 500,
        group_commit: bool = True, on_batch: Callable[[int], object] | None = None,
    ) -> None:
        tables = Tables.of(table)
        if not retention > 0:
            raise ConfigError(f"retention must be > 0, got {retention!r}")
        if not timeout > 0:
            raise ConfigError(f"timeout must be > 0, got {timeout!r}")
        if isinstance(sweep_batch, bool) or not isinstance(sweep_batch, int) or sweep_batch < 1:
            raise ConfigError(f"sweep_batch must be an int >= 1, got {sweep_batch!r}")
        if not sweep_interval >= 0:
            raise ConfigError(f"sweep_interval must be >= 0 (0: no background sweep), got {sweep_interval!r}")
        self.table = table
        self.jobs_table = tables.jobs_table
        self.retention = float(retention)
        self.create_table = create_table
        self.timeout = float(timeout)
        self.sweep_interval = float(sweep_interval)
        self.sweep_batch = sweep_batch
        self.group_commit = group_commit
        self._tables = tables
        self._t, self._j = tables.t, tables.j
        self._db = Connections(pool, table=table, timeout=self.timeout)
        self._sql = statements(tables)
        self._sweep_sql = [SWEEP.format(table=self._t), SWEEP.format(table=self._j)]
        execute = Executor(self._db, self._sql, retention=self.retention)
        self._group: GroupCommit[Op, Any] = (
            GroupCommit(execute, on_batch=on_batch, error=unavailable) if group_commit
            else GroupCommit(execute, max_batch=1, max_pipelines=64, on_batch=on_batch, error=unavailable)
        )
        self._start_lock = asyncio.Lock()
        self._checked = False
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    def from_url(
        cls, dsn: str, *, table: str | None = None, retention: float = DEFAULT_RETENTION,
        create_table: bool | None = None, timeout: float = 5.0, statement_cache_size: int | None = None,
        pool_size: int = 8, sweep_interval: float = 60.0, sweep_batch: int = 500, group_commit: bool = True,
        on_batch: Callable[[int], object] | None = None,
    ) -> PostgresLedger:
        """A ledger over an asyncpg pool it makes on first use (and closes on ``aclose``)
        for ``dsn`` (``postgresql://user:password@host:5432/db``, ``postgres://``; every
        libpq-style parameter asyncpg takes, e.g. ``?sslmode=require``).

        Three query parameters are the ledger's own, and are taken out of the DSN:
        ``table=name``, ``create_table=true`` and ``statement_cache_size=0``; a keyword
        argument given here wins over the DSN's. ``statement_cache_size=0`` is for
        PgBouncer in transaction (or statement) mode, where prepared statements cannot
        follow a client from one server connection to the next (PgBouncer 1.21+ with
        ``max_prepared_statements`` set does not need it). ``pool_size`` is the most
        connections it opens (two batches in flight, a statement or two each, plus
        ``get`` and the sweep)."""
        base, own = split_dsn(dsn)
        if table is None:
            table = own.get("table", DEFAULT_TABLE)
        if create_table is None:
            create_table = flag(own.get("create_table", "false"), "create_table", dsn)
        if statement_cache_size is None:
            try:
                statement_cache_size = int(own.get("statement_cache_size", "100"))
            except ValueError:
                raise ConfigError(
                    f"statement_cache_size in the ledger DSN {safe_url(dsn)} must be an integer"
                ) from None
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigError(f"pool_size must be an int >= 1, got {pool_size!r}")
        ledger = cls(
            None, table=table, retention=retention, create_table=create_table, timeout=timeout,
            sweep_interval=sweep_interval, sweep_batch=sweep_batch, group_commit=group_commit, on_batch=on_batch,
        )
        ledger._db.dsn = base
        ledger._db.options = pool_options(
            base, pool_size=pool_size, statement_cache_size=statement_cache_size, timeout=timeout
        )
        return ledger

    def __repr__(self) -> str:
        where = f" dsn={safe_url(self._db.dsn)!r}" if self._db.dsn is not None else ""
        return f"<PostgresLedger table={self.table!r}{where} retention={self.retention:g}s>"

    @property
    def pool(self) -> Any:
        """The asyncpg pool: the one given, or the one made on first use (``None`` before it
        and after ``aclose``)."""
        return self._db.pool

    @pool.setter
    def pool(self, pool: Any) -> None:
        self._db.pool = pool

    @property
    def statements(self) -> int:
        """Statements sent so far (one round trip each): what group commit saves, measured."""
        return self._db.statements

    # -- start, migrate, sweep ----------------------------------------------------------

    async def start(self) -> None:
        """Check once that the database and the table are fit to be a ledger; see ``Ledger.start``.

        * the table (or its job map) does not exist: ``ConfigError`` that says how to make
          it (``migrate()``, ``idemsend migrate --postgres DSN``, or the SQL, quoted), unless
          ``create_table=True``: then it is made here.
        * the role may not SELECT, INSERT, UPDATE and DELETE it, or its columns are not the
          ledger's: ``ConfigError`` (with the GRANT to run).
        * PostgreSQL older than 12: ``ConfigError``.
        * ``fsync`` off, ``synchronous_commit`` off, or an UNLOGGED table: a WARNING (a
          crash can lose committed records); ``default_transaction_isolation`` above read
          committed: a WARNING (concurrent claims then fail with serialization errors).
        * the server cannot be reached: ``LedgerUnavailableError``; call it again later.

        It also starts the background sweep of expired records (``sweep_interval``)."""
        if self._checked:
            return
        async with self._start_lock:
            if self._checked:
                return
            try:
                await check(self._db, self._tables, create_table=self.create_table, migrate=self.migrate)
            except (ConfigError, LedgerUnavailableError):
                raise
            except Exception as exc:
                raise self._db.fail(exc, "could not check the ledger's PostgreSQL: ") from exc
            self._checked = True
            if self.sweep_interval > 0 and self._sweeper is None and not self._db.closed:
                self._sweeper = asyncio.get_running_loop().create_task(
                    sweep_forever(self.sweep, interval=lambda: self.sweep_interval, table=self.table),
                    name="idemsend-ledger-sweep",
                )

    async def migrate(self) -> None:
        """Create the ledger's tables and indexes if they do not exist (``schema_sql``).

        Idempotent, and safe to run from several processes at once (one transaction,
        serialised by a transaction-scoped advisory lock, so it also works through
        PgBouncer). Needs CREATE on the schema: a role without it gets ``ConfigError``
        with the SQL to hand to one that has it. Store failures raise
        ``LedgerUnavailableError``."""

        async def create(con: Any) -> None:
            async with con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"idemsend-migrate:{self.table}")
                await con.execute(schema_sql(self.table), timeout=self.timeout)

        try:
            await self._db.on_connection(create)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise ConfigError(
                f"could not create the ledger table {self.table}: {exc}. Run this as a role that may"
                f" (and GRANT SELECT, INSERT, UPDATE, DELETE on both tables to the workers' role):\n"
                f"{schema_sql(self.table)}"
            ) from None
        except LedgerUnavailableError:
            raise
        except Exception as exc:
            raise self._db.fail(exc, "could not create the ledger table: ") from exc

    async def sweep(self, *, batch: int | None = None, max_batches: int | None = None) -> int:
        """Delete expired records and job notes, ``batch`` rows (default ``sweep_batch``)
        per statement, until none is left or ``max_batches`` statements ran per table.
        Each statement locks only its own rows and skips rows another statement holds,
        so a sweep never waits for a claim and a claim waits at most for one short
        statement. Answers how many rows it deleted. The background task calls it every
        ``sweep_interval`` seconds; expired rows are never answered as live meanwhile.
        Store failures raise ``LedgerUnavailableError``."""
        size = self.sweep_batch if batch is None else batch
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"batch must be an int >= 1, got {size!r}")
        return await sweep_expired(self._db, self._sweep_sql, size=size, max_batches=max_batches)

    # -- the state machine ---------------------------------------------------------------

    def _call(self, kind: str, key: str, *args: Any) -> asyncio.Future[Any]:
        return self._group.submit(Op(kind, clean(key), args))

    async def claim(
        self, *, key: str, job_id: str, payload: bytes, fingerprint: str, token: str, lease: float
    ) -> ClaimResult:
        """See ``Ledger.claim``. One statement (shared with the claims queued meanwhile)."""
        validate_job_id(job_id)  # one rule for every ledger, before anything is batched
        result: ClaimResult = await self._call(
            "claim", key, clean(job_id), bytes(payload), clean(fingerprint), clean(token), float(lease)
        )
        return result

    async def complete(self, *, key: str, token: str, response: Mapping[str, Any]) -> SettleResult:
        """See ``Ledger.complete``."""
        body = encode_response(response)  # ASCII: \\u0000 and all, as text can hold it
        result: SettleResult = await self._call("complete", key, clean(token), body)
        return result

    async def fail(self, *, key: str, token: str, code: str, message: str) -> SettleResult:
        """See ``Ledger.fail``."""
        result: SettleResult = await self._call("fail", key, clean(token), clean(code), clean(message))
        return result

    async def renew(self, *, key: str, token: str, lease: float) -> SettleResult:
        """See ``Ledger.renew``."""
        result: SettleResult = await self._call("renew", key, clean(token), float(lease))
        return result

    async def release(self, *, key: str, token: str, forget: bool = False) -> SettleResult:
        """See ``Ledger.release``: ``forget`` deletes the record and its job id's note."""
        result: SettleResult = await self._call("release", key, clean(token), bool(forget))
        return result

    async def clear(self, key: str, *, force: bool = False) -> bool:
        """See ``Ledger.clear``: one statement checks the state (and code) and deletes."""
        result: bool = await self._call("clear", key, bool(force))
        return result

    async def get(self, key: str) -> LedgerRecord | None:
        """See ``Ledger.get``: one SELECT (outside the batches); an expired row is ``None``."""
        try:
            rows = await self._db.fetch(self._sql["get"], clean(key))
        except LedgerUnavailableError:
            raise
        except Exception as exc:
            raise self._db.fail(exc) from exc
        return record_of(key, rows[0]) if rows else None

    async def aclose(self) -> None:
        """Wait for the calls already made, stop the sweep, then close the pool if
        ``from_url`` made it. A second call does nothing."""
        await self._group.drain()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
        await self._db.close()
