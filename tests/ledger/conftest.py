"""Stores for the ledger tests that need a server of their own (processes, restarts).

A ``Store`` is what such a test may use of a ledger's backing server: a URL that
``ledger_from_url`` accepts, the worker script's flags for it, and, for a server the
test owns, ``stop``/``start``/``restart``/``kill``. Redis and PostgreSQL (where asyncpg
is installed) are in ``STORES``, and every test parametrized over it runs on each.

PostgreSQL: ``POSTGRES_DSN`` if set, else the local server at 127.0.0.1:5432 if it
answers, else a throwaway server (``idemsend.testing.PostgresServer``; the tests that
need one are skipped, saying why, where the server binaries are missing). Every test
gets tables of its own: the shared server's tests run in a schema made for this session
(dropped at its end), and each test uses its own table names within it.

The shared server's tests run twice (``postgres_collation``, pytest ids ``C`` and
``en-US``): on a database whose default collation is C, and on one made for the session
whose default collation is ICU ``en-US`` (libc ``en_US.UTF-8`` where the server has no
ICU), as most managed PostgreSQL's is. Text sorts differently there (``k:a`` before
``k:B``; C sorts bytes, ``k:B`` first), and the ledger must not care.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from idemsend.ledger import Ledger, ledger_from_url
from idemsend.testing import PostgresServer, RedisServer

from ._dynamodb import HAVE_DYNAMODB, OwnMoto, moto_env, new_table, table_url

#: Whether the Postgres ledger can run here (its client library is installed).
HAVE_ASYNCPG = importlib.util.find_spec("asyncpg") is not None
NO_ASYNCPG = "asyncpg is not installed: pip install 'idemsend[postgres]' (nox -s postgres)"

#: The stores the process tests run on (pytest ids; "redis" also gets the `redis` marker,
#: "postgres" the `postgres` marker, "dynamodb" the `dynamodb` marker: moto's server).
#: "sqlite": a file of the test's own (stdlib only).
STORES = (["redis", "postgres", "sqlite"] if HAVE_ASYNCPG else ["redis", "sqlite"]) + (
    ["dynamodb"] if HAVE_DYNAMODB else []
)
#: The same for the shared servers, where PostgreSQL runs on a C and an en-US database.
SHARED_STORES = [*STORES, "postgres-en-US"] if HAVE_ASYNCPG else STORES

#: The local server the Postgres tests use when POSTGRES_DSN is not set and it answers.
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end on an event loop of its own, in a thread of its own (so a
    sync helper can talk to PostgreSQL from inside an async test)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: T = box["value"]
    return result


async def pg_execute(dsn: str, *statements: str) -> None:
    """Run SQL statements on a connection of their own."""
    import asyncpg

    con = await asyncpg.connect(dsn, timeout=10)
    try:
        for sql in statements:
            await con.execute(sql)
    finally:
        await con.close()


def with_params(dsn: str, **params: str) -> str:
    """``dsn`` with more query parameters."""
    joiner = "&" if "?" in dsn else "?"
    return dsn + joiner + "&".join(f"{k}={v}" for k, v in params.items())


class _Server(Protocol):
    def start(self) -> Any: ...
    def stop(self) -> None: ...
    def kill(self) -> None: ...
    def cleanup(self) -> None: ...


@dataclass
class Store:
    """A ledger store for a test: ``url`` for ``ledger_from_url``; ``persistent`` when a
    restart keeps the data; ``server`` when the test owns it (and may stop it)."""

    kind: str
    url: str
    persistent: bool = False
    server: _Server | None = field(default=None, repr=False)

    def ledger(self, *, prefix: str = "idemsend", **options: Any) -> Ledger:
        """A new ledger over this store (``socket_timeout`` means the store's timeout)."""
        if self.kind == "sqlite" and "socket_timeout" in options:
            options["timeout"] = options.pop("socket_timeout")
        if self.kind == "postgres":
            if "socket_timeout" in options:
                options["timeout"] = options.pop("socket_timeout")
            options.setdefault("create_table", True)
        if self.kind == "dynamodb":
            if "socket_timeout" in options:
                timeout = options.pop("socket_timeout")
                options["config"] = {"connect_timeout": timeout, "read_timeout": timeout}
            options.setdefault("create_table", True)
        return ledger_from_url(self.url, prefix=prefix, **options)

    def worker_args(self) -> list[str]:
        """tests/workers/send_jobs.py's flags for this store."""
        if self.kind == "redis":
            return ["--redis", self.url]
        if self.kind == "sqlite":
            return ["--ledger", self.url]
        return ["--ledger", with_params(self.url, create_table="true")]  # dynamodb:// takes it too

    def _owned(self) -> _Server:
        if self.server is None:
            pytest.fail(f"the {self.kind} store at {self.url} is shared: this test may not stop it")
        return self.server

    def stop(self) -> None:
        """Stop the server (its data stays on disk if it persists)."""
        self._owned().stop()

    def start(self) -> None:
        """Start the server again, same address (and data, if it persists)."""
        self._owned().start()

    def restart(self) -> None:
        """Stop and start: a persistent store keeps its records, another loses them.
        (A PostgreSQL that does not persist is one whose ledger tables are UNLOGGED: a
        crash empties them, so its restart is a SIGKILL and a start.)"""
        if self.kind == "postgres" and not self.persistent:
            self.kill()
        else:
            self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the server: a crash."""
        self._owned().kill()


def unlogged_tables(table: str) -> str:
    """The SQL of the ledger's tables, UNLOGGED (a crash empties them: a store that does
    not persist)."""
    from idemsend.ledger._postgres import schema_sql

    return schema_sql(table).replace("CREATE TABLE", "CREATE UNLOGGED TABLE")


class LockedFile:
    """What "stopping" a SQLite ledger's store means: another process holds the file's
    write lock (``BEGIN EXCLUSIVE``), so every write waits out its busy timeout and fails;
    "starting" it again SIGKILLs that process (the OS drops its lock). ``stop`` returns once
    the lock is held."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.holder: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        self.kill()
        self.holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, self.path], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        assert line.strip() == b"locked", (line, self.holder.stderr.read() if self.holder.stderr else b"")

    def start(self) -> None:
        self.kill()

    def kill(self) -> None:
        if self.holder is not None:
            self.holder.kill()
            self.holder.communicate()  # waits, and closes its pipes
            self.holder = None

    def cleanup(self) -> None:
        self.kill()


