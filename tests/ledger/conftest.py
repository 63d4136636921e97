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
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pytest

from idemsend.ledger import Ledger, ledger_from_url
from idemsend.testing import PostgresServer, RedisServer

#: Whether the Postgres ledger can run here (its client library is installed).
HAVE_ASYNCPG = importlib.util.find_spec("asyncpg") is not None
NO_ASYNCPG = "asyncpg is not installed: pip install 'idemsend[postgres]' (nox -s postgres)"

#: The stores the process tests run on (pytest ids; "redis" also gets the `redis` marker,
#: "postgres" the `postgres` marker).
STORES = ["redis", "postgres"] if HAVE_ASYNCPG else ["redis"]

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
        if self.kind == "postgres":
            if "socket_timeout" in options:
                options["timeout"] = options.pop("socket_timeout")
            options.setdefault("create_table", True)
        return ledger_from_url(self.url, prefix=prefix, **options)

    def worker_args(self) -> list[str]:
        """tests/workers/send_jobs.py's flags for this store."""
        if self.kind == "redis":
            return ["--redis", self.url]
        return ["--ledger", with_params(self.url, create_table="true")]

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


def _make_shared(kind: str, request: pytest.FixtureRequest) -> Store:
    if kind == "redis":
        return Store("redis", request.getfixturevalue("redis_url"))
    if kind == "postgres":
        return Store("postgres", request.getfixturevalue("postgres_store_url"))
    raise AssertionError(kind)


def _make_own(kind: str, persistent: bool) -> Store:
    if kind == "redis":
        server = RedisServer(appendonly=persistent).start()
        return Store("redis", server.url, persistent=persistent, server=server)
    if kind == "postgres":
        pg = own_postgres()
        if not persistent:
            run_sync(pg_execute(pg.dsn, unlogged_tables("idemsend_ledger")))
        return Store("postgres", pg.dsn, persistent=persistent, server=pg)
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


@pytest.fixture(params=STORES)
def shared_store(request: pytest.FixtureRequest) -> Store:
    """The session's store of this kind (shared: no stop or restart); use a fresh prefix."""
    return _make_shared(request.param, request)


@pytest.fixture(params=STORES)
def own_store(request: pytest.FixtureRequest) -> Iterator[Callable[..., Store]]:
    """``own_store(persistent=...)``: a server of this kind for this test alone."""
    made: list[Store] = []

    def make(*, persistent: bool) -> Store:
        store = _make_own(request.param, persistent)
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


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A PostgreSQL for the session: POSTGRES_DSN, else the local server if it answers,
    else a throwaway one."""
    if not HAVE_ASYNCPG:
        pytest.skip(NO_ASYNCPG)
    explicit = os.environ.get("POSTGRES_DSN")
    if explicit:
        yield explicit
        return
    if run_sync(_answers(LOCAL_POSTGRES)):
        yield LOCAL_POSTGRES
        return
    server = own_postgres()
    try:
        yield server.dsn
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def postgres_schema(postgres_dsn: str) -> Iterator[str]:
    """A schema of this session's own on the shared PostgreSQL, dropped at the end."""
    schema = f"idemsend_test_{uuid.uuid4().hex[:12]}"
    run_sync(pg_execute(postgres_dsn, f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        run_sync(pg_execute(postgres_dsn, f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(scope="session")
def postgres_store_url(postgres_dsn: str, postgres_schema: str) -> str:
    """The shared PostgreSQL, its tables made in the session's schema (``search_path``)."""
    return with_params(postgres_dsn, search_path=postgres_schema)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that run over PostgreSQL get the ``postgres`` marker (``-m postgres``)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = {v for v in callspec.params.values() if isinstance(v, str)} if callspec is not None else set()
        names = set(getattr(item, "fixturenames", ()))
        if "postgres" in params or names & {"postgres_dsn", "postgres_store_url"}:
            item.add_marker(pytest.mark.postgres)
