"""The ledger state machine, run against MemoryLedger, RedisLedger and a 3-node Redis Cluster."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from idemsend import (
    ConfigError,
    Engine,
    FatalError,
    Job,
    MismatchError,
    Provider,
    RetryableError,
    RetryPolicy,
    StaleReplayError,
    UnstableKeyError,
)
from idemsend._body import canonical_body, fingerprint
from idemsend.ledger import (
    Busy,
    Claimed,
    Conflict,
    Done,
    Failed,
    Ledger,
    LedgerUnavailableError,
    MemoryLedger,
    RedisLedger,
    Unstable,
)
from idemsend.ledger._redis import _Batcher
from idemsend.testing import MockProvider, RedisServer

pytestmark = pytest.mark.anyio

_ids = itertools.count()


@pytest.fixture(params=["memory", "redis", "cluster"])
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    prefix = f"t{next(_ids)}-{uuid.uuid4().hex[:6]}"
    made: Ledger
    if request.param == "memory":
        made = MemoryLedger()
    elif request.param == "redis":
        made = RedisLedger.from_url(request.getfixturevalue("redis_url"), prefix=prefix)
    else:
        made = RedisLedger.from_url(request.getfixturevalue("cluster_url"), prefix=prefix, cluster=True)
    yield made
    await made.aclose()


P1, P2 = b'{"to":["a"]}', b'{"to":["b"]}'
F1, F2 = fingerprint(P1), fingerprint(P2)


async def lose(ledger: Ledger, key: str) -> None:
    """What a restart without persistence, an eviction or retention does to one record."""
    if isinstance(ledger, MemoryLedger):
        ledger._settled.pop(key, None)
        ledger._flight.pop(key, None)
    else:
        assert isinstance(ledger, RedisLedger)
        await ledger.client.delete(ledger.record_key(key))


async def test_claim_complete_then_done(ledger: Ledger) -> None:
    claim = await ledger.claim("k", "j1", P1, F1, "tok-a", 30)
    assert isinstance(claim, Claimed) and claim.fresh and claim.payload == P1 and claim.fingerprint == F1
    assert abs(claim.first_sent_at - time.time()) < 5 and claim.age == 0
    assert isinstance(await ledger.claim("k", "j1", P1, F1, "tok-b", 30), Busy)
    assert await ledger.complete("k", "tok-b", {"id": "x"}) == "superseded"
    assert await ledger.complete("k", "tok-a", {"id": "em_1", "status": 200}) == "ok"
    assert await ledger.claim("k", "j1", P1, F1, "tok-c", 30) == Done({"id": "em_1", "status": 200}, F1)
    record = await ledger.get("k")
    assert record is not None and record.state == "done" and record.job_id == "j1" and record.fingerprint == F1
    assert record.response == {"id": "em_1", "status": 200} and record.lease_until is None
    assert await ledger.get("missing") is None
    # a done record is settled for good: no token can complete, fail, renew or release it
    assert await ledger.complete("k", "tok-a", {"id": "again"}) == "superseded"
    assert await ledger.fail("k", "tok-a", "X", "late") == "superseded"
    assert await ledger.renew("k", "tok-a", 30) == "superseded"
    assert await ledger.release("k", "tok-a", forget=True) == "superseded"
    record = await ledger.get("k")
    assert record is not None and record.state == "done" and record.response == {"id": "em_1", "status": 200}


async def test_expired_lease_is_taken_over_with_the_frozen_body(ledger: Ledger) -> None:
    first = await ledger.claim("k", "j1", P1, F1, "tok-a", 0.2)
    assert isinstance(first, Claimed)
    await asyncio.sleep(0.3)
    second = await ledger.claim("k", "j1", P2, F2, "tok-b", 30)  # the body drifted meanwhile
    assert isinstance(second, Claimed) and not second.fresh
    assert (second.payload, second.fingerprint) == (P1, F1)
    assert abs(second.first_sent_at - first.first_sent_at) < 0.01
    assert 0.25 < second.age < 5
    before = await ledger.get("k")
    # the worker whose lease ran out cannot overwrite what tok-b owns now: "superseded"
    assert await ledger.complete("k", "tok-a", {"id": "stale"}) == "superseded"
    assert await ledger.fail("k", "tok-a", "X", "stale") == "superseded"
    assert await ledger.renew("k", "tok-a", 30) == "superseded"
    assert await ledger.release("k", "tok-a") == "superseded"
    assert await ledger.release("k", "tok-a", forget=True) == "superseded"
    assert await ledger.get("k") == before  # untouched: still tok-b's, same lease
    assert await ledger.complete("k", "tok-b", {"id": "em_2"}) == "ok"
    # Done carries the fingerprint of what was sent (the frozen body), not this claim's
    assert await ledger.claim("k", "j1", P2, F2, "tok-c", 30) == Done({"id": "em_2"}, F1)


async def test_renew_keeps_the_lease(ledger: Ledger) -> None:
    await ledger.claim("k", "j1", P1, F1, "tok-a", 0.3)
    await asyncio.sleep(0.15)
    assert await ledger.renew("k", "tok-a", 5) == "ok"
    await asyncio.sleep(0.3)
    busy = await ledger.claim("k", "j1", P1, F1, "tok-b", 30)
    assert isinstance(busy, Busy) and 3 < busy.retry_after <= 5


async def test_release_keeps_the_record_and_frees_the_lease(ledger: Ledger) -> None:
    await ledger.claim("k", "j1", P1, F1, "tok-a", 30)
    assert await ledger.release("k", "tok-a") == "ok"
    again = await ledger.claim("k", "j1", P2, F2, "tok-b", 30)
    assert isinstance(again, Claimed) and not again.fresh and again.payload == P1
    record = await ledger.get("k")
    assert record is not None and record.state == "in_flight" and record.lease_until is not None


async def test_release_with_forget_deletes_the_record(ledger: Ledger) -> None:
    """A fresh claim that provably sent nothing (a 401, a redirect) leaves no trace:
    no frozen body and no first-sent time to start the stale clock."""
    await ledger.claim("k", "j1", P1, F1, "tok-a", 30)
    assert await ledger.release("k", "tok-a", forget=True) == "ok"
    assert await ledger.get("k") is None
    again = await ledger.claim("k", "j1", P2, F2, "tok-b", 30)
    assert isinstance(again, Claimed) and again.fresh and again.payload == P2 and again.age == 0
    assert await ledger.release("k", "tok-b", forget=True) == "ok"
    assert await ledger.release("k", "tok-b", forget=True) == "missing"


async def test_fail_is_terminal(ledger: Ledger) -> None:
    await ledger.claim("k", "j1", P1, F1, "tok-a", 30)
    assert await ledger.fail("k", "tok-a", "IDEMPOTENCY_MISMATCH", "nope") == "ok"
    assert await ledger.claim("k", "j1", P1, F1, "tok-b", 30) == Failed("IDEMPOTENCY_MISMATCH", "nope")
    record = await ledger.get("k")
    assert record is not None
    assert (record.state, record.code, record.message) == ("fatal", "IDEMPOTENCY_MISMATCH", "nope")
    assert await ledger.fail("k", "tok-a", "OTHER", "again") == "superseded"


async def test_settling_a_record_that_is_gone_says_missing(ledger: Ledger) -> None:
    """No record at all (a restart without persistence, an eviction, retention) is
    "missing", not "superseded", and fail/renew/release write nothing."""
    assert await ledger.fail("never", "tok-a", "X", "y") == "missing"
    assert await ledger.renew("never", "tok-a", 30) == "missing"
    assert await ledger.release("never", "tok-a") == "missing"
    assert await ledger.release("never", "tok-a", forget=True) == "missing"
    assert await ledger.get("never") is None
    await ledger.claim("k", "j1", P1, F1, "tok-a", 30)
    await lose(ledger, "k")
    assert await ledger.renew("k", "tok-a", 30) == "missing"
    assert await ledger.fail("k", "tok-a", "X", "y") == "missing"
    assert await ledger.release("k", "tok-a") == "missing"
    assert await ledger.get("k") is None


async def test_complete_recreates_a_lost_record(ledger: Ledger) -> None:
    """The send happened but the store lost the record: complete writes a done record
    anyway ("recreated"), so a replay after the provider's window is not sent again."""
    await ledger.claim("k", "j1", P1, F1, "tok-a", 30)
    await lose(ledger, "k")
    assert await ledger.complete("k", "tok-a", {"id": "em_1", "status": 200}) == "recreated"
    record = await ledger.get("k")
    assert record is not None and record.state == "done" and record.response == {"id": "em_1", "status": 200}
    assert abs(record.first_sent_at - time.time()) < 5
    # every later claim of the key is answered from the ledger (fingerprint unknown: "")
    assert await ledger.claim("k", "j1", P1, F1, "tok-b", 30) == Done({"id": "em_1", "status": 200}, "")
    assert await ledger.claim("k", "j9", P2, F2, "tok-c", 30) == Done({"id": "em_1", "status": 200}, "")
    assert await ledger.complete("k", "tok-a", {"id": "again"}) == "superseded"


