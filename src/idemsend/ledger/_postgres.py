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
database's ``now()``, never the worker's clock (see ``_CLOCK`` below for why ``now()``).

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
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import random
import re
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .._errors import ConfigError, MissingExtraError
from .._keys import validate_job_id
from .._log import fields
from .._redact import safe_url
from ._base import (
    DEFAULT_RETENTION,
    UNSAFE_TO_CLEAR,
    Busy,
    Claimed,
    ClaimResult,
    Conflict,
    Failed,
    LedgerRecord,
    LedgerUnavailableError,
    SettleResult,
    Unstable,
)
from ._fitness import Caution, Finding, StoreFacts, judge
from ._group import GroupCommit, isolate
from ._records import conflicts, done, encode_response, ledger_record, malformed, settle_result

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra test
    raise MissingExtraError("postgres", "asyncpg") from exc

__all__ = ["DEFAULT_TABLE", "PostgresLedger", "schema_sql", "validate_table"]

log = logging.getLogger("idemsend.ledger")

T = TypeVar("T")

#: The table a ledger uses unless told otherwise (its job map is ``<table>_jobs``).
DEFAULT_TABLE = "idemsend_ledger"

# What asyncpg raises, before sending anything, on a pooled connection whose server went
# away while it sat idle (the server's goodbye left it mid-state, or it noticed the close).
_NOT_SENT = ("cannot switch to state", "connection is closed")

# Lower case only, so the quoted name (always used here) and the unquoted one a person
# types in psql are the same table; at most 46 characters, so "<table>_jobs_expires_idx"
# fits PostgreSQL's 63-byte names without being truncated into a collision.
_TABLE = re.compile(r"(?:([a-z_][a-z0-9_]{0,62})\.)?([a-z_][a-z0-9_]{0,45})")

#: The clock. Every statement reads the database's ``now()``: the start of its own
#: transaction, which for the ledger's autocommit statements is the statement's start.
#: One value for the whole statement (a lease written and a lease compared in one claim
#: use the same instant; all the operations of a batch see one instant), and the same
#: clock for every worker. ``clock_timestamp()`` would move during a statement and need
#: pinning in a CTE; the only thing ``now()`` costs is that a statement which waited for
#: a row lock judges leases as of when it started, a few milliseconds early: a lease
#: looks live a little longer (Busy, the safe answer) and an age reads a little shorter
#: (far inside the stale margin). The ledger never runs its statements in an explicit
#: transaction, where ``now()`` would stand still.
_CLOCK = "now()"


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


def _qualified(schema: str | None, name: str) -> str:
    return f'"{schema}"."{name}"' if schema else f'"{name}"'


def schema_sql(table: str = DEFAULT_TABLE) -> str:
    """The SQL that creates the ledger's tables and indexes (idempotent: ``IF NOT EXISTS``).
    ``PostgresLedger.migrate()`` runs it; docs/ledgers.md shows it for the default name."""
    schema, name = validate_table(table)
    rec, jobs = _qualified(schema, name), _qualified(schema, f"{name}_jobs")
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


# -- the statements --------------------------------------------------------------------
#
# Each takes arrays (one element per operation; a batch has each key at most once) and
# answers one row per operation, in order (``a.i``, the array position). Rows are
# locked in key order (ORDER BY ... FOR UPDATE, or INSERT ... SELECT ... ORDER BY), so
# two statements never wait on each other in a cycle. The order is byte order in every
# statement (``_C``: COLLATE "C"), not the database's collation: a key from unnest(text[])
# sorts by the database's default, and under en_US or ICU en-US (most managed
# PostgreSQL) "k:a" comes before "k:B", where the table's own COLLATE "C" key sorts it
# after; two statements that sorted the two ways would deadlock. {t} is the records
# table, {j} the job map; "expired" is expires_at <= now(): such a row is treated as
# absent everywhere.

_SEC = "* interval '1 second'"
#: Byte order, for every ORDER BY that decides in which order rows are locked.
_C = 'COLLATE "C"'

