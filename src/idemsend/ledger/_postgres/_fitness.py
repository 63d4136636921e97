"""Is this PostgreSQL fit to be a ledger, and are its tables there? What ``start()`` reads
(one ``FACTS`` row, then a look at each table's columns), the facts it gives the one
fitness policy (``store_facts``, pure; ``idemsend.ledger.judge``), and the table checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from ..._errors import ConfigError
from .._fitness import Caution, Finding, StoreFacts, judge
from ._pool import Connections
from ._schema import COLUMNS, Tables, schema_sql
from ._sql import FACTS

__all__ = ["check", "store_facts"]


async def check(
    db: Connections, tables: Tables, *, create_table: bool, migrate: Callable[[], Awaitable[None]],
    migrated: bool = False,
) -> None:
    """Judge the server (refused: ``ConfigError`` before the tables are looked at), then
    check the tables: missing ones are made with ``migrate`` when ``create_table`` (once),
    else ``ConfigError`` with the SQL; a role that may not use them, or tables that are not
    the ledger's, ``ConfigError``. Then the verdict's warnings are logged. Store failures
    raise as they are."""
    [facts] = await db.fetch(FACTS, tables.t, tables.j)
    _, role, database, _, _, _, has_rec, has_jobs, rec_ok, jobs_ok, _ = facts
    verdict = judge(store_facts(facts, tables.table))
    verdict.refuse()  # before the tables are looked at: an old server is named as such
    if not (has_rec and has_jobs):
        if not create_table or migrated:
            missing = " and ".join(
                name for name, there in ((tables.table, has_rec), (tables.jobs_table, has_jobs)) if not there
            )
            raise ConfigError(
                f"the ledger table {missing} does not exist in database {database} (as seen by role {role}"
                " with its search_path). Create it once, as a role that may: `await ledger.migrate()`,"
                " `idemsend migrate --postgres DSN`, or this SQL (docs/ledgers.md); or make the"
                f" ledger with create_table=True to create it on first use:\n{schema_sql(tables.table)}"
            )
        await migrate()
        return await check(db, tables, create_table=create_table, migrate=migrate, migrated=True)
    if not (rec_ok and jobs_ok):
        raise ConfigError(
            f"role {role} may not use the ledger tables {tables.table} and {tables.jobs_table} in database"
            f" {database}: GRANT SELECT, INSERT, UPDATE, DELETE ON {tables.t}, {tables.j} TO {role};"
        )
    for sql in COLUMNS:
        try:
            await db.fetch(sql.format(t=tables.t, j=tables.j))
        except asyncpg.UndefinedColumnError as exc:
            raise ConfigError(
                f"{tables.table} in database {database} is not an idemsend ledger table ({exc}); use another"
                f" table name, or create it with:\n{schema_sql(tables.table)}"
            ) from None
    verdict.enforce()
    return None


def store_facts(row: Sequence[Any], table: str) -> StoreFacts:
    """The facts ``judge`` rules on, from the ``FACTS`` row ``start()`` read (pure)."""
    version, role, database, fsync, sync_commit, isolation, *_, persistence = row
    where = f"database {database}"
    loses = []
    if fsync == "off":
        loses.append(Finding(where, "fsync is off (an operating-system crash can lose committed records)"))
    if sync_commit == "off":
        loses.append(Finding(where, "synchronous_commit is off (a server crash loses the last commits)"))
    if persistence == "u":
        loses.append(Finding(where, f"{table} is UNLOGGED (a server crash empties it)"))
    cautions = []
    if isolation != "read committed":
        cautions.append(Caution("isolation", (
            f"idemsend: default_transaction_isolation is {isolation!r} for role {role}: concurrent claims of one key"
            " then fail with serialization errors (LedgerUnavailableError, retried) instead of waiting. Run ALTER"
            f" ROLE {role} SET default_transaction_isolation = 'read committed'."
        )))
    return StoreFacts(
        store="the ledger's PostgreSQL",
        ledger="PostgresLedger",
        too_old=(Finding(where, f"runs PostgreSQL {version // 10000}.{version % 10000}"),) if version < 120000 else (),
        needs="PostgreSQL 12 or newer",
        loses=tuple(loses),
        persist="not in production",
        cautions=tuple(cautions),
    )
