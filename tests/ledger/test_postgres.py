"""PostgresLedger on its own: the migration, start() checks, the sweep, table names, the
PgBouncer-safe mode (and a real PgBouncer in transaction mode where one is installed),
group commit's round trips, store failures (refused, timed out, a restart mid-claim),
and the DSN's password kept out of every message.

The state machine it shares with every ledger is tests/ledger/test_contract.py; the
worker processes and store restarts are tests/ledger/test_processes.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from idemsend import ConfigError, Engine, InvalidJobIdError, Job, RetryPolicy
from idemsend._body import fingerprint
from idemsend.ledger import Busy, Claimed, Done, LedgerUnavailableError, ledger_from_url
from idemsend.testing import MockProvider, PostgresServer
from idemsend.testing._redis_server import free_port

from .conftest import own_postgres, pg_execute, with_params

asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is not installed: pip install 'idemsend[postgres]'")

from idemsend.ledger._postgres import (  # noqa: E402 - needs asyncpg
    PostgresLedger,
    schema_sql,
    validate_table,
)

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
P1 = b'{"to":["a"]}'
F1 = fingerprint(P1)
BODY = {"to": ["ada@example.com"], "name": "Ada"}
SECRET = "hunter2-secret"
LEDGER_LOG = "idemsend.ledger"


@contextlib.asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[Any]:
    con = await asyncpg.connect(dsn, timeout=10)
    try:
        yield con
    finally:
        await con.close()


@pytest.fixture
async def made(postgres_store_url: str) -> AsyncIterator[list[PostgresLedger]]:
    """Ledgers a test makes; closed, and their tables dropped, at teardown."""
    ledgers: list[PostgresLedger] = []
    yield ledgers
    for ledger in ledgers:
        await ledger.aclose()
    tables = {t for ledger in ledgers for t in (ledger._t, ledger._j)}
    if tables:
        await pg_execute(postgres_store_url, f"DROP TABLE IF EXISTS {', '.join(sorted(tables))}")


@pytest.fixture
def make(postgres_store_url: str, prefix: str, made: list[PostgresLedger]) -> Any:
    """``make(**options)``: a PostgresLedger on the session's PostgreSQL, this test's table."""

    def new(**options: Any) -> PostgresLedger:
        options.setdefault("table", f"{prefix}_ledger")
        ledger = PostgresLedger.from_url(postgres_store_url, **options)
        made.append(ledger)
        return ledger

    return new


async def count(dsn: str, table: str) -> int:
    async with connect(dsn) as con:
        return int(await con.fetchval(f'SELECT count(*) FROM "{table}"'))


# -- the migration and start() -------------------------------------------------------------


async def test_migrate_is_idempotent_and_safe_to_run_at_once(make: Any, postgres_store_url: str, prefix: str) -> None:
    ledgers = [make() for _ in range(3)]
    await asyncio.gather(*(ledger.migrate() for ledger in ledgers))  # three workers deploying at once
    await ledgers[0].migrate()  # and again
    async with connect(postgres_store_url) as con:
        indexes = {r["indexname"] for r in await con.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename IN ($1, $2)", f"{prefix}_ledger", f"{prefix}_ledger_jobs"
        )}
    assert indexes == {
        f"{prefix}_ledger_pkey", f"{prefix}_ledger_expires_idx",
        f"{prefix}_ledger_jobs_pkey", f"{prefix}_ledger_jobs_expires_idx",
    }
    await ledgers[0].start()
    claim = await ledgers[1].claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
    assert isinstance(claim, Claimed) and claim.fresh


def test_idemsend_migrate_with_qstash_guard_makes_the_guard_table_beside_the_ledgers(
    postgres_store_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``idemsend migrate --qstash-guard``: the QStash webhook's default replay guard (in
    the ledger's PostgreSQL, table ``<ledger table>_jti``) then starts without create_table."""
    from idemsend.adapters.qstash import PostgresReplayGuard
    from idemsend.cli import main

    assert main(["migrate", "--postgres", postgres_store_url, "--prefix", prefix, "--qstash-guard"]) == 0
    assert f"{prefix}_ledger_jti" in capsys.readouterr().out

    async def check() -> set[str]:
        ledger = PostgresLedger.from_url(postgres_store_url, table=f"{prefix}_ledger")
        try:
            await PostgresReplayGuard.for_ledger(ledger).start()  # refuses a missing table
            async with connect(postgres_store_url) as con:
                rows = await con.fetch("SELECT tablename FROM pg_tables WHERE tablename LIKE $1", f"{prefix}%")
            return {r["tablename"] for r in rows}
        finally:
            await ledger.aclose()
            await pg_execute(
                postgres_store_url,
                f'DROP TABLE IF EXISTS "{prefix}_ledger_jti", "{prefix}_ledger_jobs", "{prefix}_ledger"',
            )

    assert asyncio.run(check()) == {f"{prefix}_ledger", f"{prefix}_ledger_jobs", f"{prefix}_ledger_jti"}