# claim: note the job id's key (unless a live note says another key), then upsert the
# record: a new or expired one is made fresh; an in-flight one not in conflict whose
# lease is free, released or this token's is resumed under this token; anything else is
# "updated" to itself, so that RETURNING shows the row as it is now (a SELECT in the same
# statement would read the statement's snapshot, and miss a row another worker has just
# committed). The job-map upserts all happen before the first record is touched (the
# ORDER BY in ``js`` reads them all), so the two tables' locks are taken in two phases.
_CLAIM = f"""
WITH a AS (
  SELECT u.key, u.job_id, substring($3::bytea FROM u.start::int + 1 FOR u.size::int) AS body, u.fp, u.token,
         u.lease::float8 AS lease, u.i
  FROM unnest($1::text[], $2::text[], $4::text[], $5::text[], $6::text[], $8::text[], $9::text[])
    WITH ORDINALITY AS u(key, job_id, fp, token, lease, start, size, i)
),
j AS (
  INSERT INTO {{j}} AS n (job_id, key, expires_at)
  SELECT a.job_id, a.key, {_CLOCK} + $7::float8 {_SEC} FROM a ORDER BY a.job_id {_C}
  ON CONFLICT (job_id) DO UPDATE SET
    key = CASE WHEN n.expires_at <= {_CLOCK} THEN excluded.key ELSE n.key END,
    expires_at = CASE WHEN n.expires_at <= {_CLOCK} THEN excluded.expires_at ELSE n.expires_at END
  RETURNING n.job_id, n.key
),
js AS MATERIALIZED (SELECT job_id, key FROM j ORDER BY job_id),
rec AS (
  INSERT INTO {{t}} AS r (key, state, job_id, fingerprint, body, first_sent_at, token, lease_until,
                         response, code, message, expires_at)
  SELECT a.key, 'in_flight', a.job_id, a.fp, a.body, {_CLOCK}, a.token, {_CLOCK} + a.lease {_SEC},
         NULL, NULL, NULL, {_CLOCK} + $7::float8 {_SEC}
  FROM a JOIN js ON js.job_id = a.job_id AND js.key = a.key
  ORDER BY a.key {_C}
  ON CONFLICT (key) DO UPDATE SET
    state = CASE WHEN r.expires_at <= {_CLOCK} THEN excluded.state ELSE r.state END,
    job_id = CASE WHEN r.expires_at <= {_CLOCK} THEN excluded.job_id ELSE r.job_id END,
    fingerprint = CASE WHEN r.expires_at <= {_CLOCK} THEN excluded.fingerprint ELSE r.fingerprint END,
    body = CASE WHEN r.expires_at <= {_CLOCK} THEN excluded.body ELSE r.body END,
    first_sent_at = CASE WHEN r.expires_at <= {_CLOCK} THEN excluded.first_sent_at ELSE r.first_sent_at END,
    response = CASE WHEN r.expires_at <= {_CLOCK} THEN NULL ELSE r.response END,
    code = CASE WHEN r.expires_at <= {_CLOCK} THEN NULL ELSE r.code END,
    message = CASE WHEN r.expires_at <= {_CLOCK} THEN NULL ELSE r.message END,
    expires_at = CASE WHEN r.expires_at <= {_CLOCK} THEN excluded.expires_at ELSE r.expires_at END,
    token = CASE WHEN r.expires_at <= {_CLOCK} OR (
        r.state = 'in_flight'
        AND (r.fingerprint = '' OR r.job_id = excluded.job_id OR r.fingerprint = excluded.fingerprint)
        AND (r.token = '' OR r.token = excluded.token OR r.lease_until <= {_CLOCK})
      ) THEN excluded.token ELSE r.token END,
    lease_until = CASE WHEN r.expires_at <= {_CLOCK} OR (
        r.state = 'in_flight'
        AND (r.fingerprint = '' OR r.job_id = excluded.job_id OR r.fingerprint = excluded.fingerprint)
        AND (r.token = '' OR r.token = excluded.token OR r.lease_until <= {_CLOCK})
      ) THEN excluded.lease_until ELSE r.lease_until END
  RETURNING r.key, r.state, r.job_id, r.fingerprint, r.token, r.body, r.response, r.code, r.message,
            r.first_sent_at = {_CLOCK} AS fresh,
            extract(epoch FROM r.first_sent_at)::float8 AS first,
            greatest(0, extract(epoch FROM {_CLOCK} - r.first_sent_at))::float8 AS age,
            extract(epoch FROM r.lease_until - {_CLOCK})::float8 AS retry_after
)
SELECT js.key AS recorded, rec.state, rec.job_id, rec.fingerprint, rec.token,
       CASE WHEN rec.token = a.token AND rec.state = 'in_flight' AND NOT rec.fresh THEN rec.body END AS body,
       rec.response, rec.code, rec.message, rec.fresh, rec.first, rec.age, rec.retry_after
FROM a JOIN js ON js.job_id = a.job_id LEFT JOIN rec ON rec.key = a.key
ORDER BY a.i
"""

