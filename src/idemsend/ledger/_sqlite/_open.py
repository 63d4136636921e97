"""Opening the ledger's file: what ``start()`` runs in the ledger's thread, before the
fitness policy judges what it read. ``check_path`` looks at the directory and the
filesystem; ``prepare`` opens the file, makes the tables and reads SQLite's settings;
``refusal`` words a file the ledger cannot use as a ``ConfigError``.
"""

from __future__ import annotations

import os
import sqlite3

from ..._errors import ConfigError
from .._base import LedgerUnavailableError
from ._fitness import check_directory, mount_of, network_refusal, read_mounts
from ._schema import COLUMNS, schema_sql
from ._store import Store, unavailable

__all__ = ["check_path", "prepare", "refusal"]


def check_path(path: str, allow_network_fs: bool) -> str | None:
    """The directory and filesystem checks (``ConfigError`` when refused); answers the
    network filesystem's refusal when ``allow_network_fs`` accepted it (else ``None``)."""
    if path == ":memory:":
        return None
    real = os.path.realpath(path)
    check_directory(real)
    mounts = read_mounts()
    network = None if mounts is None else network_refusal(real, mount_of(real, mounts))
    if network is not None and not allow_network_fs:
        raise ConfigError(network)
    return network


def prepare(store: Store) -> tuple[tuple[int, ...], str, int]:
    """Open the file, make the tables (checking their columns), and answer SQLite's
    version, ``journal_mode`` and ``synchronous``. A file the ledger cannot use raises
    ``ConfigError``; a busy or failing one ``LedgerUnavailableError``."""
    try:
        con = store.connect()
        version = tuple(int(n) for n in con.execute("SELECT sqlite_version()").fetchone()[0].split("."))
        journal = str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        sync = int(con.execute("PRAGMA synchronous").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        store.close()
        raise refusal(store, exc) from None
    except sqlite3.Error as exc:
        store.close()
        raise unavailable(exc, store.path) from exc

    def create(con: sqlite3.Connection, now: float) -> None:
        for statement in schema_sql(store.tables.table).split(";"):
            if statement.strip():
                con.execute(statement)
        for sql in COLUMNS:
            con.execute(sql.format(t=store.tables.t, j=store.tables.j))

    try:
        if not _tables_there(con, store):  # a read: no write lock, no commit, when they exist
            store.transaction(create)
        for sql in COLUMNS:
            con.execute(sql.format(t=store.tables.t, j=store.tables.j))
    except sqlite3.Error as exc:  # reading the tables, or their columns
        if _busy(exc):
            raise unavailable(exc, store.path) from exc
        raise refusal(store, exc) from None
    except LedgerUnavailableError as exc:
        cause = exc.__cause__
        if isinstance(cause, sqlite3.DatabaseError) and not _busy(cause):
            raise refusal(store, cause) from None
        raise
    return version, journal, sync


def _busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _tables_there(con: sqlite3.Connection, store: Store) -> bool:
    """Whether both tables exist (then ``start()`` writes nothing: every worker process,
    RQ's work horse for each job among them, starts without taking the write lock)."""
    found = con.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
        (store.tables.table, store.tables.jobs_table),
    ).fetchone()[0]
    return int(found) == 2


def refusal(store: Store, exc: sqlite3.Error) -> ConfigError:
    """The ``ConfigError`` for a file (or a table in it) the ledger cannot use."""
    text, path, table = str(exc), store.path, store.tables.table
    if "no such column" in text or "already exists" in text:
        return ConfigError(
            f"{table} in {path} is not an idemsend ledger table ({text}); use another table name or another"
            f" file. The ledger's tables are:\n{schema_sql(table)}"
        )
    if "not a database" in text or "malformed" in text:
        return ConfigError(f"{path} is not a SQLite database, or is damaged ({text}): give the ledger a file of"
                           " its own")
    if "readonly" in text or "unable to open" in text:
        return ConfigError(f"the SQLite ledger file {path} cannot be opened for writing ({text})")
    return ConfigError(f"the SQLite ledger file {path} cannot be used: {type(exc).__name__}: {text}")