def test_the_docs_show_the_migration_sql() -> None:
    """docs/ledgers.md shows the SQL migrate() runs, for the default table, verbatim."""
    assert schema_sql() in (ROOT / "docs" / "ledgers.md").read_text()


async def test_start_without_the_table_explains_how_to_make_it(make: Any, prefix: str) -> None:
    ledger = make()
    with pytest.raises(ConfigError) as info:
        await ledger.start()
    text = str(info.value)
    assert f"{prefix}_ledger and {prefix}_ledger_jobs does not exist" in text
    assert "migrate()" in text and "idemsend migrate --postgres DSN" in text and "create_table=True" in text
    assert f'CREATE TABLE IF NOT EXISTS "{prefix}_ledger"' in text
    # refused is not remembered: once the table is there, start() passes
    await ledger.migrate()
    await ledger.start()


async def test_create_table_makes_it_on_first_start(make: Any, postgres_store_url: str, prefix: str) -> None:
    ledger = make(create_table=True)
    await ledger.start()
    assert await count(postgres_store_url, f"{prefix}_ledger") == 0
    await ledger.start()  # checked once


async def test_start_refuses_a_role_that_may_not_use_the_table(postgres_dsn: str, prefix: str) -> None:
    role, table = f"r_{prefix}", f"{prefix}_ledger"
    owner = PostgresLedger.from_url(postgres_dsn, table=table, create_table=True)
    await owner.start()
    await pg_execute(postgres_dsn, f'CREATE ROLE "{role}" LOGIN')
    parts = urllib.parse.urlsplit(postgres_dsn)
    as_role = parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}").geturl()
    ledger = PostgresLedger.from_url(as_role, table=table)
    try:
        try:
            async with connect(as_role):
                pass
        except (OSError, asyncpg.PostgresError) as exc:
            pytest.skip(f"cannot log in as a new role on this server ({type(exc).__name__})")
        with pytest.raises(ConfigError) as info:
            await ledger.start()
        assert f"role {role} may not use the ledger tables" in str(info.value)
        assert f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{table}", "{table}_jobs" TO {role}' in str(info.value)
        await pg_execute(postgres_dsn, f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{table}", "{table}_jobs" TO "{role}"')
        await ledger.start()
        claim = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        assert isinstance(claim, Claimed)
    finally:
        await ledger.aclose()
        await owner.aclose()
        await pg_execute(postgres_dsn, f'DROP TABLE IF EXISTS "{table}", "{table}_jobs"', f'DROP ROLE "{role}"')


async def test_start_refuses_a_table_that_is_not_a_ledger(make: Any, postgres_store_url: str, prefix: str) -> None:
    await pg_execute(
        postgres_store_url, f'CREATE TABLE "{prefix}_ledger" (key text PRIMARY KEY, value text)',
        f'CREATE TABLE "{prefix}_ledger_jobs" (job_id text PRIMARY KEY, key text, expires_at timestamptz)',
    )
    with pytest.raises(ConfigError, match="is not an idemsend ledger table"):
        await make().start()


@pytest.fixture(scope="module")
def careless_server() -> Iterator[PostgresServer]:
    """A PostgreSQL that may lose commits in a crash (fsync and synchronous_commit off)."""
    server = own_postgres(fsync="off", synchronous_commit="off")
    try:
        yield server
    finally:
        server.cleanup()


async def test_start_warns_about_settings_that_lose_records(
    careless_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = PostgresLedger.from_url(careless_server.dsn, create_table=True)
    with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
        await ledger.start()
        await ledger.start()  # checked once
    await ledger.aclose()
    [warning] = [r.getMessage() for r in caplog.records if r.name == LEDGER_LOG]
    assert "fsync is off" in warning and "synchronous_commit is off" in warning and "double send" in warning


async def test_start_warns_about_an_unlogged_table(
    make: Any, postgres_store_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    unlogged = schema_sql(f"{prefix}_ledger").replace("CREATE TABLE", "CREATE UNLOGGED TABLE")
    await pg_execute(postgres_store_url, unlogged)
    with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
        await make().start()
    [warning] = [r.getMessage() for r in caplog.records if r.name == LEDGER_LOG]
    assert f"{prefix}_ledger is UNLOGGED" in warning


async def test_start_is_quiet_on_a_durable_server(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
        await make(create_table=True).start()
    assert [r.getMessage() for r in caplog.records if r.name == LEDGER_LOG] == []


# -- table names --------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["idemsend_ledger", "app.sends", "_x", "a" * 46, f"{'s' * 63}.t"])
def test_table_names_that_are_accepted(table: str) -> None:
    schema, _, name = table.rpartition(".")
    assert validate_table(table) == (schema or None, name)
    assert PostgresLedger(None, table=table).table == table


@pytest.mark.parametrize(
    "table",
    ["", "Sends", "1x", "a-b", 'x"y', "a.b.c", " x", "x;drop table users", 'x"; DROP TABLE users; --', "a" * 47,
     "app.", ".t", "ledger\u00e9", "x\x00"],
)
def test_table_names_that_could_misbehave_are_refused(table: str) -> None:
    with pytest.raises(ConfigError, match="invalid ledger table name"):
        validate_table(table)
    with pytest.raises(ConfigError):
        PostgresLedger(None, table=table)
    with pytest.raises(ConfigError):
        schema_sql(table)


def test_a_table_name_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(ConfigError, match="must be a str"):
        PostgresLedger(None, table=42)  # type: ignore[arg-type]


async def test_a_schema_qualified_table_works(postgres_dsn: str, postgres_schema: str, prefix: str) -> None:
    table = f"{postgres_schema}.{prefix}_ledger"
    ledger = PostgresLedger.from_url(postgres_dsn, table=table, create_table=True)  # no search_path
    try:
        await ledger.start()
        claim = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        assert isinstance(claim, Claimed) and claim.fresh
        async with connect(postgres_dsn) as con:
            assert await con.fetchval(f'SELECT count(*) FROM "{postgres_schema}"."{prefix}_ledger"') == 1
    finally:
        await ledger.aclose()


# -- retention and the sweep ------------------------------------------------------------------


async def fill(ledger: PostgresLedger, n: int, *, tag: str = "k") -> None:
    """``n`` done records (claims and completions each in a few batches)."""
    claims = await asyncio.gather(*(
        ledger.claim(key=f"{tag}{i}", job_id=f"j{tag}{i}", payload=P1, fingerprint=F1, token="t", lease=30)
        for i in range(n)
    ))
    assert all(isinstance(c, Claimed) for c in claims)
    assert set(await asyncio.gather(*(
        ledger.complete(key=f"{tag}{i}", token="t", response={"id": i}) for i in range(n)
    ))) == {"ok"}


async def test_expired_records_are_never_answered_as_live(make: Any, postgres_store_url: str, prefix: str) -> None:
    ledger = make(create_table=True, retention=0.3, sweep_interval=0)
    await ledger.start()
    await fill(ledger, 2)
    await ledger.claim(key="f", job_id="jf", payload=P1, fingerprint=F1, token="t", lease=30)
    await ledger.fail(key="f", token="t", code="INVALID", message="no")
    await asyncio.sleep(0.4)
    assert await count(postgres_store_url, f"{prefix}_ledger") == 3  # not swept yet
    assert await ledger.get("k0") is None and await ledger.get("f") is None
    assert await ledger.clear("f") is False
    assert await ledger.fail(key="k1", token="t", code="X", message="y") == "missing"
    assert await ledger.renew(key="k1", token="t", lease=30) == "missing"
    assert await ledger.complete(key="k1", token="t", response={"id": "again"}) == "recreated"
    again = await ledger.claim(key="k0", job_id="other-job", payload=P1, fingerprint=F1, token="t2", lease=30)
    assert isinstance(again, Claimed) and again.fresh and again.age == 0  # the job note expired too


async def test_sweep_deletes_expired_rows_in_batches(make: Any, postgres_store_url: str, prefix: str) -> None:
    ledger = make(create_table=True, retention=0.5, sweep_interval=0)
    await ledger.start()
    await fill(ledger, 1200)
    assert await ledger.sweep() == 0  # nothing has expired yet
    await asyncio.sleep(0.6)
    before = ledger.statements
    assert await ledger.sweep(batch=500, max_batches=1) == 1000  # 500 records, 500 job notes
    assert ledger.statements - before == 2  # one statement per table
    assert await count(postgres_store_url, f"{prefix}_ledger") == 700
    assert await count(postgres_store_url, f"{prefix}_ledger_jobs") == 700
    before = ledger.statements
    assert await ledger.sweep(batch=300) == 1400
    assert ledger.statements - before == 6  # 300 + 300 + 100, for each table
    assert await count(postgres_store_url, f"{prefix}_ledger") == 0


async def test_sweep_skips_rows_in_use_and_never_waits(make: Any, postgres_store_url: str, prefix: str) -> None:
    ledger = make(create_table=True, retention=0.3, sweep_interval=0)
    await ledger.start()
    await fill(ledger, 5)
    await asyncio.sleep(0.4)
    async with connect(postgres_store_url) as holder, holder.transaction():
        await holder.execute(f"SELECT 1 FROM \"{prefix}_ledger\" WHERE key = 'k3' FOR UPDATE")
        started = time.monotonic()
        assert await asyncio.wait_for(ledger.sweep(), 10) == 9  # all but the row held
        assert time.monotonic() - started < 2
    assert await count(postgres_store_url, f"{prefix}_ledger") == 1
    assert await ledger.sweep() == 1


async def test_the_background_task_sweeps(make: Any, postgres_store_url: str, prefix: str) -> None:
    ledger = make(create_table=True, retention=0.2, sweep_interval=0.2)
    await ledger.start()
    await fill(ledger, 10)
    deadline = time.monotonic() + 10
    while await count(postgres_store_url, f"{prefix}_ledger"):
        assert time.monotonic() < deadline, "the background sweep did not run"
        await asyncio.sleep(0.1)
    await ledger.aclose()
    assert ledger._sweeper is None


# -- group commit ------------------------------------------------------------------------------


@pytest.mark.parametrize("group_commit", [True, False])
async def test_round_trips_per_send(make: Any, group_commit: bool) -> None:
    batches: list[int] = []
    ledger = make(create_table=True, group_commit=group_commit, on_batch=batches.append)
    async with MockProvider() as p, Engine(
        p.emails_url, key="welcome:{user_id}:{job_id}", api_key=p.api_key, ledger=ledger,
        retry=RetryPolicy(backoff=0.01),
    ) as e:
        before = ledger.statements
        for i in range(10):
            await e.send(Job(f"s{i}", {"user_id": "u"}), BODY)
        assert ledger.statements - before == 20  # one claim and one completion each, sent alone
        before, batches[:] = ledger.statements, []
        results = await e.send_many([(Job(f"c{i}", {"user_id": "u"}), BODY) for i in range(100)])
        statements = ledger.statements - before
    assert all(not isinstance(r, Exception) for r in results)
    assert sum(batches) == 200  # claim + complete, each send
    if group_commit:
        assert statements <= 20  # 100 concurrent sends share statements
    else:
        assert statements == 200 and batches == [1] * 200


async def test_same_key_calls_in_one_batch_keep_their_order(make: Any) -> None:
    """A batch holds a key (and a claim's job id) once per statement: calls on one key go
    in the order they were made, one statement after the other."""
    batches: list[int] = []
    ledger = make(create_table=True, on_batch=batches.append)
    await ledger.start()
    results = await asyncio.gather(
        ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="a", lease=30),
        ledger.complete(key="k", token="a", response={"id": "em_1"}),
        ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="b", lease=30),
        ledger.claim(key="k2", job_id="j", payload=P1, fingerprint=F1, token="c", lease=30),  # same job: unstable
        ledger.claim(key="k3", job_id="j3", payload=P1, fingerprint=F1, token="d", lease=30),
    )
    assert batches == [5]
    claim, completed, done, unstable, other = results
    assert isinstance(claim, Claimed) and claim.fresh and completed == "ok"
    assert done == Done({"id": "em_1"}, F1) and unstable.recorded_key == "k"  # type: ignore[union-attr]
    assert isinstance(other, Claimed) and other.fresh


async def test_two_ledgers_racing_on_many_keys_never_deadlock(make: Any) -> None:
    """Claims, renewals, completions and releases of overlapping keys from two ledgers
    (two pools) at once: every row is locked in key order, so no statement waits on
    another in a cycle (PostgreSQL would abort one after deadlock_timeout)."""
    one, two = make(create_table=True), make(create_table=True)
    await one.start()
    keys = [f"k{i:02}" for i in range(40)]
    for rnd in range(4):
        order = keys[::-1] if rnd % 2 else keys
        calls = []
        for i, key in enumerate(order):
            ledger = one if i % 2 else two
            calls.append(ledger.claim(key=key, job_id=key, payload=P1, fingerprint=F1, token=f"{rnd}-{i}", lease=0.05))
            calls.append((two if i % 2 else one).renew(key=key, token=f"{rnd - 1}-{i}", lease=30))
            calls.append(ledger.release(key=key, token=f"{rnd - 1}-{len(keys) - 1 - i}"))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        await asyncio.sleep(0.06)
    settled = await asyncio.gather(*(one.complete(key=k, token="x", response={"id": k}) for k in keys))
    assert set(settled) == {"superseded"}


# -- what the database holds ---------------------------------------------------------------------


async def test_text_postgres_cannot_hold_is_stored_all_the_same(make: Any) -> None:
    """A NUL or a lone surrogate in a message or a response would fail the whole batch it is
    in: they are stored as U+FFFD instead, and the batch goes through. A job id no ledger can
    store is refused alone, before it is batched, and the claims beside it go through."""
    ledger = make(create_table=True)
    await ledger.start()
    claims = await asyncio.gather(
        ledger.claim(key="k1", job_id="job-one", payload=P1, fingerprint=F1, token="t", lease=30),
        ledger.claim(key="k2", job_id="job-\ud800", payload=P1, fingerprint=F1, token="t", lease=30),
        ledger.claim(key="k4", job_id="job\x00four", payload=P1, fingerprint=F1, token="t", lease=30),
        ledger.claim(key="k3", job_id="j\u00e9\u6f22", payload=b"\x00\xff", fingerprint=F1, token="t", lease=30),
        return_exceptions=True,
    )
    assert isinstance(claims[0], Claimed) and isinstance(claims[3], Claimed)
    assert isinstance(claims[1], InvalidJobIdError) and isinstance(claims[2], InvalidJobIdError)
    assert await ledger.get("k2") is None and await ledger.get("k4") is None
    assert await ledger.fail(key="k1", token="t", code="INVALID", message="bad\x00byte") == "ok"
    assert await ledger.complete(key="k3", token="t", response={"id": "\x00\u00e9"}) == "ok"
    record = await ledger.get("k1")
    assert record is not None and record.job_id == "job-one" and record.message == "bad\ufffdbyte"
    done = await ledger.get("k3")
    assert done is not None and done.job_id == "j\u00e9\u6f22" and done.response == {"id": "\x00\u00e9"}


async def test_the_frozen_body_goes_once_settled(make: Any, postgres_store_url: str, prefix: str) -> None:
    ledger = make(create_table=True)
    await ledger.start()
    await ledger.claim(key="d", job_id="jd", payload=P1, fingerprint=F1, token="t", lease=30)
    await ledger.claim(key="f", job_id="jf", payload=P1, fingerprint=F1, token="t", lease=30)
    await ledger.claim(key="r", job_id="jr", payload=P1, fingerprint=F1, token="t", lease=30)
    await ledger.complete(key="d", token="t", response={"id": "x"})
    await ledger.fail(key="f", token="t", code="X", message="y")
    await ledger.release(key="r", token="t")
    async with connect(postgres_store_url) as con:
        rows = {r["key"]: r for r in await con.fetch(f'SELECT key, body, lease_until, token FROM "{prefix}_ledger"')}
    assert rows["d"]["body"] is None and rows["f"]["body"] is None and rows["r"]["body"] == P1
    assert rows["d"]["lease_until"] is None and rows["f"]["lease_until"] is None and rows["r"]["token"] == ""


async def test_a_malformed_record_is_a_store_failure(make: Any, postgres_store_url: str, prefix: str) -> None:
    ledger = make(create_table=True)
    await ledger.start()
    await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
    await ledger.complete(key="k", token="t", response={"id": "x"})
    await pg_execute(postgres_store_url, f"UPDATE \"{prefix}_ledger\" SET response = '{{' WHERE key = 'k'")
    with pytest.raises(LedgerUnavailableError, match="malformed ledger record"):
        await ledger.get("k")
    with pytest.raises(LedgerUnavailableError, match="malformed claim answer"):
        await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t2", lease=30)


async def test_a_record_read_through_the_url_as_idemsend_inspect_reads_it(
    make: Any, postgres_store_url: str, prefix: str
) -> None:
    """``idemsend inspect`` reads a record with ``ledger_from_url(url, prefix=...).get(key)``:
    the prefix names the table (``<prefix>_ledger``)."""
    ledger = make(create_table=True)
    await ledger.start()
    await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
    await ledger.complete(key="k", token="t", response={"id": "em_1", "status": 200})
    reader = ledger_from_url(postgres_store_url, prefix=prefix, sweep_interval=0, pool_size=1)
    try:
        shown = await reader.get("k")
        assert shown is not None and shown.state == "done" and (shown.response or {}).get("id") == "em_1"
        assert shown.job_id == "j" and shown.fingerprint == F1 and abs(shown.first_sent_at - time.time()) < 60
        assert await reader.get("nope") is None
    finally:
        await reader.aclose()


# -- PgBouncer: no session state, no prepared statements ----------------------------------------


async def session_state(ledger: PostgresLedger) -> dict[str, Any]:
    """What one of the ledger's connections holds beyond a statement."""

    async def look(con: Any) -> dict[str, Any]:
        row = await con.fetchrow(
            "SELECT (SELECT count(*) FROM pg_prepared_statements) AS prepared,"
            " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory,"
            " pg_my_temp_schema() AS temp_schema,"
            " (SELECT count(*) FROM pg_settings WHERE source = 'session') AS set_in_session"
        )
        return dict(row)

    return await ledger._db.on_connection(look)


async def workload(ledger: PostgresLedger) -> None:
    await fill(ledger, 50)
    await ledger.claim(key="f", job_id="jf", payload=P1, fingerprint=F1, token="t", lease=30)
    await ledger.renew(key="f", token="t", lease=30)
    await ledger.fail(key="f", token="t", code="X", message="y")
    assert await ledger.clear("f") is True
    assert await ledger.get("k1") is not None
    await ledger.sweep()


async def test_the_ledger_leaves_no_session_state(make: Any, prefix: str) -> None:
    """Nothing outlives a statement on a connection (what PgBouncer's transaction mode
    needs): no advisory lock, no temp table, no SET. With statement_cache_size=0, no
    prepared statement either."""
    bouncer_safe = make(create_table=True, statement_cache_size=0, pool_size=1)
    await bouncer_safe.start()
    await workload(bouncer_safe)
    assert await session_state(bouncer_safe) == {"prepared": 0, "advisory": 0, "temp_schema": 0, "set_in_session": 0}
    cached = make(table=f"{prefix}_c_ledger", create_table=True, pool_size=1)  # asyncpg caches prepared statements
    await cached.start()
    await workload(cached)
    state = await session_state(cached)
    assert state["prepared"] > 0 and state["advisory"] == state["temp_schema"] == state["set_in_session"] == 0


class PgBouncer:
    """A pgbouncer in transaction mode in front of a PostgreSQL, on a free port."""

    def __init__(self, dsn: str, *, pool_size: int = 2) -> None:
        binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
        if binary is None:
            pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
        self.binary = binary
        server = urllib.parse.urlsplit(dsn)
        self.user = server.username or "postgres"
        self.database = server.path.lstrip("/") or self.user
        self.port = free_port()
        self.dir = Path(os.path.realpath(__import__("tempfile").mkdtemp(prefix="idemsend-pgbouncer-")))
        (self.dir / "users.txt").write_text(f'"{self.user}" "{server.password or ""}"\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server.hostname or '127.0.0.1'} port={server.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'users.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 500\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\npidfile = {self.dir / 'pgbouncer.pid'}\n"
        )
        self.run_as = "postgres" if os.geteuid() == 0 else None  # pgbouncer refuses root
        if self.run_as is not None:
            shutil.chown(self.dir, self.run_as)
            for child in self.dir.iterdir():
                shutil.chown(child, self.run_as)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> PgBouncer:
        self.process = subprocess.Popen(
            [self.binary, str(self.dir / "pgbouncer.ini")], user=self.run_as,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), __import__("socket").create_connection(("127.0.0.1", self.port), 0.2):
                return self
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "pgbouncer.log").read_text() if (self.dir / "pgbouncer.log").exists() else ""
                raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}")
            time.sleep(0.05)

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def bouncer(postgres_dsn: str) -> Iterator[PgBouncer]:
    pgb = PgBouncer(postgres_dsn).start()
    try:
        yield pgb
    finally:
        pgb.cleanup()