# complete: in flight under this token -> done; no record (or an expired one) -> a done
# record written anew (job id and fingerprint unknown, first_sent_at now); otherwise
# nothing (not in RETURNING: "superseded"). The token stays on a done record: the claim
# that settled it.
_COMPLETE = f"""
WITH a AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS a(key, token, response, i)
),
u AS (
  INSERT INTO {{t}} AS r (key, state, job_id, fingerprint, body, first_sent_at, token, lease_until,
                         response, code, message, expires_at)
  SELECT a.key, 'done', '', '', NULL, {_CLOCK}, a.token, NULL, a.response, NULL, NULL, {_CLOCK} + $4::float8 {_SEC}
  FROM a ORDER BY a.key {_C}
  ON CONFLICT (key) DO UPDATE SET
    state = 'done',
    job_id = CASE WHEN r.expires_at <= {_CLOCK} THEN '' ELSE r.job_id END,
    fingerprint = CASE WHEN r.expires_at <= {_CLOCK} THEN '' ELSE r.fingerprint END,
    first_sent_at = CASE WHEN r.expires_at <= {_CLOCK} THEN {_CLOCK} ELSE r.first_sent_at END,
    body = NULL, lease_until = NULL, code = NULL, message = NULL,
    token = excluded.token, response = excluded.response, expires_at = excluded.expires_at
  WHERE r.expires_at <= {_CLOCK} OR (r.state = 'in_flight' AND r.token = excluded.token)
  RETURNING r.key, r.first_sent_at = {_CLOCK} AS recreated
)
SELECT CASE WHEN u.key IS NULL THEN 'superseded' WHEN u.recreated THEN 'recreated' ELSE 'ok' END
FROM a LEFT JOIN u ON u.key = a.key
ORDER BY a.i
"""

# fail / renew / release: lock the rows in flight under each token, in key order, then
# change them. Not changed: "superseded" if a live record exists, else "missing" (read
# from the statement's snapshot; nothing was written either way).
_OWNED = f"""
l AS MATERIALIZED (
  SELECT r.key FROM {{t}} r JOIN a ON r.key = a.key
  WHERE r.state = 'in_flight' AND r.token = a.token AND r.expires_at > {_CLOCK}
  ORDER BY r.key {_C} FOR UPDATE OF r
)"""

_ANSWER = f"""
SELECT CASE WHEN u.key IS NOT NULL THEN 'ok'
            WHEN EXISTS (SELECT 1 FROM {{t}} x WHERE x.key = a.key AND x.expires_at > {_CLOCK}) THEN 'superseded'
            ELSE 'missing' END
FROM a LEFT JOIN u ON u.key = a.key
ORDER BY a.i
"""

_FAIL = f"""
WITH a AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
    WITH ORDINALITY AS a(key, token, code, message, i)
),{_OWNED},
u AS (
  UPDATE {{t}} r SET state = 'fatal', code = a.code, message = a.message, body = NULL, lease_until = NULL,
                     expires_at = {_CLOCK} + $5::float8 {_SEC}
  FROM a, l WHERE r.key = l.key AND a.key = l.key
  RETURNING r.key
)""" + _ANSWER

_RENEW = f"""
WITH a AS (
  SELECT u.key, u.token, u.lease::float8 AS lease, u.i
  FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS u(key, token, lease, i)
),{_OWNED},
u AS (
  UPDATE {{t}} r SET lease_until = {_CLOCK} + a.lease {_SEC}
  FROM a, l WHERE r.key = l.key AND a.key = l.key
  RETURNING r.key
)""" + _ANSWER

# release: keep the record (frozen body, first-sent time, job id) and free the lease;
# with forget, delete it and its job id's note (if no claim holds the note right now).
_RELEASE = f"""
WITH a AS (
  SELECT u.key, u.token, u.forget::bool AS forget, u.i
  FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS u(key, token, forget, i)
),{_OWNED},
kept AS (
  UPDATE {{t}} r SET token = '', lease_until = {_CLOCK}
  FROM a, l WHERE r.key = l.key AND a.key = l.key AND NOT a.forget
  RETURNING r.key
),
gone AS (
  DELETE FROM {{t}} r USING a, l WHERE r.key = l.key AND a.key = l.key AND a.forget
  RETURNING r.key, r.job_id
),
notes AS (
  DELETE FROM {{j}} n WHERE n.job_id IN (
    SELECT n2.job_id FROM {{j}} n2 JOIN gone ON n2.job_id = gone.job_id AND n2.key = gone.key
    ORDER BY n2.job_id {_C} FOR UPDATE OF n2 SKIP LOCKED
  )
),
u AS (SELECT key FROM kept UNION ALL SELECT key FROM gone)""" + _ANSWER

