"""The ledger contract (idemsend.testing.ledger_contract) over every ledger idemsend ships:
MemoryLedger, RedisLedger on a Redis of its own (persistent, so it can be restarted and
flushed), RedisLedger on the session's 3-node Redis Cluster, and PostgresLedger (tables
of its own per test on the session's PostgreSQL; the restart test on a server of this
module's own), on a database whose default collation is C and on an ICU en-US one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from idemsend.ledger import Ledger, MemoryLedger, RedisLedger, ledger_from_url
from idemsend.testing import PostgresServer, RedisServer
from idemsend.testing.ledger_contract import Backdate, LedgerContract, MakeLedger, StoreAction

from ._redis_backdate import backdate_key
from .conftest import HAVE_ASYNCPG, NO_ASYNCPG, create_database, own_postgres, pg_execute, run_sync

# -- MemoryLedger: the store is one MemoryLedger object, shared by every "worker" -----------


def _wipe(ledger: MemoryLedger) -> None:
    """What a process restart does to a MemoryLedger's records: all gone."""
    for table in (ledger._settled, ledger._flight, ledger._jobs, ledger._extra_jobs):
        table.clear()


class TestMemoryLedger(LedgerContract):
    @pytest.fixture
    def memory(self) -> list[MemoryLedger]:
        """The test's one MemoryLedger, made by the first make_ledger() call."""
        return []

    @pytest.fixture
    def make_ledger(self, memory: list[MemoryLedger]) -> MakeLedger:
        async def make(*, retention: float | None = None) -> Ledger:
            if not memory:
                memory.append(MemoryLedger() if retention is None else MemoryLedger(retention=retention))
            assert retention is None or memory[0].retention == retention, "one MemoryLedger per test"
            return memory[0]

        return make

    @pytest.fixture
    def store_forget(self, memory: list[MemoryLedger]) -> StoreAction:
        async def forget() -> None:
            for ledger in memory:
                _wipe(ledger)

        return forget

    @pytest.fixture
    def store_restart(self, memory: list[MemoryLedger]) -> StoreAction:
        async def restart() -> None:  # a process's memory does not persist
            for ledger in memory:
                _wipe(ledger)

        return restart

    @pytest.fixture
    def store_backdate(self, memory: list[MemoryLedger]) -> Backdate:
        async def backdate(key: str, seconds: float) -> None:
            [ledger] = memory
            record = ledger._flight.get(key) or ledger._settled.get(key)
            assert record is not None, key
            record.first_sent_at -= seconds

        return backdate


# -- RedisLedger: a prefix of its own per test, made through ledger_from_url ----------------


class _RedisContract(LedgerContract):
    """What plain Redis and Cluster share: ``store_url`` and ``admin`` differ."""

    @pytest.fixture
    def store_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    async def admin(self, store_url: str) -> AsyncIterator[Any]:
        """A client of the test's own, to do things to the store behind the ledger's back."""
        raise NotImplementedError
        yield

    @pytest.fixture
    async def make_ledger(self, store_url: str, prefix: str) -> AsyncIterator[MakeLedger]:
        made: list[Ledger] = []

        async def make(*, retention: float | None = None) -> Ledger:
            options = {} if retention is None else {"retention": retention}
            made.append(ledger_from_url(store_url, prefix=prefix, **options))
            return made[-1]

        yield make
        for ledger in made:
            await ledger.aclose()

    @pytest.fixture
    def store_backdate(self, admin: Any, prefix: str) -> Backdate:
        async def backdate(key: str, seconds: float) -> None:
            assert await backdate_key(RedisLedger(admin, prefix=prefix), key, seconds), key

        return backdate


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A Redis for this module alone, with AOF: a restart keeps every record."""
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.mark.redis
class TestRedisLedger(_RedisContract):
    @pytest.fixture
    def store_url(self, redis_server: RedisServer) -> str:
        return redis_server.url

    @pytest.fixture
    async def admin(self, store_url: str) -> AsyncIterator[Any]:
        client = aioredis.Redis.from_url(store_url)
        yield client
        await client.aclose()

    @pytest.fixture
    def store_forget(self, admin: Any) -> StoreAction:
        async def forget() -> None:
            await admin.flushall()  # the server is this module's own

        return forget

    @pytest.fixture
    def store_restart(self, redis_server: RedisServer) -> StoreAction:
        async def restart() -> None:
            redis_server.stop()
            redis_server.start()

        return restart


@pytest.mark.redis
@pytest.mark.cluster
class TestRedisClusterLedger(_RedisContract):
    @pytest.fixture
    def store_url(self, cluster_url: str) -> str:
        return cluster_url.replace("redis://", "redis+cluster://", 1)

    @pytest.fixture
    async def admin(self, cluster_url: str) -> AsyncIterator[Any]:
        client = RedisCluster.from_url(cluster_url)
        yield client
        await client.aclose()

    @pytest.fixture
    def store_forget(self, admin: Any, prefix: str) -> StoreAction:
        async def forget() -> None:  # the session's cluster is shared: only this test's keys
            keys = [key async for key in admin.scan_iter(match=f"{prefix}:*")]
            for key in keys:
                await admin.delete(key)

        return forget


# -- PostgresLedger: tables of its own per test, made through ledger_from_url ---------------


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL of this module's own, for the restart test (started when first asked for)."""
    server = own_postgres()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def pg_server_databases() -> dict[str, str]:
    """``pg_server``'s databases by default collation (its own is C), made when first asked for."""
    return {}