async def test_through_pgbouncer_in_transaction_mode(bouncer: PgBouncer, postgres_dsn: str, prefix: str) -> None:
    """Two ledgers (eight connections each) through a PgBouncer that has two server
    connections, in transaction mode: every call of many concurrent sends works, one
    winner per raced key, with ``?statement_cache_size=0`` in the URL."""
    url = with_params(bouncer.dsn, statement_cache_size="0", create_table="true")
    one, two = ledger_from_url(url, prefix=prefix), ledger_from_url(url, prefix=prefix)
    try:
        assert isinstance(one, PostgresLedger) and one._db.options["statement_cache_size"] == 0
        await one.start()
        await two.start()
        race = await asyncio.gather(*(
            (one if i % 2 else two).claim(key="race", job_id="jr", payload=P1, fingerprint=F1, token=f"t{i}", lease=30)
            for i in range(20)
        ))
        assert sum(isinstance(r, Claimed) for r in race) == 1 and sum(isinstance(r, Busy) for r in race) == 19
        assert await one.sweep() == 0
        async with MockProvider() as p:
            async with Engine(p.emails_url, key="welcome:{user_id}:{job_id}", api_key=p.api_key, ledger=one) as a, \
                    Engine(p.emails_url, key="welcome:{user_id}:{job_id}", api_key=p.api_key, ledger=two) as b:
                jobs = [(Job(f"j{i}", {"user_id": f"u{i}"}), BODY) for i in range(150)]
                results = await asyncio.gather(a.send_many(jobs), b.send_many(jobs))
            assert all(not isinstance(r, Exception) for rs in results for r in rs), results
            assert p.sends == 150 and not p.double_sends()
    finally:
        await one.aclose()
        await two.aclose()
        await pg_execute(postgres_dsn, f'DROP TABLE IF EXISTS "{prefix}_ledger", "{prefix}_ledger_jobs"')


