"""The SQLite ledger's tables: their names (checked) and the SQL that makes them, pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..._errors import ConfigError

__all__ = ["COLUMNS", "DEFAULT_TABLE", "Tables", "schema_sql", "validate_table"]

#: The records table a ledger uses unless told otherwise; the job map is ``<table>_jobs``.
DEFAULT_TABLE = "idemsend_ledger"

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,58}")


def validate_table(table: str) -> str:
    """``table`` if it can name the ledger's tables (lower-case letters, digits and ``_``,
    not starting with a digit, at most 59 characters, so ``<table>_jobs`` fits too); else
    ``ConfigError`` saying so."""
    if not isinstance(table, str) or not _NAME.fullmatch(table):
        raise ConfigError(
            f"invalid SQLite ledger table name {table!r}: use lower-case letters, digits and '_', not starting"
            " with a digit, at most 59 characters"
        )
    return table


@dataclass(frozen=True, slots=True)
class Tables:
    """The records table (``t``) and the job map (``j``), quoted for SQL."""

    table: str
    jobs_table: str
    t: str
    j: str

    @classmethod
    def of(cls, table: str) -> Tables:
        """The tables named by ``table`` (checked with ``validate_table``)."""
        validate_table(table)
        return cls(table, f"{table}_jobs", f'"{table}"', f'"{table}_jobs"')


def schema_sql(table: str = DEFAULT_TABLE) -> str:
    """The SQL that makes the ledger's two tables and their expiry indexes (idempotent).

    Times (``first_sent_at``, ``lease_until``, ``expires_at``) are Unix seconds as REAL,
    read from SQLite's own clock (``julianday('now')``, the host's clock). ``body`` is the
    frozen request body while in flight (NULL once done or fatal)."""
    tables = Tables.of(table)
    t, j = tables.t, tables.j
    return f"""
CREATE TABLE IF NOT EXISTS {t} (
  key TEXT PRIMARY KEY NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('in_flight', 'done', 'fatal')),
  job_id TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  body BLOB,
  first_sent_at REAL NOT NULL,
  token TEXT NOT NULL DEFAULT '',
  lease_until REAL,
  response TEXT,
  code TEXT,
  message TEXT,
  expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS "{table}_expires" ON {t} (expires_at);
CREATE TABLE IF NOT EXISTS {j} (
  job_id TEXT PRIMARY KEY NOT NULL,
  key TEXT NOT NULL,
  expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS "{table}_jobs_expires" ON {j} (expires_at);
"""


#: ``start()`` reads each table's columns with these: a table of that name that is not the
#: ledger's fails them (``no such column``).
COLUMNS = (
    "SELECT key, state, job_id, fingerprint, body, first_sent_at, token, lease_until, response, code, message,"
    " expires_at FROM {t} LIMIT 0",
    "SELECT job_id, key, expires_at FROM {j} LIMIT 0",
)
