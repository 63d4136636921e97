"""PostgresLedger: the ledger in a PostgreSQL table (extra ``postgres``, asyncpg).

The same protocol and state machine as RedisLedger, on the database many teams already
run and back up. Two tables (names from ``table``, default ``idemsend_ledger``):

* ``<table>``: one row per key: ``state`` (in_flight|done|fatal), ``job_id``,
  ``fingerprint``, ``body`` (the frozen bytes, NULL once done or fatal),
  ``first_sent_at``, ``token`` (the claim that holds or settled it), ``lease_until``,
  ``response`` (JSON text), ``code``, ``message``, ``expires_at``.
* ``<table>_jobs``: the key each job id's first attempt derived (the unstable-key check).

Every call is **one statement** (``INSERT … ON CONFLICT … RETURNING`` with CTEs; the
token checks sit in the ``WHERE``), so it is atomic on its own, in autocommit, with no
session state: it works behind PgBouncer in transaction mode. Times come from the
database's ``now()``, never the worker's clock (see ``CLOCK`` in ``_sql.py`` for why ``now()``).

Concurrent calls share round trips (``GroupCommit``): the claims queued meanwhile go as
one statement over ``unnest($1::text[], …)`` arrays, the completions as another (sent at
the same time on a second connection), and so on; calls on the same key in one batch go
in order, one statement after the other. A statement the database refuses for one call's
data (a key too long for the primary key's index, a lease past the last timestamp) is
split in halves and sent again until that call stands alone: its caller gets the error,
the others their answers. A store failure fails the whole statement's calls.

Records live ``retention`` after they were claimed, completed or failed. Expired rows are
never answered as live (every statement checks ``expires_at``), and a background task
deletes them in small batches (``sweep()``), skipping rows that are locked.

The package, one concern per module:

* ``_ledger.py``: ``PostgresLedger``, the protocol's methods over the other modules;
* ``_schema.py``: the tables' names (checked, quoted) and the SQL that makes them, pure;
* ``_sql.py``: every statement, pure text;
* ``_rows.py``: calls as a statement's arrays, rows as answers, pure;
* ``_executor.py``: how a ``GroupCommit`` batch reaches PostgreSQL (rounds, one statement
  per kind, a refused statement split until the culprit stands alone);
* ``_pool.py``: the pool (given, or made from the DSN), one statement on one connection,
  store failures in words without the password;
* ``_sweep.py``: deleting expired rows, and the background task;
* ``_fitness.py``: what ``start()`` reads, the facts it gives the one fitness policy
  (``idemsend.ledger.judge``), and the table checks.
"""
from ..._errors import MissingExtraError

try:
    import asyncpg  # noqa: F401 - every module here needs it: say which extra brings it
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra test
    raise MissingExtraError("postgres", "asyncpg") from exc

from ._ledger import PostgresLedger
from ._schema import DEFAULT_TABLE, schema_sql, validate_table

__all__ = ["DEFAULT_TABLE", "PostgresLedger", "schema_sql", "validate_table"]
