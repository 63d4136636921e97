"""ledger_from_url: each scheme makes the ledger it names (on real Redis, Cluster and
PostgreSQL where there is one to talk to); unknown or unusable URLs are ConfigErrors
without the password."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection

from idemsend import ConfigError
from idemsend._errors import MissingExtraError
from idemsend.ledger import Claimed, Ledger, MemoryLedger, RedisLedger, ledger_from_url
from idemsend.ledger._url import _SCHEMES
from idemsend.testing import RedisServer

from .conftest import HAVE_ASYNCPG, NO_ASYNCPG

pytestmark = pytest.mark.anyio

P1 = b'{"to":["a"]}'
SECRET = "hunter2-secret"


async def round_trip(ledger: Ledger) -> None:
    """The ledger works: claim, complete, read back."""
    claim = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint="fp", token="t", lease=30)
    assert isinstance(claim, Claimed) and claim.fresh
    assert await ledger.complete(key="k", token="t", response={"id": "em_1"}) == "ok"
    record = await ledger.get("k")
    assert record is not None and record.state == "done" and record.response == {"id": "em_1"}


async def test_memory_url_makes_a_memory_ledger_with_its_options() -> None:
    ledger = ledger_from_url("memory://", retention=3600, max_records=10)
    assert isinstance(ledger, MemoryLedger) and ledger.retention == 3600 and ledger.max_records == 10
    await round_trip(ledger)
    assert isinstance(ledger_from_url("MEMORY://"), MemoryLedger)


def test_a_memory_url_takes_no_host_or_path() -> None:
    with pytest.raises(ConfigError, match="memory:// ledger URL takes no host or path"):
        ledger_from_url("memory://somewhere/else")


async def test_redis_url_makes_a_redis_ledger_on_that_server(redis_url: str) -> None:
    prefix = uuid.uuid4().hex
    ledger = ledger_from_url(redis_url, prefix=prefix, retention=3600, socket_timeout=2)
    try:
        assert isinstance(ledger, RedisLedger) and not ledger._cluster
        assert ledger.prefix == prefix and ledger.retention == 3600
        await round_trip(ledger)
        assert await ledger.client.exists(f"{prefix}:rec:{{k}}") == 1
    finally:
        await ledger.aclose()


async def test_rediss_url_makes_a_tls_redis_ledger() -> None:
    ledger = ledger_from_url(f"rediss://:{SECRET}@redis.example.com:6380/0")
    try:
        assert isinstance(ledger, RedisLedger) and not ledger._cluster
        pool = ledger.client.connection_pool
        assert issubclass(pool.connection_class, SSLConnection) and pool.connection_kwargs["port"] == 6380
    finally:
        await ledger.aclose()


@pytest.mark.redis
async def test_unix_url_makes_a_redis_ledger_over_a_socket() -> None:
    server = RedisServer()
    socket = server.dir / "redis.sock"
    server.extra = ["--unixsocket", str(socket), "--unixsocketperm", "700"]
    with server:
        ledger = ledger_from_url(f"unix://{socket}?db=0", prefix=uuid.uuid4().hex)
        try:
            assert isinstance(ledger, RedisLedger)
            assert issubclass(ledger.client.connection_pool.connection_class, UnixDomainSocketConnection)
            await round_trip(ledger)
        finally:
            await ledger.aclose()


async def test_redis_cluster_url_makes_a_cluster_ledger(cluster_url: str) -> None:
    url = cluster_url.replace("redis://", "redis+cluster://", 1)
    ledger = ledger_from_url(url, prefix=uuid.uuid4().hex)
    try:
        assert isinstance(ledger, RedisLedger) and ledger._cluster
        assert isinstance(ledger.client, RedisCluster)
        await round_trip(ledger)
        await ledger.start()  # every primary answers
    finally:
        await ledger.aclose()


async def test_rediss_cluster_url_makes_a_tls_cluster_ledger() -> None:
    ledger = ledger_from_url("rediss+cluster://redis.example.com:7000")
    try:
        assert isinstance(ledger, RedisLedger) and ledger._cluster and isinstance(ledger.client, RedisCluster)
        assert ledger.client.nodes_manager.connection_kwargs.get("connection_class") is SSLConnection
    finally:
        await ledger.aclose()


@pytest.mark.parametrize("scheme", ["mysql", "http", "redis+sentinel"])
def test_an_unknown_scheme_is_a_config_error_naming_the_known_ones(scheme: str) -> None:
    with pytest.raises(ConfigError) as info:
        ledger_from_url(f"{scheme}://user:{SECRET}@db.example.com/0?password={SECRET}")
    text = str(info.value)
    assert f"unknown ledger URL scheme {scheme!r}" in text
    for known in ("memory://", "redis://", "rediss://", "unix://", "redis+cluster://"):
        assert known in text
    assert SECRET not in text and "db.example.com" in text


needs_asyncpg = pytest.mark.skipif(not HAVE_ASYNCPG, reason=NO_ASYNCPG)


@needs_asyncpg
@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "POSTGRESQL"])
def test_postgres_urls_make_a_postgres_ledger_named_by_the_prefix(scheme: str) -> None:
    from idemsend.ledger import PostgresLedger

    url = f"{scheme}://app:{SECRET}@db.example.com:5432/idemsend?sslmode=require"
    ledger = ledger_from_url(url, retention=3600, timeout=2)
    assert isinstance(ledger, PostgresLedger) and ledger.table == "idemsend_ledger"
    assert ledger.jobs_table == "idemsend_ledger_jobs" and ledger.retention == 3600 and ledger.timeout == 2
    assert not ledger.create_table
    assert SECRET not in repr(ledger) and "db.example.com" in repr(ledger)
    # the prefix names the table (lower case, "-" read as "_"); table= or ?table= win over it
    assert ledger_from_url(url, prefix="Billing-EU").table == "billing_eu_ledger"  # type: ignore[attr-defined]
    assert ledger_from_url(url, prefix="x", table="app.sends").table == "app.sends"  # type: ignore[attr-defined]
    assert ledger_from_url(url + "&table=app.sends", prefix="x").table == "app.sends"  # type: ignore[attr-defined]


@needs_asyncpg
def test_postgres_url_parameters_of_the_ledger_are_read_and_taken_out() -> None:
    from idemsend.ledger import PostgresLedger

    ledger = ledger_from_url(
        f"postgresql://app:{SECRET}@db.example.com/idemsend?create_table=true&statement_cache_size=0&sslmode=disable"
    )
    assert isinstance(ledger, PostgresLedger) and ledger.create_table
    assert ledger._db.options["statement_cache_size"] == 0
    assert ledger._db.dsn is not None and "sslmode=disable" in ledger._db.dsn
    assert "statement_cache_size" not in ledger._db.dsn and "create_table" not in ledger._db.dsn  # not sent on
    explicit = PostgresLedger.from_url("postgresql://db.example.com/x?create_table=true", create_table=False)
    assert not explicit.create_table  # a keyword argument wins over the DSN


@needs_asyncpg
@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("postgresql://db.example.com/x", {"prefix": "9lives"}, "makes no Postgres table name"),
        ("postgresql://db.example.com/x", {"prefix": "a" * 40}, "makes no Postgres table name"),
        ("postgresql://db.example.com/x", {"table": 'x"; DROP TABLE users; --'}, "invalid ledger table name"),
        ("postgresql://db.example.com/x?table=Sends", {}, "invalid ledger table name"),
        ("postgresql://db.example.com/x?create_table=maybe", {}, "create_table"),
        ("postgresql://db.example.com/x?statement_cache_size=none", {}, "statement_cache_size"),
    ],
)
def test_postgres_urls_the_ledger_cannot_use_are_config_errors(url: str, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ledger_from_url(url, **options)


@needs_asyncpg
def test_a_postgres_url_with_a_bad_port_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError, match="invalid ledger URL") as info:
        ledger_from_url(f"postgresql://app:{SECRET}@localhost:notaport/x")
    assert SECRET not in str(info.value)


@pytest.mark.skipif(HAVE_ASYNCPG, reason="asyncpg is installed here")
def test_a_postgres_url_without_asyncpg_names_the_extra() -> None:
    with pytest.raises(MissingExtraError, match=r"pip install 'idemsend\[postgres\]'"):
        ledger_from_url("postgresql://db.example.com/x")


async def test_postgres_url_makes_a_working_ledger(postgres_store_url: str, prefix: str) -> None:
    ledger = ledger_from_url(postgres_store_url, prefix=prefix, create_table=True)
    try:
        await ledger.start()
        await round_trip(ledger)
    finally:
        await ledger.aclose()


def test_a_url_without_a_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a ledger URL") as info:
        ledger_from_url(f"localhost:{SECRET}")
    assert SECRET not in str(info.value)


def test_a_url_the_client_cannot_use_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError, match="invalid ledger URL") as info:
        ledger_from_url(f"redis://:{SECRET}@localhost:notaport/0")
    assert SECRET not in str(info.value) and info.value.__cause__ is None


def test_options_a_ledger_does_not_take_are_a_type_error() -> None:
    with pytest.raises(TypeError):
        ledger_from_url("memory://", socket_timeout=1)


def test_every_scheme_has_one_entry_in_the_registry() -> None:
    """A new ledger adds its schemes to one table (the Postgres ledger has two entries)."""
    assert sorted(_SCHEMES) == [
        "dynamodb", "memory", "postgres", "postgresql", "redis", "redis+cluster", "rediss", "rediss+cluster", "sqlite",
        "unix",
    ]


# -- sqlite:/// ---------------------------------------------------------------------------------


async def test_sqlite_urls_make_a_working_ledger_on_that_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from idemsend.ledger import SQLiteLedger

    absolute = ledger_from_url(f"sqlite:///{tmp_path}/abs.db", prefix="my-app")
    assert isinstance(absolute, SQLiteLedger) and absolute.path == f"{tmp_path}/abs.db"
    assert absolute.table == "my_app_ledger"  # named by the prefix, as for PostgreSQL
    await round_trip(absolute)
    await absolute.aclose()
    monkeypatch.chdir(tmp_path)
    relative = ledger_from_url("sqlite:///rel%20name.db?synchronous=normal&timeout=2.5&table=mine&retention=90000")
    assert isinstance(relative, SQLiteLedger) and relative.path == f"{tmp_path}/rel name.db"
    assert (relative.synchronous, relative.timeout, relative.table, relative.retention) == (
        "normal", 2.5, "mine", 90000.0
    )
    await round_trip(relative)
    await relative.aclose()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite://host/ledger.db", "takes no host"),
        ("sqlite://", "needs a file path"),
        ("sqlite:///", "needs a file path"),
        ("sqlite:///l.db?mode=ro", "unknown sqlite:// ledger URL parameter 'mode'"),
        ("sqlite:///l.db?timeout=soon", "timeout in the ledger URL"),
        ("sqlite:///l.db?synchronous=off", "synchronous must be"),
        ("sqlite:///l.db?table=Bad-Name", "invalid SQLite ledger table name"),
    ],
)
def test_sqlite_urls_the_ledger_cannot_use_are_config_errors(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ledger_from_url(url)


def test_a_sqlite_prefix_that_makes_no_table_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="the prefix '9 lives' makes no SQLite table name"):
        ledger_from_url("sqlite:///l.db", prefix="9 lives")