# -- store failures -----------------------------------------------------------------------------


async def test_an_unreachable_server_is_ledger_unavailable_and_the_password_never_shows() -> None:
    dsn = f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/idemsend"
    ledger = PostgresLedger.from_url(dsn, timeout=2)
    assert SECRET not in repr(ledger) and "127.0.0.1" in repr(ledger)
    errors: list[BaseException] = []
    for call in (
        ledger.start, ledger.migrate, ledger.sweep, lambda: ledger.get("k"), lambda: ledger.clear("k"),
        lambda: ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30),
        lambda: ledger.complete(key="k", token="t", response={"id": "x"}),
        lambda: ledger.fail(key="k", token="t", code="X", message="y"),
        lambda: ledger.renew(key="k", token="t", lease=30),
        lambda: ledger.release(key="k", token="t", forget=True),
    ):
        with pytest.raises(LedgerUnavailableError) as info:
            await asyncio.wait_for(call(), 10)  # type: ignore[no-untyped-call]
        errors.append(info.value)
    assert "could not check" in str(errors[0])
    for error in errors:
        text = f"{error} {error.__cause__!r} {error.__context__!r}"
        assert SECRET not in text, text
    await ledger.aclose()
    with pytest.raises(LedgerUnavailableError, match="closed"):
        await ledger.get("k")


