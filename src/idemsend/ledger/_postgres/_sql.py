"""The ledger's SQL: one statement per kind of call, each over arrays (a whole batch of
that kind in one round trip), and the statements ``start()`` and the sweep run.

Pure text; ``statements(tables)`` fills in the table names. How the arrays are made
from the calls, and what each row answers, is ``_rows.py``.
"""

from __future__ import annotations

from ._schema import Tables

__all__ = ["CLAIM", "CLEAR", "CLOCK", "COMPLETE", "FACTS", "FAIL", "GET", "RELEASE", "RENEW", "SWEEP", "statements"]

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
CLOCK = "now()"


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
CLAIM = f"""
WITH a AS (
  SELECT u.key, u.job_id, substring($3::bytea FROM u.start::int + 1 FOR u.size::int) AS body, u.fp, u.token,
         u.lease::float8 AS lease, u.i
  FROM unnest($1::text[], $2::text[], $4::text[], $5::text[], $6::text[], $8::text[], $9::text[])
    WITH ORDINALITY AS u(key, job_id, fp, token, lease, start, size, i)
),
j AS (
  INSERT INTO {{j}} AS n (job_id, key, expires_at)
  SELECT a.job_id, a.key, {CLOCK} + $7::float8 {_SEC} FROM a ORDER BY a.job_id {_C}
  ON CONFLICT (job_id) DO UPDATE SET
    key = CASE WHEN n.expires_at <= {CLOCK} THEN excluded.key ELSE n.key END,
    expires_at = CASE WHEN n.expires_at <= {CLOCK} THEN excluded.expires_at ELSE n.expires_at END
  RETURNING n.job_id, n.key
),
js AS MATERIALIZED (SELECT job_id, key FROM j ORDER BY job_id),
rec AS (
  INSERT INTO {{t}} AS r (key, state, job_id, fingerprint, body, first_sent_at, token, lease_until,
                         response, code, message, expires_at)
  SELECT a.key, 'in_flight', a.job_id, a.fp, a.body, {CLOCK}, a.token, {CLOCK} + a.lease {_SEC},
         NULL, NULL, NULL, {CLOCK} + $7::float8 {_SEC}
  FROM a JOIN js ON js.job_id = a.job_id AND js.key = a.key
  ORDER BY a.key {_C}
  ON CONFLICT (key) DO UPDATE SET
    state = CASE WHEN r.expires_at <= {CLOCK} THEN excluded.state ELSE r.state END,
    job_id = CASE WHEN r.expires_at <= {CLOCK} THEN excluded.job_id ELSE r.job_id END,
    fingerprint = CASE WHEN r.expires_at <= {CLOCK} THEN excluded.fingerprint ELSE r.fingerprint END,
    body = CASE WHEN r.expires_at <= {CLOCK} THEN excluded.body ELSE r.body END,
    first_sent_at = CASE WHEN r.expires_at <= {CLOCK} THEN excluded.first_sent_at ELSE r.first_sent_at END,
    response = CASE WHEN r.expires_at <= {CLOCK} THEN NULL ELSE r.response END,
    code = CASE WHEN r.expires_at <= {CLOCK} THEN NULL ELSE r.code END,
    message = CASE WHEN r.expires_at <= {CLOCK} THEN NULL ELSE r.message END,
    expires_at = CASE WHEN r.expires_at <= {CLOCK} THEN excluded.expires_at ELSE r.expires_at END,
    token = CASE WHEN r.expires_at <= {CLOCK} OR (
        r.state = 'in_flight'
        AND (r.fingerprint = '' OR r.job_id = excluded.job_id OR r.fingerprint = excluded.fingerprint)
        AND (r.token = '' OR r.token = excluded.token OR r.lease_until <= {CLOCK})
      ) THEN excluded.token ELSE r.token END,
    lease_until = CASE WHEN r.expires_at <= {CLOCK} OR (
        r.state = 'in_flight'
        AND (r.fingerprint = '' OR r.job_id = excluded.job_id OR r.fingerprint = excluded.fingerprint)
        AND (r.token = '' OR r.token = excluded.token OR r.lease_until <= {CLOCK})
      ) THEN excluded.lease_until ELSE r.lease_until END
  RETURNING r.key, r.state, r.job_id, r.fingerprint, r.token, r.body, r.response, r.code, r.message,
            r.first_sent_at = {CLOCK} AS fresh,
            extract(epoch FROM r.first_sent_at)::float8 AS first,
            greatest(0, extract(epoch FROM {CLOCK} - r.first_sent_at))::float8 AS age,
            extract(epoch FROM r.lease_until - {CLOCK})::float8 AS retry_after
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
COMPLETE = f"""
WITH a AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS a(key, token, response, i)
),
u AS (
  INSERT INTO {{t}} AS r (key, state, job_id, fingerprint, body, first_sent_at, token, lease_until,
                         response, code, message, expires_at)
  SELECT a.key, 'done', '', '', NULL, {CLOCK}, a.token, NULL, a.response, NULL, NULL, {CLOCK} + $4::float8 {_SEC}
  FROM a ORDER BY a.key {_C}
  ON CONFLICT (key) DO UPDATE SET
    state = 'done',
    job_id = CASE WHEN r.expires_at <= {CLOCK} THEN '' ELSE r.job_id END,
    fingerprint = CASE WHEN r.expires_at <= {CLOCK} THEN '' ELSE r.fingerprint END,
    first_sent_at = CASE WHEN r.expires_at <= {CLOCK} THEN {CLOCK} ELSE r.first_sent_at END,
    body = NULL, lease_until = NULL, code = NULL, message = NULL,
    token = excluded.token, response = excluded.response, expires_at = excluded.expires_at
  WHERE r.expires_at <= {CLOCK} OR (r.state = 'in_flight' AND r.token = excluded.token)
  RETURNING r.key, r.first_sent_at = {CLOCK} AS recreated
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
  WHERE r.state = 'in_flight' AND r.token = a.token AND r.expires_at > {CLOCK}
  ORDER BY r.key {_C} FOR UPDATE OF r
)"""

_ANSWER = f"""
SELECT CASE WHEN u.key IS NOT NULL THEN 'ok'
            WHEN EXISTS (SELECT 1 FROM {{t}} x WHERE x.key = a.key AND x.expires_at > {CLOCK}) THEN 'superseded'
            ELSE 'missing' END
