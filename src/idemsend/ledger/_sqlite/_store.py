"""The SQLite file: one connection, used from one thread, and a batch of calls applied in
one ``BEGIN IMMEDIATE`` transaction.

``BEGIN IMMEDIATE`` takes the database's write lock before anything is read, so every
read-then-write of a batch is atomic against every other connection, in this process or
another (SQLite has one writer at a time; WAL lets readers on). A connection that finds
the lock held waits up to ``busy_timeout`` (the ledger's ``timeout``) and then fails
with ``SQLITE_BUSY``: a ``LedgerUnavailableError``, nothing written. A process killed
mid-transaction (SIGKILL) leaves no half-written batch: its uncommitted frames are never
part of the database, and the OS drops its locks with it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from .._base import LedgerRecord, LedgerUnavailableError
from .._records import ledger_record, malformed
from ._decide import Op, Row, Write, decide_claim, decide_clear, decide_settle, live
from ._schema import Tables

__all__ = ["NOW", "Store", "unavailable"]

#: SQLite's clock (the host's), as Unix seconds with millisecond resolution.
NOW = "SELECT (julianday('now') - 2440587.5) * 86400.0"

_ROW = ("SELECT state, job_id, fingerprint, body, first_sent_at, token, lease_until, response, code, message,"
        " expires_at FROM {t} WHERE key = ?")


def unavailable(exc: BaseException, path: str = "") -> LedgerUnavailableError:
    """A store failure in words (the file, and what SQLite said); a ``LedgerUnavailableError`` as it is."""
    if isinstance(exc, LedgerUnavailableError):
        return exc
    where = f" at {path}" if path else ""
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return LedgerUnavailableError(
            f"the SQLite ledger{where} is busy: another connection held its write lock past the busy timeout ({exc})"
        )
    return LedgerUnavailableError(f"the SQLite ledger{where} failed: {type(exc).__name__}: {exc}")


class Store:
    """The ledger's connection to its file (opened on first use, in the calling thread,
    which is always the ledger's own) and the statements a batch runs."""

    def __init__(self, path: str, tables: Tables, *, timeout: float, synchronous: str, retention: float) -> None:
        self.path = path
        self.tables = tables
        self.timeout = timeout
        self.synchronous = synchronous
        self.retention = retention
        self.con: sqlite3.Connection | None = None
        self.file: tuple[int, int] | None = None  # (device, inode) of the file the connection opened
        #: Transactions committed so far (one per batch): what group commit saves.
        self.transactions = 0
        t, j = tables.t, tables.j
        self._row = _ROW.format(t=t)
        self._note = f"SELECT key FROM {j} WHERE job_id = ? AND expires_at > ?"
        self._put_note = (
            f"INSERT INTO {j} (job_id, key, expires_at) VALUES (?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET"
            " key = excluded.key, expires_at = excluded.expires_at"
        )
        self._keep_note = f"UPDATE {j} SET expires_at = max(expires_at, ?) WHERE job_id = ? AND key = ?"
        self._drop_note = f"DELETE FROM {j} WHERE job_id = ? AND key = ?"
        self._put = (
            f"INSERT OR REPLACE INTO {t} (key, state, job_id, fingerprint, body, first_sent_at, token, lease_until,"
            " response, code, message, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self._take = f"UPDATE {t} SET token = ?, lease_until = ? WHERE key = ?"
        self._done = (
            f"UPDATE {t} SET state = 'done', response = ?, body = NULL, lease_until = NULL, expires_at = ?"
            " WHERE key = ?"
        )
        self._fatal = (
            f"UPDATE {t} SET state = 'fatal', code = ?, message = ?, body = NULL, lease_until = NULL,"
            " expires_at = ? WHERE key = ?"
        )
        self._delete = f"DELETE FROM {t} WHERE key = ?"

    # -- the connection ------------------------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        """The open connection (opened now if there is none), in WAL mode with the ledger's
        ``synchronous`` and busy timeout. Raises ``sqlite3.Error`` as SQLite does."""
        if self.con is None:
            con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            try:
                con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                con.execute("PRAGMA journal_mode = WAL").fetchone()
                con.execute(f"PRAGMA synchronous = {self.synchronous}")
            except BaseException:
                con.close()
                raise
            self.con = con
            self.file = self._identity()
        elif self.file is not None and self._identity() != self.file:
            raise LedgerUnavailableError(
                f"the SQLite ledger file {self.path} was deleted or replaced while this process had it open:"
                " refusing to record into a file the other workers no longer see (two ledgers, double sends)."
                " Restart the workers so they all open the same file"
            )
        return self.con

    def _identity(self) -> tuple[int, int] | None:
        if self.path == ":memory:":
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return (-1, -1)
        return (st.st_dev, st.st_ino)

    def close(self) -> None:
        """Close the connection (a new one is opened if the store is used again)."""
        con, self.con = self.con, None
        if con is not None:
            con.close()

    def transaction(self, work: Callable[[sqlite3.Connection, float], Any]) -> Any:
        """``work(con, now)`` inside ``BEGIN IMMEDIATE`` … ``COMMIT``, ``now`` read from
        SQLite's clock once the write lock is held; rolled back when anything raises.
        A failure of the store raises ``LedgerUnavailableError`` (the connection is closed,
        so the next batch opens a fresh one)."""
        try:
            con = self.connect()
            con.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise unavailable(exc, self.path) from exc
        try:
            now = float(con.execute(NOW).fetchone()[0])
            result = work(con, now)
            con.execute("COMMIT")
        except BaseException as exc:
            try:
                if con.in_transaction:
                    con.execute("ROLLBACK")
            except sqlite3.Error:
                self.close()
            if isinstance(exc, sqlite3.Error):
                raise unavailable(exc, self.path) from exc
            raise
        self.transactions += 1
        return result

    # -- a batch -------------------------------------------------------------------------

    def run(self, ops: Sequence[Op]) -> list[Any]:
        """Apply ``ops`` in order, in one transaction; one answer per op (or the exception
        that op alone met: a record it cannot read). A store failure raises for them all."""
        return list(self.transaction(lambda con, now: [self._one(con, op, now) for op in ops]))

    def _one(self, con: sqlite3.Connection, op: Op, now: float) -> Any:
        try:
            row = live(self._read(con, op.key), now)
            if op.kind == "claim":
                found = con.execute(self._note, (op.args[0], now)).fetchone()
                claim, write = decide_claim(op, row, None if found is None else str(found[0]), now)
                self._write(con, op, row, write, now)
                return claim
            if op.kind == "clear":
                cleared, write = decide_clear(row, bool(op.args[0]))
                self._write(con, op, row, write, now)
                return cleared
            answer, write = decide_settle(op.kind, op, row)
            self._write(con, op, row, write, now)
            return answer
        except sqlite3.Error:
            raise
        except LedgerUnavailableError as exc:
            return exc

    def _read(self, con: sqlite3.Connection, key: str) -> Row | None:
        found = con.execute(self._row, (key,)).fetchone()
        if found is None:
            return None
        try:
            state, job_id, fp, body, first, token, lease_until, response, code, message, expires = found
            return Row(
                str(state), str(job_id), str(fp), None if body is None else bytes(body), float(first),
                str(token), None if lease_until is None else float(lease_until),
                None if response is None else str(response), code, message, float(expires),
            )
        except (TypeError, ValueError) as exc:
            raise malformed(key, exc) from None

    def _write(self, con: sqlite3.Connection, op: Op, row: Row | None, write: Write, now: float) -> None:
        expires = now + self.retention
        kind, key = write.kind, op.key
        if kind == "fresh":
            job_id, payload, fp, token, lease = op.args
            con.execute(self._put, (key, "in_flight", job_id, fp, payload, now, token, now + lease,
                                    None, None, None, expires))
        elif kind == "take":
            con.execute(self._take, (op.args[3], now + op.args[4], key))
        elif kind == "recreate":
            con.execute(self._put, (key, "done", "", "", None, now, op.args[0], None, op.args[1], None, None,
                                    expires))
        elif kind == "done":
            con.execute(self._done, (op.args[1], expires, key))
        elif kind == "fatal":
            con.execute(self._fatal, (op.args[1], op.args[2], expires, key))
        elif kind == "renew":
            con.execute(self._take, (op.args[0], now + op.args[1], key))
        elif kind == "free":
            con.execute(self._take, ("", now, key))
        elif kind == "delete":
            con.execute(self._delete, (key,))
            if row is not None:
                con.execute(self._drop_note, (row.job_id, key))
        if write.note:
            con.execute(self._put_note, (op.args[0], key, expires))
        elif kind in ("done", "fatal") and row is not None:  # the note lives at least as long as the record
            con.execute(self._keep_note, (expires, row.job_id, key))

    # -- reads and the sweep ---------------------------------------------------------------

    def get(self, key: str) -> LedgerRecord | None:
        """The live record of ``key`` (one read, no write lock)."""
        try:
            con = self.connect()
            now = float(con.execute(NOW).fetchone()[0])
            row = live(self._read(con, key), now)
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise unavailable(exc, self.path) from exc
        if row is None:
            return None
        try:
            return ledger_record(
                key, row.state, job_id=row.job_id, fingerprint=row.fingerprint, first_sent_at=row.first_sent_at,
                response=row.response, code=row.code, message=row.message, lease_until=row.lease_until,
            )
        except (ValueError, TypeError) as exc:
            raise malformed(key, exc) from None

    def sweep(self, size: int) -> int:
        """Delete at most ``size`` expired rows of each table, in one short transaction;
        answers how many went."""

        def work(con: sqlite3.Connection, now: float) -> int:
            deleted = 0
            for table in (self.tables.t, self.tables.j):
                cur = con.execute(
                    f"DELETE FROM {table} WHERE rowid IN"
                    f" (SELECT rowid FROM {table} WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
                    (now, size),
                )
                deleted += max(cur.rowcount, 0)
            return deleted

        result: int = self.transaction(work)
        return result