#: A process that takes a SQLite file's write lock, says "locked", and holds it until killed.
_HOLD_LOCK = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(3600)
"""


def _sqlite_url(request: pytest.FixtureRequest) -> str:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def _make_shared(kind: str, request: pytest.FixtureRequest) -> Store:
    if kind == "sqlite":
        return Store("sqlite", _sqlite_url(request), persistent=True)
    if kind == "redis":
        return Store("redis", request.getfixturevalue("redis_url"))
    if kind in ("postgres", "postgres-en-US"):
        databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
        return Store("postgres", databases.store_url("C" if kind == "postgres" else "en-US"))
    if kind == "dynamodb":
        return Store("dynamodb", table_url(request.getfixturevalue("moto_url")))
    raise AssertionError(kind)


def _make_own(kind: str, persistent: bool, request: pytest.FixtureRequest) -> Store:
    if kind == "sqlite":
        if not persistent:
            pytest.skip("a SQLite file keeps every commit: it has no restart that loses records")
        url = _sqlite_url(request)
        return Store("sqlite", url, persistent=True, server=LockedFile(url.removeprefix("sqlite:///")))
    if kind == "redis":
        server = RedisServer(appendonly=persistent).start()
        return Store("redis", server.url, persistent=persistent, server=server)
    if kind == "postgres":
        pg = own_postgres()
        if not persistent:
            run_sync(pg_execute(pg.dsn, unlogged_tables("idemsend_ledger")))
        return Store("postgres", pg.dsn, persistent=persistent, server=pg)
    if kind == "dynamodb":
        if persistent:
            pytest.skip("moto keeps its tables in memory: no DynamoDB here survives a restart")
        moto_env()
        moto = OwnMoto()
        moto.tables.append(new_table())  # made at every start, the first too
        moto.start()
        return Store("dynamodb", table_url(moto.url, moto.tables[0]), server=moto)
    raise AssertionError(kind)


def own_postgres(**settings: str) -> PostgresServer:
    """A started throwaway PostgreSQL with these server settings (the caller cleans it
    up), or a skip saying why not."""
    if not HAVE_ASYNCPG:
        pytest.skip(NO_ASYNCPG)
    try:
        server = PostgresServer(settings=settings)
    except FileNotFoundError as exc:
        pytest.skip(f"no throwaway PostgreSQL: {exc}")
    try:
        return server.start()
    except BaseException:
        server.cleanup()
        raise


@pytest.fixture(params=SHARED_STORES)
def shared_store(request: pytest.FixtureRequest) -> Store:
    """The session's store of this kind (shared: no stop or restart); use a fresh prefix.
    PostgreSQL twice: a C database and an en-US one."""
    return _make_shared(request.param, request)


@pytest.fixture(params=STORES)
def own_store(request: pytest.FixtureRequest) -> Iterator[Callable[..., Store]]:
    """``own_store(persistent=...)``: a server of this kind for this test alone."""
    made: list[Store] = []

    def make(*, persistent: bool) -> Store:
        store = _make_own(request.param, persistent, request)
        made.append(store)
        return store

    yield make
    for store in made:
        if store.server is not None:
            store.server.cleanup()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own (a valid Postgres table prefix too)."""
    return f"t_{uuid.uuid4().hex[:10]}"


