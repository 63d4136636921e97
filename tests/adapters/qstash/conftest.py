"""Stores for the durable replay guard tests: the ledger's store, which the guard shares.

``guard_store`` (parametrized ``redis``, ``cluster``, ``postgres``, ``sqlite``): a shared server and
names of this test's own (a fresh Redis key prefix; PostgreSQL tables in this session's
schema, dropped at its end). ``own_guard_store`` (``redis``, ``postgres``): a throwaway
server for this test alone, so it may stop it. PostgreSQL is skipped, saying why, where
asyncpg is missing (``pip install 'idemsend[postgres]'``); its tests get the ``postgres``
marker, the Redis ones ``redis``, the Cluster ones ``cluster``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from idemsend.ledger import Ledger, ledger_from_url
from idemsend.testing import RedisServer
from tests.ledger.conftest import (
    HAVE_ASYNCPG,
    LOCAL_POSTGRES,
    NO_ASYNCPG,
    LockedFile,
    _answers,
    own_postgres,
    pg_execute,
    run_sync,
    with_params,
)


@dataclass
class GuardStore:
    """Where a test's ledgers (and so their default replay guards) live."""

    kind: str
    url: str
    name: str = field(default_factory=lambda: f"t_{uuid.uuid4().hex[:10]}")
    server: Any = field(default=None, repr=False)

    def ledger(self, **options: Any) -> Ledger:
        """A new ledger over the store: a new client or pool, as in a new process."""
        if self.kind == "postgres":
            return ledger_from_url(self.url, table=f"{self.name}_ledger", create_table=True, **options)
        url = "redis+cluster://" + self.url.removeprefix("redis://") if self.kind == "cluster" else self.url
        return ledger_from_url(url, prefix=self.name, **options)


@pytest.fixture(scope="session")
def qstash_postgres_url() -> Iterator[str]:
    """The local PostgreSQL (or a throwaway one), in a schema of this session's own."""
    import os

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
    schema = f"idemsend_qstash_{uuid.uuid4().hex[:12]}"
    run_sync(pg_execute(dsn, f'CREATE SCHEMA "{schema}"'))
    try:
        yield with_params(dsn, search_path=schema)
    finally:
        run_sync(pg_execute(dsn, f'DROP SCHEMA "{schema}" CASCADE'))
        if server is not None:
            server.cleanup()


@pytest.fixture(params=["redis", "cluster", "postgres", "sqlite"])
def guard_store(request: pytest.FixtureRequest) -> GuardStore:
    """A shared store of this kind, with names of this test's own."""
    kind = request.param
    if kind == "redis":
        return GuardStore(kind, request.getfixturevalue("redis_url"))
    if kind == "cluster":
        return GuardStore(kind, request.getfixturevalue("cluster_url"))
    if kind == "sqlite":  # a file of this test's own, shared by every "process" of the test
        return GuardStore(kind, f"sqlite:///{request.getfixturevalue('tmp_path')}/ledger.db")
    return GuardStore(kind, request.getfixturevalue("qstash_postgres_url"))


@pytest.fixture(params=["redis", "postgres", "sqlite"])
def own_guard_store(request: pytest.FixtureRequest) -> Iterator[GuardStore]:
    """A store on a server of this test's own (``store.server.stop()`` takes it down; for
    SQLite, another process takes the file's write lock and holds it)."""
    if request.param == "sqlite":
        path = f"{request.getfixturevalue('tmp_path')}/ledger.db"
        server: Any = LockedFile(path)
        store = GuardStore("sqlite", f"sqlite:///{path}", server=server)
    elif request.param == "redis":
        server = RedisServer().start()
        store = GuardStore("redis", server.url, server=server)
    else:
        server = own_postgres()
        store = GuardStore("postgres", server.dsn, server=server)
    try:
        yield store
    finally:
        server.cleanup()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests by the store they run on (``-m postgres``, ``-m "not cluster"``)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("guard_store", callspec.params.get("own_guard_store")) if callspec else None
        if param == "postgres":
            item.add_marker(pytest.mark.postgres)
        elif param == "cluster":
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.redis)
        elif param == "redis":
            item.add_marker(pytest.mark.redis)