async def test_clear_removes_only_fatal_records(ledger: Ledger) -> None:
    await ledger.claim("fatal", "j1", P1, F1, "tok-a", 30)
    await ledger.fail("fatal", "tok-a", "INVALID", "bad address")
    await ledger.claim("done", "j2", P1, F1, "tok-b", 30)
    await ledger.complete("done", "tok-b", {"id": "em_1"})
    await ledger.claim("flight", "j3", P1, F1, "tok-c", 30)
    assert await ledger.clear("done") is False  # clearing it would allow a double send
    assert await ledger.clear("flight") is False
    assert await ledger.clear("nothing") is False
    assert await ledger.clear("fatal") is True
    assert await ledger.clear("fatal") is False
    assert await ledger.get("fatal") is None
    assert [(r.state if r else None) for r in [await ledger.get("done"), await ledger.get("flight")]] == [
        "done", "in_flight",
    ]
    # the job runs again after its fatal record is cleared
    again = await ledger.claim("fatal", "j1", P1, F1, "tok-d", 30)
    assert isinstance(again, Claimed) and again.fresh


async def test_unstable_key_is_reported_and_leaves_nothing_claimed(ledger: Ledger) -> None:
    assert isinstance(await ledger.claim("key-1", "j1", P1, F1, "tok-a", 30), Claimed)
    assert await ledger.claim("key-2", "j1", P1, F1, "tok-b", 30) == Unstable("key-1")
    # key-2 was not left in flight: another job can take it at once
    claim = await ledger.claim("key-2", "j2", P1, F1, "tok-c", 30)
    assert isinstance(claim, Claimed) and claim.fresh