# -- PostgreSQL --------------------------------------------------------------------------


async def _answers(dsn: str) -> bool:
    import asyncpg

    try:
        con = await asyncpg.connect(dsn, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await con.close()
    return True


#: The default collations the shared-PostgreSQL tests run under (pytest ids).
PG_COLLATIONS = ("C", "en-US")

#: Keys that C (bytes) and en-US (case after letter) sort in different orders.
MIXED_CASE_KEYS = ("k:a", "k:B", "k:b", "k:A")


async def sorts_like_c(dsn: str) -> bool:
    """Whether the database's default collation sorts text as C does (byte order)."""
    import asyncpg

    con = await asyncpg.connect(dsn, timeout=10)
    try:
        same: bool = await con.fetchval(
            'SELECT array_agg(k ORDER BY k) = array_agg(k ORDER BY k COLLATE "C") FROM unnest($1::text[]) k',
            list(MIXED_CASE_KEYS),
        )
    finally:
        await con.close()
    return same


def _on_database(dsn: str, name: str) -> str:
    """``dsn`` with its database replaced by ``name``."""
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(dsn)._replace(path=f"/{name}"))


# How to make a database of each collation: the first that the server takes and that sorts
# as asked for is used (ICU needs PostgreSQL 15+ built with ICU; the libc locales need the
# server's operating system to have them).
_CREATE = {
    "C": ("TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'",),
    "en-US": (
        "TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'",
        "TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'",
        "TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'en_US.UTF-8' LC_CTYPE 'en_US.UTF-8'",
        "TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'en_US.utf8' LC_CTYPE 'en_US.utf8'",
    ),
}


async def create_database(dsn: str, collation: str) -> str:
    """A DSN on a new database of the server at ``dsn`` whose default collation is
    ``collation`` (a key of ``_CREATE``); a skip saying why when the server can make none.
    ``drop_database`` removes it."""
    import asyncpg

    name = f"idemsend_test_{collation.lower().replace('-', '_')}_{uuid.uuid4().hex[:10]}"
    tried = []
    for options in _CREATE[collation]:
        try:
            await pg_execute(dsn, f'CREATE DATABASE "{name}" {options}')
        except asyncpg.PostgresError as exc:
            tried.append(f"{options}: {exc}")
            continue
        if await sorts_like_c(_on_database(dsn, name)) == (collation == "C"):
            return _on_database(dsn, name)
        tried.append(f"{options}: made, but it sorts {'not ' if collation == 'C' else ''}like C")
        await pg_execute(dsn, f'DROP DATABASE "{name}"')
    pytest.skip(f"could not make a database with the {collation} collation on {dsn}: {'; '.join(tried)}")