async def test_a_statement_past_the_timeout_is_cancelled(make: Any, postgres_store_url: str, prefix: str) -> None:
    ledger = make(create_table=True, timeout=0.5)
    await ledger.start()
    await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
    async with connect(postgres_store_url) as holder:
        async with holder.transaction():
            await holder.execute(f"SELECT 1 FROM \"{prefix}_ledger\" WHERE key = 'k' FOR UPDATE")
            started = time.monotonic()
            with pytest.raises(LedgerUnavailableError, match="Timeout"):
                await ledger.renew(key="k", token="t", lease=30)
            assert time.monotonic() - started < 3
        # the server gave up the statement too (asyncpg sent a cancel request)
        deadline = time.monotonic() + 5
        while await holder.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'idemsend-ledger' AND state = 'active'"
            " AND pid <> pg_backend_pid() AND strpos(query, $1) > 0", f"{prefix}_ledger"
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    assert await ledger.renew(key="k", token="t", lease=30) == "ok"


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_a_restart_mid_claim_fails_closed_and_the_ledger_carries_on(how: str) -> None:
    """The server goes away while a claim waits on a row lock: the claim raises
    LedgerUnavailableError (the engine sends nothing), it did not take effect, and the
    same ledger object works again once the server is back. (The lock is held by a
    prepared transaction, which outlives the restart: no backend of the test itself is
    ended with the claim's, so the claim cannot slip through as the holder goes.)"""
    server = own_postgres(max_prepared_transactions="2")
    ledger = PostgresLedger.from_url(server.dsn, create_table=True, timeout=10)
    try:
        await ledger.start()
        first = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t1", lease=30)
        assert isinstance(first, Claimed) and await ledger.release(key="k", token="t1") == "ok"
        holder = await asyncpg.connect(server.dsn)
        await holder.execute("BEGIN")
        await holder.execute("SELECT 1 FROM idemsend_ledger WHERE key = 'k' FOR UPDATE")
        await holder.execute("PREPARE TRANSACTION 'hold-k'")
        claim = asyncio.ensure_future(
            ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t2", lease=30)
        )
        deadline = time.monotonic() + 10
        while not await holder.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'idemsend-ledger' AND wait_event_type = 'Lock'"
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await asyncio.to_thread(server.stop if how == "stop" else server.kill)
        with pytest.raises(LedgerUnavailableError):
            await asyncio.wait_for(claim, 10)
        holder.terminate()
        await asyncio.to_thread(server.start)
        async with connect(server.dsn) as con:
            await con.execute("ROLLBACK PREPARED 'hold-k'")  # the lock outlived the restart
        deadline = time.monotonic() + 10
        while True:
            try:
                again = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t3", lease=30)
                break
            except LedgerUnavailableError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        # t2's claim never took effect: the record was still released, and t3 resumes it
        assert isinstance(again, Claimed) and not again.fresh and again.payload == P1
        assert await ledger.complete(key="k", token="t3", response={"id": "em_1"}) == "ok"
    finally:
        await ledger.aclose()
        server.cleanup()