FROM a LEFT JOIN u ON u.key = a.key
ORDER BY a.i
"""

FAIL = f"""
WITH a AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
    WITH ORDINALITY AS a(key, token, code, message, i)
),{_OWNED},
u AS (
  UPDATE {{t}} r SET state = 'fatal', code = a.code, message = a.message, body = NULL, lease_until = NULL,
                     expires_at = {CLOCK} + $5::float8 {_SEC}
  FROM a, l WHERE r.key = l.key AND a.key = l.key
  RETURNING r.key
)""" + _ANSWER

RENEW = f"""
WITH a AS (
  SELECT u.key, u.token, u.lease::float8 AS lease, u.i
  FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS u(key, token, lease, i)
),{_OWNED},
u AS (
  UPDATE {{t}} r SET lease_until = {CLOCK} + a.lease {_SEC}
  FROM a, l WHERE r.key = l.key AND a.key = l.key
  RETURNING r.key
)""" + _ANSWER

# release: keep the record (frozen body, first-sent time, job id) and free the lease;
# with forget, delete it and its job id's note (if no claim holds the note right now).
RELEASE = f"""
WITH a AS (
  SELECT u.key, u.token, u.forget::bool AS forget, u.i
  FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS u(key, token, forget, i)
),{_OWNED},
kept AS (
  UPDATE {{t}} r SET token = '', lease_until = {CLOCK}
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
CLEAR = f"""
WITH a AS (
  SELECT u.key, u.force::bool AS force, u.i FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(key, force, i)
),
l AS MATERIALIZED (
  SELECT r.key FROM {{t}} r JOIN a ON r.key = a.key
  WHERE r.state = 'fatal' AND r.expires_at > {CLOCK} AND (a.force OR r.code IS NULL OR r.code <> ALL($3::text[]))
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

GET = f"""
SELECT state, job_id, fingerprint, extract(epoch FROM first_sent_at)::float8, response, code, message,
       extract(epoch FROM lease_until)::float8
FROM {{t}} WHERE key = $1 AND expires_at > {CLOCK}
"""

# One batch of the sweep: at most $1 expired rows, skipping any a statement holds now.
SWEEP = f"""
DELETE FROM {{table}} WHERE ctid = ANY(ARRAY(
  SELECT ctid FROM {{table}} WHERE expires_at <= {CLOCK} ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
)) AND expires_at <= {CLOCK}
"""

# start(): what the server and the tables look like to this role.
FACTS = """
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


def statements(tables: Tables) -> dict[str, str]:
    """Every call's statement for ``tables``, by kind (``claim``, ``complete``, ``fail``,
    ``renew``, ``release``, ``clear``, ``get``)."""
    return {
        kind: text.format(t=tables.t, j=tables.j)
        for kind, text in (
            ("claim", CLAIM), ("complete", COMPLETE), ("fail", FAIL), ("renew", RENEW),
            ("release", RELEASE), ("clear", CLEAR), ("get", GET),
        )
    }