async def drop_database(dsn: str, made: str) -> None:
    """Drop the database ``made`` (a DSN from ``create_database(dsn, …)``), its sessions ended."""
    import asyncpg

    name = urllib.parse.urlsplit(made).path.lstrip("/")
    try:
        await pg_execute(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except asyncpg.PostgresSyntaxError:  # PostgreSQL 12 has no FORCE
        await pg_execute(dsn, f'DROP DATABASE IF EXISTS "{name}"')


class PostgresDatabases:
    """The session's databases on one server, by default collation, each made (with a
    schema for the session's tables) when first asked for; ``close`` drops what it made.
    A database that already sorts as asked (the server's own, for C) is used as it is."""

    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn
        self._dsn: dict[str, str] = {}
        self._made: list[str] = []
        self._schemas: dict[str, str] = {}

    def dsn(self, collation: str) -> str:
        """A database whose default collation is ``collation``."""
        if collation not in self._dsn:
            if run_sync(sorts_like_c(self.server_dsn)) == (collation == "C"):
                self._dsn[collation] = self.server_dsn
            else:
                self._dsn[collation] = run_sync(create_database(self.server_dsn, collation))
                self._made.append(self._dsn[collation])
        return self._dsn[collation]

    def schema(self, collation: str) -> str:
        """The session's schema in that database."""
        if collation not in self._schemas:
            schema = f"idemsend_test_{uuid.uuid4().hex[:12]}"
            run_sync(pg_execute(self.dsn(collation), f'CREATE SCHEMA "{schema}"'))
            self._schemas[collation] = schema
        return self._schemas[collation]

    def store_url(self, collation: str) -> str:
        """That database, its tables made in the session's schema (``search_path``)."""
        return with_params(self.dsn(collation), search_path=self.schema(collation))

    def close(self) -> None:
        for collation, schema in self._schemas.items():
            run_sync(pg_execute(self._dsn[collation], f'DROP SCHEMA "{schema}" CASCADE'))
        for made in self._made:
            run_sync(drop_database(self.server_dsn, made))


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    """The session's PostgreSQL server: POSTGRES_DSN, else the local server if it answers,
    else a throwaway one; its databases by collation."""
    if not HAVE_ASYNCPG:
        pytest.skip(NO_ASYNCPG)
    server = None
    dsn = os.environ.get("POSTGRES_DSN")
    if not dsn:
        if run_sync(_answers(LOCAL_POSTGRES)):
            dsn = LOCAL_POSTGRES
        else:
            server = own_postgres()
            dsn = server.dsn
    databases = PostgresDatabases(dsn)
    try:
        yield databases
    finally:
        try:
            databases.close()
        finally:
            if server is not None:
                server.cleanup()


@pytest.fixture(scope="session", params=PG_COLLATIONS)
def postgres_collation(request: pytest.FixtureRequest) -> str:
    """The default collation of the database the test runs on (``C`` or ``en-US``)."""
    collation: str = request.param
    return collation


@pytest.fixture(scope="session")
def postgres_dsn(postgres_databases: PostgresDatabases, postgres_collation: str) -> str:
    """The session's PostgreSQL, on a database whose default collation is ``postgres_collation``."""
    return postgres_databases.dsn(postgres_collation)


@pytest.fixture(scope="session")
def postgres_schema(postgres_databases: PostgresDatabases, postgres_collation: str) -> str:
    """A schema of this session's own in that database, dropped at the end."""
    return postgres_databases.schema(postgres_collation)


@pytest.fixture(scope="session")
def postgres_store_url(postgres_databases: PostgresDatabases, postgres_collation: str) -> str:
    """The shared PostgreSQL, its tables made in the session's schema (``search_path``)."""
    return postgres_databases.store_url(postgres_collation)


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """The session's moto server (DynamoDB and every other service), on a loopback port."""
    if not HAVE_DYNAMODB:
        pytest.skip("the DynamoDB ledger's tests need aiobotocore and moto[server]: nox -s dynamodb")
    from harness.queues.sqs import MotoServer

    moto_env()
    with MotoServer() as moto:
        yield moto.url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that run over PostgreSQL get the ``postgres`` marker (``-m postgres``), over
    DynamoDB the ``dynamodb`` marker."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = {v for v in callspec.params.values() if isinstance(v, str)} if callspec is not None else set()
        names = set(getattr(item, "fixturenames", ()))
        if params & {"postgres", "postgres-en-US"} or names & {"postgres_dsn", "postgres_store_url"}:
            item.add_marker(pytest.mark.postgres)
        if "dynamodb" in params or "moto_url" in names:
            item.add_marker(pytest.mark.dynamodb)