async def test_a_ledger_given_a_pool_leaves_it_open(postgres_store_url: str, prefix: str) -> None:
    pool = await asyncpg.create_pool(postgres_store_url, min_size=1, max_size=2)
    try:
        ledger = PostgresLedger(pool, table=f"{prefix}_ledger", create_table=True)
        await ledger.start()
        claim = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        assert isinstance(claim, Claimed)
        await ledger.aclose()
        await ledger.aclose()  # a second call does nothing
        assert await pool.fetchval(f'SELECT count(*) FROM "{prefix}_ledger"') == 1
    finally:
        await pool.execute(f'DROP TABLE IF EXISTS "{prefix}_ledger", "{prefix}_ledger_jobs"')
        await pool.close()


async def test_prefixes_name_separate_tables(postgres_store_url: str) -> None:
    """Two prefixes on one database are two ledgers that never see each other's keys."""
    a, b = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    one = ledger_from_url(postgres_store_url, prefix=a, create_table=True)
    two = ledger_from_url(postgres_store_url, prefix=b, create_table=True)
    try:
        await one.start()
        await two.start()
        claim = await one.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        assert isinstance(claim, Claimed)
        assert await two.get("k") is None
    finally:
        await one.aclose()
        await two.aclose()
        await pg_execute(postgres_store_url, *(f'DROP TABLE "{p}_ledger", "{p}_ledger_jobs"' for p in (a, b)))