@pytest.mark.postgres
@pytest.mark.skipif(not HAVE_ASYNCPG, reason=NO_ASYNCPG)
class TestPostgresLedger(LedgerContract):
    @pytest.fixture
    def pg_url(self, request: pytest.FixtureRequest, postgres_collation: str) -> str:
        """The session's PostgreSQL (its schema), or this module's own for the restart test;
        on a database whose default collation is ``postgres_collation`` either way."""
        if "store_restart" in request.fixturenames:
            server: PostgresServer = request.getfixturevalue("pg_server")
            made: dict[str, str] = request.getfixturevalue("pg_server_databases")
            if postgres_collation not in made:  # the server goes with its databases
                made[postgres_collation] = (
                    server.dsn if postgres_collation == "C"
                    else run_sync(create_database(server.dsn, postgres_collation))
                )
            return made[postgres_collation]
        url: str = request.getfixturevalue("postgres_store_url")
        return url

    @pytest.fixture
    def tables(self, prefix: str) -> str:
        """This test's two tables, as TRUNCATE and DROP take them."""
        return f'"{prefix}_ledger", "{prefix}_ledger_jobs"'

    @pytest.fixture
    async def make_ledger(self, pg_url: str, prefix: str, tables: str) -> AsyncIterator[MakeLedger]:
        made: list[Ledger] = []

        async def make(*, retention: float | None = None) -> Ledger:
            options = {} if retention is None else {"retention": retention}
            ledger = ledger_from_url(pg_url, prefix=prefix, create_table=True, **options)
            made.append(ledger)
            await ledger.start()  # creates this test's tables
            return ledger

        yield make
        for ledger in made:
            await ledger.aclose()
        await pg_execute(pg_url, f"DROP TABLE IF EXISTS {tables}")

    @pytest.fixture
    def store_forget(self, pg_url: str, tables: str) -> StoreAction:
        async def forget() -> None:
            await pg_execute(pg_url, f"TRUNCATE {tables}")

        return forget

    @pytest.fixture
    def store_backdate(self, pg_url: str, prefix: str) -> Backdate:
        async def backdate(key: str, seconds: float) -> None:
            import asyncpg

            con = await asyncpg.connect(pg_url)
            try:
                status = await con.execute(
                    f'UPDATE "{prefix}_ledger" SET first_sent_at = first_sent_at - $2 * interval \'1 second\''
                    " WHERE key = $1", key, float(seconds),
                )
            finally:
                await con.close()
            assert status == "UPDATE 1", key

        return backdate

    @pytest.fixture
    def store_restart(self, pg_server: PostgresServer) -> StoreAction:
        async def restart() -> None:  # a fast shutdown: every commit is kept
            pg_server.stop()
            pg_server.start()

        return restart


# -- SQLiteLedger: a file of its own per test, made through ledger_from_url ------------------


class TestSQLiteLedger(LedgerContract):
    """Every ledger a test makes opens the one file (as the workers of one host do), each on
    its own connection and thread. No ``store_restart``: there is no server to restart (a
    process holding the file being killed is tests/ledger/test_sqlite.py's)."""

    @pytest.fixture
    def db_path(self, tmp_path: Any) -> str:
        return str(tmp_path / "ledger.db")

    @pytest.fixture
    async def make_ledger(self, db_path: str) -> AsyncIterator[MakeLedger]:
        made: list[Ledger] = []

        async def make(*, retention: float | None = None) -> Ledger:
            options: dict[str, Any] = {} if retention is None else {"retention": retention}
            ledger = ledger_from_url(f"sqlite:///{db_path}", **options)
            made.append(ledger)
            await ledger.start()
            return ledger

        yield make
        for ledger in made:
            await ledger.aclose()

    @pytest.fixture
    def store_forget(self, db_path: str) -> StoreAction:
        async def forget() -> None:  # behind the ledgers' backs, on a connection of its own
            sqlite_execute(db_path, "DELETE FROM idemsend_ledger", "DELETE FROM idemsend_ledger_jobs")

        return forget

    @pytest.fixture
    def store_backdate(self, db_path: str) -> Backdate:
        async def backdate(key: str, seconds: float) -> None:
            changed = sqlite_execute(
                db_path, "UPDATE idemsend_ledger SET first_sent_at = first_sent_at - ? WHERE key = ?",
                params=(float(seconds), key),
            )
            assert changed == 1, key

        return backdate


def sqlite_execute(path: str, *statements: str, params: tuple[Any, ...] = ()) -> int:
    """Run statements on a connection of their own (committed); answers the rows the last changed."""
    import sqlite3

    con = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        changed = 0
        for sql in statements:
            changed = con.execute(sql, params).rowcount
        return changed
    finally:
        con.close()