async def test_same_key_other_job_other_body_is_a_conflict(ledger: Ledger) -> None:
    await ledger.claim("k", "j1", P1, F1, "tok-a", 30)
    await ledger.complete("k", "tok-a", {"id": "em_1"})
    assert await ledger.claim("k", "j2", P2, F2, "tok-b", 30) == Conflict(F1)
    # same body from another job is the same send: answered from the ledger
    assert await ledger.claim("k", "j3", P1, F1, "tok-c", 30) == Done({"id": "em_1"}, F1)


async def test_records_are_kept_for_retention_only(request: pytest.FixtureRequest) -> None:
    memory = MemoryLedger(retention=0.3)
    redis = RedisLedger.from_url(request.getfixturevalue("redis_url"), prefix=uuid.uuid4().hex, retention=0.3)
    for led in (memory, redis):
        await led.claim("k", "j", P1, F1, "t", 30)
        await led.complete("k", "t", {"id": "x"})
    await asyncio.sleep(0.45)
    for led in (memory, redis):
        assert await led.get("k") is None
        assert isinstance(await led.claim("k", "j", P1, F1, "t2", 30), Claimed)
    ttl = await redis.client.pttl(redis.record_key("k"))
    assert 0 < ttl <= 300
    await redis.aclose()


# -- clock skew: the age of an unfinished send is measured on the ledger's clock ---------