async def test_prepared_statements_through_pgbouncer_fail_closed_and_say_why(
    bouncer: PgBouncer, postgres_dsn: str, prefix: str
) -> None:
    """With asyncpg's statement cache on, PgBouncer in transaction mode sends a statement
    prepared on one server connection to another: those calls fail as
    LedgerUnavailableError (nothing escapes raw) that names the fix."""
    direct = PostgresLedger.from_url(postgres_dsn, table=f"{prefix}_ledger")
    await direct.migrate()
    await direct.aclose()
    ledger = PostgresLedger.from_url(bouncer.dsn, table=f"{prefix}_ledger")
    failures: list[BaseException] = []
    try:
        for rnd in range(20):
            results = await asyncio.gather(*(
                ledger.claim(key=f"{rnd}-{i}", job_id=f"{rnd}-{i}", payload=P1, fingerprint=F1, token="t", lease=30)
                for i in range(30)
            ), *(ledger.get(f"x{i}") for i in range(10)), return_exceptions=True)
            failures += [r for r in results if isinstance(r, BaseException)]
            if failures:
                break
    finally:
        await ledger.aclose()
        await pg_execute(postgres_dsn, f'DROP TABLE IF EXISTS "{prefix}_ledger", "{prefix}_ledger_jobs"')
    assert failures, "PgBouncer in transaction mode ran prepared statements across server connections"
    assert all(isinstance(f, LedgerUnavailableError) for f in failures), failures
    assert any("statement_cache_size=0" in str(f) for f in failures), failures
