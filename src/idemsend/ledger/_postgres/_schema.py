"""The ledger's tables: their names (checked, quoted) and the SQL that makes them.

Pure: no connection, no asyncpg. ``validate_table`` is why no table name can inject SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..._errors import ConfigError

__all__ = ["COLUMNS", "DEFAULT_TABLE", "Tables", "qualified", "schema_sql", "validate_table"]

#: The table a ledger uses unless told otherwise (its job map is ``<table>_jobs``).
DEFAULT_TABLE = "idemsend_ledger"

# Lower case only, so the quoted name (always used here) and the unquoted one a person
# types in psql are the same table; at most 46 characters, so "<table>_jobs_expires_idx"
# fits PostgreSQL's 63-byte names without being truncated into a collision.
_TABLE = re.compile(r"(?:([a-z_][a-z0-9_]{0,62})\.)?([a-z_][a-z0-9_]{0,45})")


def validate_table(table: str) -> tuple[str | None, str]:
    """``(schema or None, name)`` of a ledger table name, or ``ConfigError``.

    A name is ``name`` or ``schema.name``: lower-case letters, digits and ``_``, not
    starting with a digit; the name at most 46 characters. Nothing else is accepted, and
    the name is always quoted in SQL besides, so no table name can inject SQL."""
    if not isinstance(table, str):
        raise ConfigError(f"the ledger table name must be a str, got {type(table).__name__}")
    match = _TABLE.fullmatch(table)
    if match is None:
        raise ConfigError(
            f"invalid ledger table name {table!r}: use `name` or `schema.name` of lower-case letters, digits and"
            " underscores, not starting with a digit, the name at most 46 characters"
        )
    return match.group(1), match.group(2)


def qualified(schema: str | None, name: str) -> str:
    """A table name as SQL: quoted, with its schema when it has one."""
    return f'"{schema}"."{name}"' if schema else f'"{name}"'


def schema_sql(table: str = DEFAULT_TABLE) -> str:
    """The SQL that creates the ledger's tables and indexes (idempotent: ``IF NOT EXISTS``).
    ``PostgresLedger.migrate()`` runs it; docs/ledgers.md shows it for the default name."""
    schema, name = validate_table(table)
    rec, jobs = qualified(schema, name), qualified(schema, f"{name}_jobs")
    return f"""\
CREATE TABLE IF NOT EXISTS {rec} (
    key           text COLLATE "C" PRIMARY KEY,
    state         text NOT NULL CHECK (state IN ('in_flight', 'done', 'fatal')),
    job_id        text NOT NULL,
    fingerprint   text NOT NULL,
    body          bytea,
    first_sent_at timestamptz NOT NULL,
    token         text NOT NULL DEFAULT '',
    lease_until   timestamptz,
    response      text,
    code          text,
    message       text,
    expires_at    timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS "{name}_expires_idx" ON {rec} (expires_at);
CREATE TABLE IF NOT EXISTS {jobs} (
    job_id     text COLLATE "C" PRIMARY KEY,
    key        text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS "{name}_jobs_expires_idx" ON {jobs} (expires_at);
"""


@dataclass(frozen=True, slots=True)
class Tables:
    """A ledger's two tables: ``table`` and ``jobs_table`` as given and shown
    (``schema.name``), ``t`` and ``j`` as SQL (quoted)."""

    table: str
    jobs_table: str
    t: str
    j: str

    @classmethod
    def of(cls, table: str) -> Tables:
        """The tables of ``table`` (the records; the job map is ``<table>_jobs``), or ``ConfigError``."""
        schema, name = validate_table(table)
        jobs = f"{schema}.{name}_jobs" if schema else f"{name}_jobs"
        return cls(table, jobs, qualified(schema, name), qualified(schema, f"{name}_jobs"))


#: Statements that read no row but name every column of the two tables (``{t}``, ``{j}``):
#: they fail with UndefinedColumnError on a table that is not the ledger's.
COLUMNS = (
    "SELECT key, state, job_id, fingerprint, body, first_sent_at, token, lease_until, response, code, message,"
    " expires_at FROM {t} WHERE false",
    "SELECT job_id, key, expires_at FROM {j} WHERE false",
)