# clear: a fatal record only (and its job id's note); one whose code is in $3
# (UNSAFE_TO_CLEAR) only when forced.
_CLEAR = f"""
WITH a AS (
  SELECT u.key, u.force::bool AS force, u.i FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(key, force, i)
),
l AS MATERIALIZED (
  SELECT r.key FROM {{t}} r JOIN a ON r.key = a.key
  WHERE r.state = 'fatal' AND r.expires_at > {_CLOCK} AND (a.force OR r.code IS NULL OR r.code <> ALL($3::text[]))
  ORDER BY r.key {_C} FOR UPDATE OF r
),
gone AS (
  DELETE FROM {{t}} r USING l WHERE r.key = l.key RETURNING r.key, r.job_id
),
notes AS (
  DELETE FROM {{j}} n WHERE n.job_id IN (
    SELECT n2.job_id FROM {{j}} n2 JOIN gone ON n2.job_id = gone.job_id AND n2.key = gone.key
    ORDER BY n2.job_id {_C} FOR UPDATE OF n2 SKIP LOCKED
  )
)
SELECT gone.key IS NOT NULL FROM a LEFT JOIN gone ON gone.key = a.key ORDER BY a.i
"""

_GET = f"""
SELECT state, job_id, fingerprint, extract(epoch FROM first_sent_at)::float8, response, code, message,
       extract(epoch FROM lease_until)::float8
FROM {{t}} WHERE key = $1 AND expires_at > {_CLOCK}
"""

# One batch of the sweep: at most $1 expired rows, skipping any a statement holds now.
_SWEEP = f"""
DELETE FROM {{table}} WHERE ctid = ANY(ARRAY(
  SELECT ctid FROM {{table}} WHERE expires_at <= {_CLOCK} ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
)) AND expires_at <= {_CLOCK}
"""

# start(): what the server and the tables look like to this role.
_FACTS = """
SELECT current_setting('server_version_num')::int, current_user, current_database(),
       current_setting('fsync'), current_setting('synchronous_commit'),
       current_setting('default_transaction_isolation'),
       to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL,
       CASE WHEN to_regclass($1) IS NOT NULL
            THEN has_table_privilege(to_regclass($1), 'SELECT, INSERT, UPDATE, DELETE') END,
       CASE WHEN to_regclass($2) IS NOT NULL
            THEN has_table_privilege(to_regclass($2), 'SELECT, INSERT, UPDATE, DELETE') END,
       (SELECT relpersistence::text FROM pg_class WHERE oid = to_regclass($1))
"""

_COLUMNS = (
    "SELECT key, state, job_id, fingerprint, body, first_sent_at, token, lease_until, response, code, message,"
    " expires_at FROM {t} WHERE false",
    "SELECT job_id, key, expires_at FROM {j} WHERE false",
)


# -- operations and the batch executor ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Op:
    """One ledger call: its kind, its key, and the kind's arguments."""

    kind: str
    key: str
    args: tuple[Any, ...]


# What PostgreSQL text cannot hold: NUL, and a surrogate code point (a Python str may hold
# one alone; UTF-8 cannot encode it).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _clean(text: str) -> str:
    """``text`` as PostgreSQL ``text`` can hold it: NUL and unpaired surrogates replaced
    (a job id or a message with one would otherwise fail the whole batch it is in)."""
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


def _rounds(ops: Sequence[_Op]) -> list[list[int]]:
    """Split a batch so each statement has a key (and a claim's job id) at most once,
    keeping the order of the calls on each: a call goes in the round after the last one
    that holds any of its keys."""
    last: dict[tuple[str, str], int] = {}
    rounds: list[list[int]] = []
    for index, op in enumerate(ops):
        slots = [("k", op.key)] if op.kind != "claim" else [("k", op.key), ("j", op.args[0])]
        r = max((last.get(slot, -1) + 1 for slot in slots), default=0)
        for slot in slots:
            last[slot] = r
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(index)
    return rounds


_UNSAFE = sorted(UNSAFE_TO_CLEAR)


def _claim_answer(op: _Op, row: Any) -> ClaimResult:
    job_id, payload, fp, token, _lease = op.args
    recorded = row[0]
    if recorded != op.key:
        return Unstable(recorded)
    state = row[1]
    if state is None:
        raise LedgerUnavailableError(f"the claim of key {op.key!r} returned no record")
    recorded_fp = row[3]
    if conflicts(row[2], recorded_fp, job_id, fp):
        return Conflict(recorded_fp)
    if state == "done":
        return done(row[6], recorded_fp)
    if state == "fatal":
        return Failed(row[7] or "", row[8] or "")
    if state != "in_flight":
        raise LedgerUnavailableError(f"the record of key {op.key!r} has no such state {state!r}")
    if row[4] == token:
        if row[9]:
            return Claimed(True, payload, fp, row[10], 0.0)
        return Claimed(False, bytes(row[5]), recorded_fp, row[10], row[11])
    return Busy(max(0.0, row[12]))