async def test_memory_ledger_age_is_on_its_own_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.0]
    ledger = MemoryLedger(clock=lambda: now[0])
    first = await ledger.claim("k", "j1", P1, F1, "tok-a", 30)
    assert isinstance(first, Claimed) and first.first_sent_at == 1_000_000.0 and first.age == 0
    await ledger.release("k", "tok-a")
    now[0] += 7200
    real = time.time()
    for i, skew in enumerate((-10 * 3600, 0, 10 * 3600)):  # the worker's clock is hours off, either way
        monkeypatch.setattr(time, "time", lambda skew=skew: real + skew)
        again = await ledger.claim("k", "j1", P1, F1, f"tok-{i}", 30)
        assert isinstance(again, Claimed) and not again.fresh
        assert again.first_sent_at == 1_000_000.0 and again.age == 7200
        assert await ledger.release("k", f"tok-{i}") == "ok"
    monkeypatch.undo()
    now[0] -= 9000  # a ledger clock that went backwards never gives a negative age
    behind = await ledger.claim("k", "j1", P1, F1, "tok-x", 30)
    assert isinstance(behind, Claimed) and behind.age == 0


@pytest.mark.parametrize("flavour", ["redis", "cluster"])
async def test_redis_ledger_age_is_on_the_servers_clock(
    flavour: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record first claimed two hours ago (by Redis TIME) reports age ~7200 s, whatever
    the calling worker's clock says."""
    if flavour == "redis":
        ledger = RedisLedger.from_url(request.getfixturevalue("redis_url"), prefix=uuid.uuid4().hex)
    else:
        ledger = RedisLedger.from_url(request.getfixturevalue("cluster_url"), prefix=uuid.uuid4().hex, cluster=True)
    try:
        await ledger.claim("k", "j1", P1, F1, "tok-a", 30)
        await ledger.release("k", "tok-a")
        seconds, micros = await ledger.client.time()
        server_ms = seconds * 1000 + micros // 1000
        await ledger.client.hset(ledger.record_key("k"), "first", str(server_ms - 7_200_000))
        real = time.time()
        for i, skew in enumerate((-10 * 3600, 0, 10 * 3600)):
            monkeypatch.setattr(time, "time", lambda skew=skew: real + skew)
            again = await ledger.claim("k", "j1", P1, F1, f"tok-{i}", 30)
            assert isinstance(again, Claimed) and not again.fresh
            assert 7200 <= again.age < 7210, again
            assert abs(again.first_sent_at - (server_ms / 1000 - 7200)) < 0.01
            monkeypatch.undo()
            await ledger.release("k", f"tok-{i}")
        # a clock that ran backwards (a first time in the future) never gives a negative age
        await ledger.client.hset(ledger.record_key("k"), "first", str(server_ms + 3_600_000))
        ahead = await ledger.claim("k", "j1", P1, F1, "tok-x", 30)
        assert isinstance(ahead, Claimed) and ahead.age == 0
    finally:
        await ledger.aclose()


async def test_engine_judges_staleness_by_the_ledgers_clock(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown outcome first sent 23.5 h ago (Redis TIME) is stale (window 24 h, margin
    1 h) even for a worker whose clock is 10 h behind: nothing is resent."""
    ledger = RedisLedger.from_url(redis_url, prefix=uuid.uuid4().hex)
    key = "welcome:u1:j1"
    async with MockProvider() as p:
        await ledger.claim(key, "j1", canonical_body(BODY), fingerprint(canonical_body(BODY)), "crashed", 30)
        await ledger.release(key, "crashed")  # the worker died with the outcome unknown
        seconds, _ = await ledger.client.time()
        await ledger.client.hset(ledger.record_key(key), "first", str((seconds - int(23.5 * 3600)) * 1000))
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - 10 * 3600)
        async with engine_for(p, ledger) as e:
            with pytest.raises(StaleReplayError):
                await e.send(Job("j1", {"user_id": "u1"}), BODY)
        monkeypatch.undo()
        assert p.stats.requests == 0
    check = RedisLedger.from_url(redis_url, prefix=ledger.prefix)
    record = await check.get(key)
    await check.aclose()
    assert record is not None and record.state == "fatal" and record.code == "STALE_REPLAY"


# -- settling after the store lost the record, or after another worker took it over -----


async def test_flushall_then_complete_recreates_and_a_late_worker_is_superseded() -> None:
    with RedisServer() as server:
        ledger = RedisLedger.from_url(server.url, prefix="p")
        try:
            await ledger.claim("k", "j1", P1, F1, "tok-a", 30)
            await ledger.client.flushall()  # what a restart without persistence leaves
            assert await ledger.complete("k", "tok-a", {"id": "em_1"}) == "recreated"
            record = await ledger.get("k")
            assert record is not None and record.state == "done" and record.response == {"id": "em_1"}
            assert 0 < await ledger.client.pttl(ledger.record_key("k")) <= ledger.retention * 1000
            assert await ledger.claim("k", "j1", P1, F1, "tok-b", 30) == Done({"id": "em_1"}, "")

            # the lease runs out, another worker claims: the first one is superseded
            await ledger.claim("k2", "j2", P1, F1, "tok-a", 0.2)
            await asyncio.sleep(0.3)
            assert isinstance(await ledger.claim("k2", "j2", P1, F1, "tok-b", 30), Claimed)
            before = await ledger.client.hgetall(ledger.record_key("k2"))
            assert await ledger.complete("k2", "tok-a", {"id": "late"}) == "superseded"
            assert await ledger.client.hgetall(ledger.record_key("k2")) == before
        finally:
            await ledger.aclose()


# -- start(): is the Redis fit to be a ledger? ----------------------------------------------

LEDGER_LOG = "idemsend.ledger"


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "volatile-ttl"])
async def test_start_refuses_a_redis_that_evicts(policy: str) -> None:
    with RedisServer(appendonly=True, extra=["--maxmemory-policy", policy, "--maxmemory", "100mb"]) as server:
        ledger = RedisLedger.from_url(server.url)
        with pytest.raises(ConfigError) as info:
            await ledger.start()
        text = str(info.value)
        assert f"maxmemory-policy {policy}" in text and "noeviction" in text and "allow_eviction=True" in text
        assert "double send" in text and "maxmemory 104857600" in text and f"127.0.0.1:{server.port}" in text
        # refused: not marked checked, so a fixed server passes the next start()
        await ledger.client.config_set("maxmemory-policy", "noeviction")
        await ledger.start()
        await ledger.aclose()


async def test_engine_start_fails_on_a_redis_that_evicts() -> None:
    with RedisServer(appendonly=True, extra=["--maxmemory-policy", "allkeys-lru"]) as server:
        async with MockProvider() as p:
            with pytest.raises(ConfigError, match="maxmemory-policy allkeys-lru"):
                async with engine_for(p, RedisLedger.from_url(server.url)):
                    pass
            assert p.stats.requests == 0


async def test_start_with_allow_eviction_warns(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer(appendonly=True, extra=["--maxmemory-policy", "allkeys-lru"]) as server:
        ledger = RedisLedger.from_url(server.url, allow_eviction=True)
        with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
            await ledger.start()
        await ledger.aclose()
    [warning] = [r for r in caplog.records if r.name == LEDGER_LOG]
    assert warning.levelno == logging.WARNING
    assert "maxmemory-policy allkeys-lru" in warning.getMessage() and "allow_eviction=True" in warning.getMessage()
    assert "double send" in warning.getMessage()


async def test_start_warns_when_redis_persists_nothing_and_checks_once(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer() as server:  # --save "" and appendonly no: a restart forgets everything
        ledger = RedisLedger.from_url(server.url)
        with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
            await ledger.start()
            await ledger.start()  # idempotent: checked once
        await ledger.aclose()
    [warning] = [r for r in caplog.records if r.name == LEDGER_LOG]
    text = warning.getMessage()
    assert "persists nothing" in text and "appendonly no" in text and "save ''" in text
    assert "restart" in text and "double send" in text


@pytest.mark.parametrize(
    "extra", [["--appendonly", "yes"], ["--save", "3600 1"]], ids=["aof", "rdb"]
)
async def test_start_is_quiet_for_a_persistent_noeviction_redis(
    extra: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer(extra=extra) as server:
        ledger = RedisLedger.from_url(server.url)
        with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
            await ledger.start()
        await ledger.aclose()
    assert [r.getMessage() for r in caplog.records if r.name == LEDGER_LOG] == []


async def test_start_falls_back_to_info_where_config_is_disabled(caplog: pytest.LogCaptureFixture) -> None:
    """Managed Redis often disables CONFIG: INFO memory/persistence answers instead."""
    no_config = ["--rename-command", "CONFIG", ""]
    with RedisServer(extra=[*no_config, "--maxmemory-policy", "volatile-lru"]) as server:
        ledger = RedisLedger.from_url(server.url)
        with pytest.raises(ConfigError, match=r"maxmemory-policy volatile-lru .*read with INFO"):
            await ledger.start()
        await ledger.aclose()
    with RedisServer(extra=no_config) as server:
        ledger = RedisLedger.from_url(server.url)
        with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
            await ledger.start()
        await ledger.aclose()
    [warning] = [r.getMessage() for r in caplog.records if r.name == LEDGER_LOG]
    assert "persists nothing" in warning and "aof_enabled:0" in warning and "no RDB snapshot" in warning
    caplog.clear()
    with RedisServer(appendonly=True, extra=no_config) as server:
        ledger = RedisLedger.from_url(server.url)
        with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
            await ledger.start()
        await ledger.aclose()
    assert [r.getMessage() for r in caplog.records if r.name == LEDGER_LOG] == []


async def test_start_warns_when_neither_config_nor_info_answers(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer(extra=["--rename-command", "CONFIG", "", "--rename-command", "INFO", ""]) as server:
        ledger = RedisLedger.from_url(server.url)
        with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
            await ledger.start()
        # the ledger itself still works
        assert isinstance(await ledger.claim("k", "j", P1, F1, "t", 30), Claimed)
        await ledger.aclose()
    [warning] = [r.getMessage() for r in caplog.records if r.name == LEDGER_LOG]
    assert "could not check Redis" in warning and "CONFIG GET" in warning and "INFO" in warning
    assert "noeviction" in warning and "appendonly" in warning


async def test_start_on_an_unreachable_redis_raises_ledger_unavailable() -> None:
    ledger = RedisLedger.from_url("redis://127.0.0.1:1/0", socket_timeout=1)
    with pytest.raises(LedgerUnavailableError, match="could not check"):
        await ledger.start()
    await ledger.aclose()


async def test_start_checks_every_cluster_primary(cluster_url: str, caplog: pytest.LogCaptureFixture) -> None:
    import redis.asyncio.cluster as rc

    admin = rc.RedisCluster.from_url(cluster_url)
    await admin.initialize()
    primaries = admin.get_primaries()
    assert len(primaries) == 3
    last = max(primaries, key=lambda n: n.port)  # not necessarily the node of the URL
    await admin.config_set("maxmemory-policy", "allkeys-lru", target_nodes=last)
    try:
        ledger = RedisLedger.from_url(cluster_url, cluster=True)
        with pytest.raises(ConfigError) as info:
            await ledger.start()
        await ledger.aclose()
        assert f"{last.name} has maxmemory-policy allkeys-lru" in str(info.value)
        assert str(info.value).count("has maxmemory-policy") == 1
        allowed = RedisLedger.from_url(cluster_url, cluster=True, allow_eviction=True)
        with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
            await allowed.start()
        await allowed.aclose()
    finally:
        await admin.config_set("maxmemory-policy", "noeviction", target_nodes=last)
        await admin.aclose()
    messages = [r.getMessage() for r in caplog.records if r.name == LEDGER_LOG]
    assert any("maxmemory-policy allkeys-lru" in m for m in messages)
    [persistence] = [m for m in messages if "persists nothing" in m]
    assert all(node.name in persistence for node in primaries)  # every primary was asked


# -- the engine with a ledger ----------------------------------------------------------

KEY = "welcome:{user_id}:{job_id}"
BODY = {"to": ["ada@example.com"], "name": "Ada"}


def engine_for(p: MockProvider, ledger: Ledger | None, **kw: Any) -> Engine:
    kw.setdefault("retry", RetryPolicy(backoff=0.01))
    return Engine(p.emails_url, key=KEY, api_key=p.api_key, ledger=ledger, **kw)


async def test_replay_after_the_provider_window(ledger: Ledger) -> None:
    now = [time.time()]
    async with MockProvider(clock=lambda: now[0]) as p:
        job = Job("j1", {"user_id": "u1"})
        async with engine_for(p, ledger) as e:
            await e.send(job, BODY)
            now[0] += 25 * 3600  # the provider has forgotten the key
            again = await e.send(job, BODY)
        assert again.from_ledger and again.replayed and again.attempts == 0
        assert p.sends == 1 and p.stats.requests == 1
        # without a ledger the gotcha is real: the same replay sends twice
        async with engine_for(p, None) as bare:
            await bare.send(job, BODY)
        assert p.sends == 2 and p.double_sends() == {"welcome:u1:j1": 2}


async def test_drifted_body_resends_the_first_bytes(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    async with MockProvider() as p:
        job = Job("j1", {"user_id": "u1"})
        async with engine_for(p, ledger, retry=0) as e:
            p.script("lost")
            with pytest.raises(RetryableError):
                await e.send(job, BODY)  # committed at the provider, the response lost
            drifted = {**BODY, "name": "Ada Lovelace"}
            with caplog.at_level(logging.WARNING, logger="idemsend"):
                result = await e.send(job, drifted)
        assert result.replayed and result.response["to"] == BODY["to"]
        assert p.sends == 1 and p.stats.mismatches == 0
        first, now = fingerprint(canonical_body(BODY)), fingerprint(canonical_body(drifted))
        assert any(first[:16] in r.getMessage() and now[:16] in r.getMessage() for r in caplog.records)


async def test_timestamp_in_the_key_is_unstable(ledger: Ledger) -> None:
    async with MockProvider() as p:
        async with Engine(p.emails_url, key="welcome:{job_id}:{ts}", api_key=p.api_key, ledger=ledger) as e:
            await e.send(Job("j1", {"ts": "1700000000"}), BODY)
            with pytest.raises(UnstableKeyError) as info:
                await e.send(Job("j1", {"ts": "1700000005"}), BODY)
        assert info.value.recorded_key == "welcome:j1:1700000000" and info.value.code == "UNSTABLE_KEY"
        assert p.sends == 1 and p.stats.requests == 1


async def test_unstable_key_after_a_failed_first_attempt_sends_at_most_once(ledger: Ledger) -> None:
    async with MockProvider() as p:
        async with Engine(
            p.emails_url, key="welcome:{job_id}:{ts}", api_key=p.api_key, ledger=ledger, retry=0
        ) as e:
            p.script("5xx")
            with pytest.raises(RetryableError):
                await e.send(Job("j1", {"ts": "1"}), BODY)
            with pytest.raises(UnstableKeyError):
                await e.send(Job("j1", {"ts": "2"}), BODY)
        assert p.sends == 0 and p.stats.requests == 1


async def test_unknown_outcome_past_the_window_is_stale(ledger: Ledger) -> None:
    async with MockProvider() as p:
        job = Job("j1", {"user_id": "u1"})
        async with engine_for(p, ledger, retry=0, provider=Provider(window=0.6, stale_margin=0.3)) as e:
            p.script("lost")
            with pytest.raises(RetryableError):
                await e.send(job, BODY)
            await asyncio.sleep(0.4)
            with pytest.raises(StaleReplayError) as info:
                await e.send(job, BODY)
            assert info.value.key == "welcome:u1:j1" and abs(info.value.first_sent_at - time.time()) < 5
            requests = p.stats.requests
            with pytest.raises(FatalError) as again:
                await e.send(job, BODY)
        assert again.value.code == "STALE_REPLAY"
        assert p.stats.requests == requests == 1


async def test_mismatch_is_recorded_fatal(ledger: Ledger) -> None:
    async with MockProvider() as p:
        async with Engine(p.emails_url, key="welcome:{user_id}", api_key=p.api_key) as bare:
            await bare.send(Job("other", {"user_id": "u1"}), {"x": 1})  # the key, used with another body
        async with Engine(p.emails_url, key="welcome:{user_id}", api_key=p.api_key, ledger=ledger) as e:
            with pytest.raises(MismatchError):
                await e.send(Job("j1", {"user_id": "u1"}), BODY)
            with pytest.raises(MismatchError):
                await e.send(Job("j1", {"user_id": "u1"}), BODY)
        assert p.stats.requests == 2  # the second answer came from the ledger


async def test_ledger_unreachable_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    async with MockProvider() as p:
        # unreachable at start: the engine still starts (a worker may boot during an outage),
        # sends fail closed, and the server check runs once the ledger answers
        server = RedisServer(appendonly=True, extra=["--maxmemory-policy", "allkeys-lru"])
        with caplog.at_level(logging.WARNING):
            async with engine_for(p, RedisLedger.from_url(server.url, socket_timeout=1)) as e:
                with pytest.raises(RetryableError) as down:
                    await e.send(Job("j0", {"user_id": "u1"}), BODY)
                assert down.value.reason == "ledger" and down.value.retry_after is None
                server.start()
                try:
                    with pytest.raises(RetryableError, match="maxmemory-policy allkeys-lru") as unfit:
                        await e.send(Job("j0", {"user_id": "u1"}), BODY)
                    assert unfit.value.reason == "ledger_config"
                finally:
                    server.cleanup()
        assert any("could not be checked at start" in r.getMessage() for r in caplog.records)
        # unreachable after start: every send fails closed, retryable
        with RedisServer(appendonly=True) as server:
            async with engine_for(p, RedisLedger.from_url(server.url, socket_timeout=1)) as e:
                server.stop()
                with pytest.raises(RetryableError) as info:
                    await e.send(Job("j1", {"user_id": "u1"}), BODY)
        assert info.value.reason == "ledger" and "nothing was sent" in str(info.value)
        assert p.stats.requests == 0


async def test_round_trips_per_send(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pipelines: list[int] = []
    original = _Batcher._execute

    async def counting(self: _Batcher, ops: list[Any]) -> list[Any]:
        pipelines.append(len(ops))
        return await original(self, ops)

    monkeypatch.setattr(_Batcher, "_execute", counting)
    async with MockProvider() as p:
        led = RedisLedger.from_url(redis_url, prefix=uuid.uuid4().hex)
        async with engine_for(p, led) as e:
            for i in range(10):
                await e.send(Job(f"s{i}", {"user_id": "u"}), BODY)
            sequential = len(pipelines)
            pipelines.clear()
            results = await e.send_many([(Job(f"c{i}", {"user_id": "u"}), BODY) for i in range(100)])
        assert all(not isinstance(r, Exception) for r in results)
    assert sequential <= 20  # at most two round trips per send
    assert len(pipelines) <= 10  # 100 concurrent sends share pipelines
    assert sum(pipelines) == 200  # claim (with the job map) + complete, each send


async def test_leases_are_renewed_while_a_send_runs(redis_url: str) -> None:
    async with MockProvider() as p:
        p.delay("welcome:u1:j1", 1.6)
        ledger = RedisLedger.from_url(redis_url, prefix=uuid.uuid4().hex)
        async with engine_for(p, ledger, lease=0.6) as e:
            task = asyncio.ensure_future(e.send(Job("j1", {"user_id": "u1"}), BODY))
            await asyncio.sleep(1.2)  # two leases long: only renewal keeps it
            record = await ledger.get("welcome:u1:j1")
            assert record is not None and record.state == "in_flight"
            assert record.lease_until is not None and record.lease_until > time.time()
            other = await ledger.claim("welcome:u1:j1", "j1", b"{}", "x", "intruder", 5)
            assert isinstance(other, Busy)
            result = await task
        assert not result.replayed and p.sends == 1


async def test_inspect_cli_prints_a_record(redis_url: str) -> None:
    prefix = uuid.uuid4().hex
    async with MockProvider() as p, engine_for(p, RedisLedger.from_url(redis_url, prefix=prefix)) as e:
        sent = await e.send(Job("j1", {"user_id": "u1"}), BODY)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "idemsend.cli", "inspect", "welcome:u1:j1", "--redis", redis_url, "--prefix", prefix,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    shown = json.loads(out)
    assert shown["state"] == "done" and shown["response_id"] == sent.id
    assert shown["fingerprint"] == sent.fingerprint and shown["job_id"] == "j1"
    assert abs(shown["first_sent_at"] - time.time()) < 60
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "idemsend.cli", "inspect", "nope", "--redis", redis_url, "--prefix", prefix,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 1 and b"no record" in err
