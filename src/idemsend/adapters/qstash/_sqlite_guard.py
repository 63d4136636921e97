"""``SQLiteReplayGuard``: the replay guard in a table of a SQLite file (by default the
``SQLiteLedger``'s own file), so a token's ``jti`` outlives a restart and is shared by
every webhook process on the host.

One row per token: ``jti`` (primary key), the message id it first came with, and when it
may be forgotten (``expires_at``, Unix seconds: the host's clock, which every process on
the host shares). Remembering is one ``BEGIN IMMEDIATE`` transaction: read the row, insert
it if there is none (or it has expired), commit; the write lock taken first makes a
concurrent first caller in another process wait and then read the row already there.
Expired rows are never answered as live, and are deleted in the same transaction at most
once per ``sweep_interval`` (``sweep_batch`` rows at a time).

stdlib ``sqlite3`` only, on a connection used from one thread of the guard's own.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..._errors import ConfigError
from ...ledger._sqlite._schema import validate_table
from ._guards import ReplayGuardUnavailable

__all__ = ["SQLiteReplayGuard"]

_NOW = "SELECT (julianday('now') - 2440587.5) * 86400.0"


class SQLiteReplayGuard:
    """A ``SignatureReplayGuard`` in a SQLite file, shared by every webhook process on one host.

    ``SQLiteReplayGuard(path)``, or ``for_ledger(ledger)`` beside a ``SQLiteLedger`` (the
    handler's default when its engine has one): the same file, table ``<ledger table>_jti``.
    Options: ``table``, ``timeout`` (seconds: SQLite's busy timeout), ``sweep_interval``
    (seconds between deletions of expired rows, 0 for none) and ``sweep_batch``. The table
    is made on first use. Any store failure raises ``ReplayGuardUnavailable`` (the handler
    answers 503)."""

    def __init__(
        self, path: str | os.PathLike[str], *, table: str = "idemsend_qstash_jti", timeout: float = 5.0,
        sweep_interval: float = 60.0, sweep_batch: int = 500,
    ) -> None:
        self.path = os.fspath(path)
        self.table = validate_table(table)
        if not timeout > 0:
            raise ConfigError(f"timeout must be > 0, got {timeout!r}")
        if not sweep_interval >= 0:
            raise ConfigError(f"sweep_interval must be >= 0 (0: no sweep), got {sweep_interval!r}")
        if isinstance(sweep_batch, bool) or not isinstance(sweep_batch, int) or sweep_batch < 1:
            raise ConfigError(f"sweep_batch must be an int >= 1, got {sweep_batch!r}")
        self.timeout = float(timeout)
        self.sweep_interval = float(sweep_interval)
        self.sweep_batch = sweep_batch
        t = f'"{table}"'
        self._schema = (
            f"CREATE TABLE IF NOT EXISTS {t} (jti TEXT PRIMARY KEY NOT NULL, message_id TEXT NOT NULL,"
            " expires_at REAL NOT NULL)",
            f'CREATE INDEX IF NOT EXISTS "{table}_expires" ON {t} (expires_at)',
        )
        self._read = f"SELECT message_id, expires_at FROM {t} WHERE jti = ?"
        self._put = f"INSERT OR REPLACE INTO {t} (jti, message_id, expires_at) VALUES (?, ?, ?)"
        self._sweep = (f"DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} WHERE expires_at <= ?"
                       " ORDER BY expires_at LIMIT ?)")
        self._con: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="idemsend-jti")
        self._last_sweep: float | None = None
        self._closed = False

    @classmethod
    def for_ledger(cls, ledger: Any, *, table: str | None = None) -> SQLiteReplayGuard:
        """A guard in the file of ``ledger`` (a ``SQLiteLedger``: its public ``path``,
        ``table`` and ``timeout``), table ``<ledger table>_jti`` unless given."""
        return cls(ledger.path, table=table or f"{ledger.table}_jti", timeout=float(ledger.timeout))

    def __repr__(self) -> str:
        return f"<SQLiteReplayGuard path={self.path!r} table={self.table!r}>"

    def _connect(self) -> sqlite3.Connection:
        if self._con is None:
            con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            try:
                con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                con.execute("PRAGMA journal_mode = WAL").fetchone()
                for sql in self._schema:
                    con.execute(sql)
            except BaseException:
                con.close()
                raise
            self._con = con
        return self._con

    def _remember(self, jti: str, message_id: str, expires_at: float) -> str:
        try:
            con = self._connect()
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._drop()
            raise ReplayGuardUnavailable(f"the replay guard's SQLite file could not answer: {exc}") from exc
        try:
            now = float(con.execute(_NOW).fetchone()[0])
            row = con.execute(self._read, (jti,)).fetchone()
            if row is not None and float(row[1]) > now:
                first = str(row[0])
            else:
                con.execute(self._put, (jti, message_id, expires_at if math.isfinite(expires_at) else now))
                first = message_id
            mono = time.monotonic()
            if self.sweep_interval > 0 and (self._last_sweep is None or mono - self._last_sweep >= self.sweep_interval):
                self._last_sweep = mono
                con.execute(self._sweep, (now, self.sweep_batch))
            con.execute("COMMIT")
        except BaseException as exc:
            try:
                if con.in_transaction:
                    con.execute("ROLLBACK")
            except sqlite3.Error:
                self._drop()
            if isinstance(exc, sqlite3.Error):
                raise ReplayGuardUnavailable(f"the replay guard's SQLite file could not answer: {exc}") from exc
            raise
        return first

    def _drop(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            con.close()

    async def start(self) -> None:
        """Open the file and make the table if it is missing; ``ReplayGuardUnavailable`` when it cannot."""
        try:
            await self._run(self._connect)
        except sqlite3.Error as exc:
            raise ReplayGuardUnavailable(f"the replay guard's SQLite file {self.path} cannot be used: {exc}") from exc

    async def remember(self, jti: str, message_id: str, expires_at: float) -> str:
        """Record ``message_id`` for ``jti`` if new (or expired); return the one recorded first."""
        first: str = await self._run(self._remember, jti, message_id, float(expires_at))
        return first

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._closed:
            raise ReplayGuardUnavailable("the replay guard is closed")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def aclose(self) -> None:
        """Close the file; the guard is not used after it. A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._thread, self._drop)
        self._thread.shutdown(wait=False)