def _data_error(exc: Exception) -> bool:
    """Whether a statement failed for some call's data, not for the store: a data exception
    (SQLSTATE class 22: a value out of range, a character the encoding cannot hold; also
    what asyncpg raises for an argument it cannot encode), an integrity violation (23), or
    a program limit (54: a key too long for the btree). The same calls would fail the same
    way again, and the calls without the culprit would not. Everything else (the server
    down, a timeout, the table missing, a deadlock, resources) is the store's."""
    return isinstance(exc, (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
                            asyncpg.ProgramLimitExceededError))


def _unavailable(exc: BaseException) -> LedgerUnavailableError:
    if isinstance(exc, LedgerUnavailableError):
        return exc
    return LedgerUnavailableError(f"{type(exc).__name__}: {exc}")


def _store_facts(row: Sequence[Any], table: str) -> StoreFacts:
    """The facts ``judge`` rules on, from the ``_FACTS`` row ``start()`` read (pure)."""
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
        schema, name = validate_table(table)
        if not retention > 0:
            raise ConfigError(f"retention must be > 0, got {retention!r}")
        if not timeout > 0:
            raise ConfigError(f"timeout must be > 0, got {timeout!r}")
        if isinstance(sweep_batch, bool) or not isinstance(sweep_batch, int) or sweep_batch < 1:
            raise ConfigError(f"sweep_batch must be an int >= 1, got {sweep_batch!r}")
        if not sweep_interval >= 0:
            raise ConfigError(f"sweep_interval must be >= 0 (0: no background sweep), got {sweep_interval!r}")
        self.pool: Any = pool
        self.table = table
        self.jobs_table = f"{schema}.{name}_jobs" if schema else f"{name}_jobs"
        self.retention = float(retention)
        self.create_table = create_table
        self.timeout = float(timeout)
        self.sweep_interval = float(sweep_interval)
        self.sweep_batch = sweep_batch
        self.group_commit = group_commit
        self._t = _qualified(schema, name)
        self._j = _qualified(schema, f"{name}_jobs")
        self._sql = {
            kind: text.format(t=self._t, j=self._j)
            for kind, text in (
                ("claim", _CLAIM), ("complete", _COMPLETE), ("fail", _FAIL), ("renew", _RENEW),
                ("release", _RELEASE), ("clear", _CLEAR), ("get", _GET),
            )
        }
        self._sweep_sql = [_SWEEP.format(table=self._t), _SWEEP.format(table=self._j)]
        self._group: GroupCommit[_Op, Any] = (
            GroupCommit(self._execute, on_batch=on_batch, error=_unavailable) if group_commit
            else GroupCommit(self._execute, max_batch=1, max_pipelines=64, on_batch=on_batch, error=_unavailable)
        )
        self._dsn: str | None = None
        self._pool_options: dict[str, Any] = {}
        self._pool_lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()
        self._checked = False
        self._closed = False
        self._sweeper: asyncio.Task[None] | None = None
        #: Statements sent so far (one round trip each): what group commit saves, measured.
        self.statements = 0

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
        base, own = _split_dsn(dsn)
        if table is None:
            table = own.get("table", DEFAULT_TABLE)
        if create_table is None:
            create_table = _flag(own.get("create_table", "false"), "create_table", dsn)
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
        ledger._dsn = base
        options: dict[str, Any] = {
            "min_size": 0, "max_size": pool_size, "statement_cache_size": statement_cache_size,
            "timeout": timeout, "command_timeout": timeout,
            "server_settings": {"application_name": "idemsend-ledger"},
        }
        if "reset" in inspect.signature(asyncpg.create_pool).parameters:
            # The ledger leaves no session state (no SET, no temp table, no LISTEN, no
            # advisory lock), so the default reset query, a round trip at every release,
            # has nothing to do. (asyncpg < 0.30 has no `reset`: it runs the query.)
            options["reset"] = _no_reset
        if "application_name" in urllib.parse.parse_qs(urllib.parse.urlsplit(base).query):
            del options["server_settings"]
        ledger._pool_options = options
        return ledger

    def __repr__(self) -> str:
        where = f" dsn={safe_url(self._dsn)!r}" if self._dsn is not None else ""
        return f"<PostgresLedger table={self.table!r}{where} retention={self.retention:g}s>"

    # -- connections -------------------------------------------------------------------

    def _fail(self, exc: BaseException, doing: str = "") -> LedgerUnavailableError:
        """A store failure as ``LedgerUnavailableError``, with nothing of the DSN's password."""
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError)):
            text = (
                f"{type(exc).__name__}: {str(exc).splitlines()[0]} (behind PgBouncer in transaction or statement"
                " mode? Add ?statement_cache_size=0 to the ledger's DSN)"
            )
        elif isinstance(exc, asyncpg.UndefinedTableError):
            text += (
                f" (the ledger table {self.table} is missing: create it with `await ledger.migrate()` or"
                " `idemsend migrate --postgres DSN`)"
            )
        if self._dsn is not None:
            from ._url import _scrub

            text = _scrub(self._dsn, text)
        return LedgerUnavailableError(f"{doing}{text}")

    async def _get_pool(self) -> Any:
        if self.pool is not None:
            return self.pool
        if self._closed:
            raise LedgerUnavailableError("the ledger is closed")
        async with self._pool_lock:
            if self.pool is None:
                if self._closed:
                    raise LedgerUnavailableError("the ledger is closed")
                try:
                    self.pool = await asyncpg.create_pool(self._dsn, **self._pool_options)
                except Exception as exc:  # a store failure, or a DSN asyncpg cannot parse
                    raise self._fail(exc, "could not reach the ledger's PostgreSQL: ") from exc
        return self.pool

    async def _on_connection(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """``await work(connection)`` on a connection of the pool. A connection the server
        dropped while it sat idle in the pool (a restart, a failover) fails before anything
        is sent: it is closed and ``work`` tried on another one. Other store failures
        raise as they are (a statement cut off mid-way may or may not have taken effect,
        so it is never sent twice)."""
        pool = await self._get_pool()
        tries = int(pool.get_max_size()) + 1
        for attempt in range(tries):
            async with pool.acquire(timeout=self.timeout) as con:
                try:
                    return await work(con)
                except (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError) as exc:
                    if attempt == tries - 1 or not str(exc).startswith(_NOT_SENT):
                        raise
                    con.terminate()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        """One statement (one round trip); store failures raise as they are."""

        async def fetch(con: Any) -> list[Any]:
            self.statements += 1
            rows: list[Any] = await con.fetch(sql, *args, timeout=self.timeout)
            return rows

        return await self._on_connection(fetch)

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
                await self._check()
            except (ConfigError, LedgerUnavailableError):
                raise
            except Exception as exc:
                raise self._fail(exc, "could not check the ledger's PostgreSQL: ") from exc
            self._checked = True
            self._start_sweeper()

    async def _check(self, *, migrated: bool = False) -> None:
        [facts] = await self._fetch(_FACTS, self._t, self._j)
        _, role, database, _, _, _, has_rec, has_jobs, rec_ok, jobs_ok, _ = facts
        verdict = judge(_store_facts(facts, self.table))
        verdict.refuse()  # before the tables are looked at: an old server is named as such
        if not (has_rec and has_jobs):
            if not self.create_table or migrated:
                missing = " and ".join(
                    name for name, there in ((self.table, has_rec), (self.jobs_table, has_jobs)) if not there
                )
                raise ConfigError(
                    f"the ledger table {missing} does not exist in database {database} (as seen by role {role}"
                    " with its search_path). Create it once, as a role that may: `await ledger.migrate()`,"
                    " `idemsend migrate --postgres DSN`, or this SQL (docs/ledgers.md); or make the"
                    f" ledger with create_table=True to create it on first use:\n{schema_sql(self.table)}"
                )
            await self.migrate()
            return await self._check(migrated=True)
        if not (rec_ok and jobs_ok):
            raise ConfigError(
                f"role {role} may not use the ledger tables {self.table} and {self.jobs_table} in database"
                f" {database}: GRANT SELECT, INSERT, UPDATE, DELETE ON {self._t}, {self._j} TO {role};"
            )
        for sql in _COLUMNS:
            try:
                await self._fetch(sql.format(t=self._t, j=self._j))
            except asyncpg.UndefinedColumnError as exc:
                raise ConfigError(
                    f"{self.table} in database {database} is not an idemsend ledger table ({exc}); use another"
                    f" table name, or create it with:\n{schema_sql(self.table)}"
                ) from None
        verdict.enforce()
        return None

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
            await self._on_connection(create)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise ConfigError(
                f"could not create the ledger table {self.table}: {exc}. Run this as a role that may"
                f" (and GRANT SELECT, INSERT, UPDATE, DELETE on both tables to the workers' role):\n"
                f"{schema_sql(self.table)}"
            ) from None
        except LedgerUnavailableError:
            raise
        except Exception as exc:
            raise self._fail(exc, "could not create the ledger table: ") from exc

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
        total = 0
        try:
            for sql in self._sweep_sql:
                done = 0
                while max_batches is None or done < max_batches:

                    async def delete(con: Any, sql: str = sql) -> str:
                        self.statements += 1
                        return str(await con.execute(sql, size, timeout=self.timeout))

                    status = await self._on_connection(delete)
                    done += 1
                    deleted = int(status.rsplit(" ", 1)[-1])
                    total += deleted
                    if deleted < size:
                        break
                    await asyncio.sleep(0)  # let the ledger's own calls go first
        except LedgerUnavailableError:
            raise
        except Exception as exc:
            raise self._fail(exc, "could not sweep the ledger: ") from exc
        return total

    def _start_sweeper(self) -> None:
        if self.sweep_interval > 0 and self._sweeper is None and not self._closed:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="idemsend-ledger-sweep")

    async def _sweep_forever(self) -> None:
        failures = 0
        while True:
            # spread the sweeps of many workers over the interval
            await asyncio.sleep(self.sweep_interval * random.uniform(0.5, 1.5))
            try:
                deleted = await self.sweep()
            except LedgerUnavailableError as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("idemsend: the ledger's sweep of expired records failed (%d in a row): %s",
                                failures, exc, extra=fields(code="unavailable", op="sweep"))
            except Exception:  # pragma: no cover - a bug: say so, and keep the task alive
                log.exception("idemsend: the ledger's sweep of expired records failed")
            else:
                failures = 0
                if deleted:
                    log.debug("idemsend: swept %d expired ledger rows from %s", deleted, self.table)

    # -- the batch executor --------------------------------------------------------------

    async def _execute(self, ops: Sequence[_Op]) -> list[Any]:
        """Run one GroupCommit batch: round by round (a key at most once per round), each
        round one statement per kind of call, the kinds at once on their own connections."""
        results: list[Any] = [None] * len(ops)
        for indexes in _rounds(ops):
            kinds: dict[str, list[int]] = {}
            for i in indexes:
                kinds.setdefault(ops[i].kind, []).append(i)
            await asyncio.gather(*(self._run_kind(kind, [ops[i] for i in idx], idx, results)
                                   for kind, idx in kinds.items()))
        return results

    async def _run_kind(self, kind: str, ops: list[_Op], indexes: list[int], results: list[Any]) -> None:
        """One statement for ``ops`` (all of one kind); a statement refused for one call's
        data is split until that call stands alone (``isolate``): it alone gets the error."""

        async def statement(part: Sequence[_Op]) -> list[Any]:
            rows = await self._fetch(self._sql[kind], *self._params(kind, list(part)))
            if len(rows) != len(part):
                raise LedgerUnavailableError(f"{kind}: {len(rows)} answers for {len(part)} calls")
            return rows

        failures: dict[int, LedgerUnavailableError] = {}  # one error object per statement's failure
        for i, op, row in zip(indexes, ops, await isolate(statement, ops, _data_error), strict=True):
            if isinstance(row, Exception):
                if id(row) not in failures:
                    failures[id(row)] = row if isinstance(row, LedgerUnavailableError) else self._fail(row)
                results[i] = failures[id(row)]
                continue
            try:
                results[i] = self._answer(kind, op, row)
            except (LedgerUnavailableError, ValueError, TypeError, IndexError) as exc:
                results[i] = exc if isinstance(exc, LedgerUnavailableError) else LedgerUnavailableError(
                    f"malformed {kind} answer for key {op.key!r}: {exc}"
                )

    def _params(self, kind: str, ops: list[_Op]) -> list[Any]:
        """The statement's arguments. Every array is ``text[]`` (cast in the SQL) and the
        bodies go as one ``bytea`` with offsets: asyncpg knows ``text[]`` and scalars
        without asking the server, so it never runs its type introspection (three more
        statements on every new connection, one of them a session-level ``set_config``
        that PgBouncer's transaction mode would leak to other clients)."""
        keys = [op.key for op in ops]
        if kind == "claim":
            sizes = [len(op.args[1]) for op in ops]
            starts = list(itertools.accumulate(sizes, initial=0))[:-1]
            return [
                keys, [op.args[0] for op in ops], b"".join(op.args[1] for op in ops), [op.args[2] for op in ops],
                [op.args[3] for op in ops], [repr(op.args[4]) for op in ops], self.retention,
                [str(n) for n in starts], [str(n) for n in sizes],
            ]
        if kind == "complete":
            return [keys, [op.args[0] for op in ops], [op.args[1] for op in ops], self.retention]
        if kind == "fail":
            return [keys, [op.args[0] for op in ops], [op.args[1] for op in ops], [op.args[2] for op in ops],
                    self.retention]
        if kind == "renew":
            return [keys, [op.args[0] for op in ops], [repr(op.args[1]) for op in ops]]
        if kind == "release":
            return [keys, [op.args[0] for op in ops], ["t" if op.args[1] else "f" for op in ops]]
        return [keys, ["t" if op.args[0] else "f" for op in ops], _UNSAFE]  # clear

    @staticmethod
    def _answer(kind: str, op: _Op, row: Any) -> Any:
        if kind == "claim":
            return _claim_answer(op, row)
        if kind == "clear":
            return bool(row[0])
        return settle_result(row[0])

    def _call(self, kind: str, key: str, *args: Any) -> asyncio.Future[Any]:
        return self._group.submit(_Op(kind, _clean(key), args))

    # -- the state machine ---------------------------------------------------------------

    async def claim(
        self, *, key: str, job_id: str, payload: bytes, fingerprint: str, token: str, lease: float
    ) -> ClaimResult:
        """See ``Ledger.claim``. One statement (shared with the claims queued meanwhile)."""
        validate_job_id(job_id)  # one rule for every ledger, before anything is batched
        result: ClaimResult = await self._call(
            "claim", key, _clean(job_id), bytes(payload), _clean(fingerprint), _clean(token), float(lease)
        )
        return result

    async def complete(self, *, key: str, token: str, response: Mapping[str, Any]) -> SettleResult:
        """See ``Ledger.complete``."""
        body = encode_response(response)  # ASCII: \\u0000 and all, as text can hold it
        result: SettleResult = await self._call("complete", key, _clean(token), body)
        return result

    async def fail(self, *, key: str, token: str, code: str, message: str) -> SettleResult:
        """See ``Ledger.fail``."""
        result: SettleResult = await self._call("fail", key, _clean(token), _clean(code), _clean(message))
        return result

    async def renew(self, *, key: str, token: str, lease: float) -> SettleResult:
        """See ``Ledger.renew``."""
        result: SettleResult = await self._call("renew", key, _clean(token), float(lease))
        return result

    async def release(self, *, key: str, token: str, forget: bool = False) -> SettleResult:
        """See ``Ledger.release``: ``forget`` deletes the record and its job id's note."""
        result: SettleResult = await self._call("release", key, _clean(token), bool(forget))
        return result

    async def clear(self, key: str, *, force: bool = False) -> bool:
        """See ``Ledger.clear``: one statement checks the state (and code) and deletes."""
        result: bool = await self._call("clear", key, bool(force))
        return result

    async def get(self, key: str) -> LedgerRecord | None:
        """See ``Ledger.get``: one SELECT (outside the batches); an expired row is ``None``."""
        try:
            rows = await self._fetch(self._sql["get"], _clean(key))
        except LedgerUnavailableError:
            raise
        except Exception as exc:
            raise self._fail(exc) from exc
        if not rows:
            return None
        state, job_id, fp, first, response, code, message, lease_until = rows[0]
        try:
            return ledger_record(
                key, state, job_id=job_id, fingerprint=fp, first_sent_at=first, response=response,
                code=code, message=message, lease_until=lease_until,
            )
        except (ValueError, TypeError) as exc:
            raise malformed(key, exc) from None

    async def aclose(self) -> None:
        """Wait for the calls already made, stop the sweep, then close the pool if
        ``from_url`` made it. A second call does nothing."""
        await self._group.drain()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
        if self._dsn is not None and not self._closed:
            self._closed = True
            pool, self.pool = self.pool, None
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), self.timeout)
                except BaseException:  # a dead server, a timeout, a cancellation: cut the connections
                    pool.terminate()
                    if not isinstance(exc := sys.exc_info()[1], Exception):
                        raise
                    log.debug("idemsend: the ledger's pool did not close cleanly: %s", self._fail(exc))
        self._closed = True


async def _no_reset(connection: Any) -> None:
    """The pool's reset: nothing to undo (see ``from_url``)."""
    return None


_OWN_PARAMS = ("table", "create_table", "statement_cache_size")


def _split_dsn(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without the ledger's own query parameters, and those parameters."""
    if not isinstance(dsn, str) or "://" not in dsn:
        raise ConfigError("the Postgres ledger needs a postgresql:// DSN")
    parts = urllib.parse.urlsplit(dsn)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError(f"not a postgresql:// DSN: {safe_url(dsn)}")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    parts.port  # noqa: B018 - a port that is not a number raises ValueError here, not at the first call
    own = {k: v for k, v in query if k in _OWN_PARAMS}
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k not in _OWN_PARAMS])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), own


def _flag(value: str, name: str, dsn: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} in the ledger DSN {safe_url(dsn)} must be true or false, got {value!r}")
