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
    Engine,
    FatalError,
    Job,
    MismatchError,
    RetryableError,
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
    MemoryLedger,
    RedisLedger,
    Unstable,
)
from idemsend.ledger._redis import _Batcher
from idemsend.testing import MockProvider

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


async def test_claim_complete_then_done(ledger: Ledger) -> None:
    claim = await ledger.claim("k", "j1", P1, F1, "tok-a", 30)
    assert isinstance(claim, Claimed) and claim.fresh and claim.payload == P1 and claim.fingerprint == F1
    assert abs(claim.first_sent_at - time.time()) < 5
    assert isinstance(await ledger.claim("k", "j1", P1, F1, "tok-b", 30), Busy)
    assert not await ledger.complete("k", "tok-b", {"id": "x"})
    assert await ledger.complete("k", "tok-a", {"id": "em_1", "status": 200})
    assert await ledger.claim("k", "j1", P1, F1, "tok-c", 30) == Done({"id": "em_1", "status": 200})
    record = await ledger.get("k")
    assert record is not None and record.state == "done" and record.job_id == "j1" and record.fingerprint == F1
    assert record.response == {"id": "em_1", "status": 200}
    assert await ledger.get("missing") is None


async def test_expired_lease_is_taken_over_with_the_frozen_body(ledger: Ledger) -> None:
    first = await ledger.claim("k", "j1", P1, F1, "tok-a", 0.2)
    assert isinstance(first, Claimed)
    await asyncio.sleep(0.3)
    second = await ledger.claim("k", "j1", P2, F2, "tok-b", 30)  # the body drifted meanwhile
    assert isinstance(second, Claimed) and not second.fresh
    assert (second.payload, second.fingerprint) == (P1, F1)
    assert abs(second.first_sent_at - first.first_sent_at) < 0.01
    # the worker whose lease ran out cannot overwrite what tok-b owns now
    assert not await ledger.complete("k", "tok-a", {"id": "stale"})
    assert not await ledger.fail("k", "tok-a", "X", "stale")
    assert not await ledger.renew("k", "tok-a", 30)
    assert not await ledger.release("k", "tok-a")
    assert await ledger.complete("k", "tok-b", {"id": "em_2"})
    assert await ledger.claim("k", "j1", P1, F1, "tok-c", 30) == Done({"id": "em_2"})


async def test_renew_keeps_the_lease(ledger: Ledger) -> None:
    await ledger.claim("k", "j1", P1, F1, "tok-a", 0.3)
    await asyncio.sleep(0.15)
    assert await ledger.renew("k", "tok-a", 5)
    await asyncio.sleep(0.3)
    busy = await ledger.claim("k", "j1", P1, F1, "tok-b", 30)
    assert isinstance(busy, Busy) and 3 < busy.retry_after <= 5


async def test_release_keeps_the_record_and_frees_the_lease(ledger: Ledger) -> None:
    await ledger.claim("k", "j1", P1, F1, "tok-a", 30)
    assert await ledger.release("k", "tok-a")
    again = await ledger.claim("k", "j1", P2, F2, "tok-b", 30)
    assert isinstance(again, Claimed) and not again.fresh and again.payload == P1
    record = await ledger.get("k")
    assert record is not None and record.state == "in_flight" and record.lease_until is not None


async def test_fail_is_terminal(ledger: Ledger) -> None:
    await ledger.claim("k", "j1", P1, F1, "tok-a", 30)
    assert await ledger.fail("k", "tok-a", "IDEMPOTENCY_MISMATCH", "nope")
    assert await ledger.claim("k", "j1", P1, F1, "tok-b", 30) == Failed("IDEMPOTENCY_MISMATCH", "nope")
    record = await ledger.get("k")
    assert record is not None
    assert (record.state, record.code, record.message) == ("fatal", "IDEMPOTENCY_MISMATCH", "nope")


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
    assert await ledger.claim("k", "j3", P1, F1, "tok-c", 30) == Done({"id": "em_1"})


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


# -- the engine with a ledger ----------------------------------------------------------

KEY = "welcome:{user_id}:{job_id}"
BODY = {"to": ["ada@example.com"], "name": "Ada"}


def engine_for(p: MockProvider, ledger: Ledger | None, **kw: Any) -> Engine:
    return Engine(p.emails_url, key=KEY, api_key=p.api_key, ledger=ledger, backoff=0.01, **kw)


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
        async with engine_for(p, ledger, retries=0) as e:
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
            p.emails_url, key="welcome:{job_id}:{ts}", api_key=p.api_key, ledger=ledger, retries=0
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
        async with engine_for(p, ledger, retries=0, provider_window=0.6, stale_margin=0.3) as e:
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


async def test_ledger_unreachable_fails_closed() -> None:
    async with MockProvider() as p:
        dead = RedisLedger.from_url("redis://127.0.0.1:1/0", socket_timeout=1)
        async with engine_for(p, dead) as e:
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
