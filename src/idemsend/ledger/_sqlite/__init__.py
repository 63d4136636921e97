"""SQLiteLedger: the ledger in a SQLite file, for every worker process on one host (stdlib ``sqlite3``).

The durable embedded ledger: nothing to run, survives a restart and a SIGKILL of any
process, shared by the processes of one host (RQ or Celery on one box, a cron job). Two
tables in the file (names from ``table``, default ``idemsend_ledger``), the columns of
PostgresLedger's: ``<table>`` (one row per key) and ``<table>_jobs`` (the key each job
id's first attempt derived, for the unstable-key check).

Every call runs in the ledger's own thread on its one connection, in a ``BEGIN
IMMEDIATE`` transaction shared with the calls queued meanwhile (``GroupCommit``): the
write lock is taken before anything is read, so the read-then-write of each call is
atomic against every other process, and one commit (one fsync with the default
``synchronous=FULL``) serves the whole batch. WAL mode lets reads (``get``, ``idemsend
inspect``) run beside a writer. Times come from SQLite's clock (``julianday('now')``,
the host's clock), read once per transaction after the lock is held.

The package, one concern per module:

* ``_ledger.py``: ``SQLiteLedger``, the protocol's methods, ``start()`` and the sweep;
* ``_schema.py``: the tables' names (checked) and the SQL that makes them, pure;
* ``_decide.py``: what each call does to a record (the rules, pure);
* ``_store.py``: the connection, the transaction, the statements that read and write;
* ``_open.py``: what ``start()`` runs in the ledger's thread (the path checks, the
  tables made, SQLite's settings read) and the words for a file it cannot use;
* ``_fitness.py``: the path checks (directory, network filesystem from ``/proc/mounts``)
  and the facts for the one fitness policy (``idemsend.ledger.judge``).
"""

from ._ledger import SQLiteLedger
from ._schema import DEFAULT_TABLE, schema_sql, validate_table

__all__ = ["DEFAULT_TABLE", "SQLiteLedger", "schema_sql", "validate_table"]
