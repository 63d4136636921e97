"""ledger_from_url: each scheme makes the ledger it names (on real Redis and Cluster where
there is one to talk to); unknown or unusable URLs are ConfigErrors without the password."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection

from idemsend import ConfigError
from idemsend.ledger import Claimed, Ledger, MemoryLedger, RedisLedger, ledger_from_url
from idemsend.ledger._url import _SCHEMES
from idemsend.testing import RedisServer

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
        assert pool.connection_class is SSLConnection and pool.connection_kwargs["port"] == 6380
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
            assert ledger.client.connection_pool.connection_class is UnixDomainSocketConnection
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


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "POSTGRESQL"])
def test_postgres_urls_are_reserved_for_the_postgres_ledger(scheme: str) -> None:
    with pytest.raises(ConfigError, match="Postgres ledger is not available yet") as info:
        ledger_from_url(f"{scheme}://app:{SECRET}@db.example.com:5432/idemsend")
    assert SECRET not in str(info.value)


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
    """A new ledger adds its schemes to one table (the Postgres ledger: two entries)."""
    assert sorted(_SCHEMES) == [
        "memory", "postgres", "postgresql", "redis", "redis+cluster", "rediss", "rediss+cluster", "unix",
    ]
