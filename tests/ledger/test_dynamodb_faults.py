"""The DynamoDBLedger when DynamoDB misbehaves, against moto's server: a table that is not
a ledger's (no TTL, another key schema, none at all), an endpoint that refuses, a
throttled table, a reply lost after the write applied, and a worker whose clock is off.

The lost replies and the throttling go through ``DynamoProxy`` (tests/ledger/_dynamodb_proxy.py)
between the ledger and moto: moto itself never throttles and never drops a reply."""

from __future__ import annotations

import logging
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from idemsend import ConfigError, Engine, Job, RetryableError
from idemsend._body import fingerprint
from idemsend.ledger import Busy, Claimed, LedgerUnavailableError
from idemsend.testing import MockProvider

from ._dynamodb import HAVE_DYNAMODB, NO_DYNAMODB, REGION, client
from ._dynamodb_proxy import DynamoProxy

pytestmark = [pytest.mark.anyio, pytest.mark.dynamodb, pytest.mark.skipif(not HAVE_DYNAMODB, reason=NO_DYNAMODB)]

P1 = b'{"to":["a"]}'
F1 = fingerprint(P1)
P2 = b'{"to":["b"]}'
F2 = fingerprint(P2)


def make(endpoint: str, table: str, **options: Any) -> Any:
    from idemsend.ledger import DynamoDBLedger

    return DynamoDBLedger(table, region=REGION, endpoint_url=endpoint, **options)


@pytest.fixture
def table() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def ready(moto_url: str, table: str) -> AsyncIterator[str]:
    """``table`` made as the ledger's (``migrate``) on the session's moto; deleted after."""
    ledger = make(moto_url, table)
    await ledger.migrate()
    await ledger.aclose()
    yield table
    async with client(moto_url) as db:
        await db.delete_table(TableName=table)


@pytest.fixture
async def proxy(moto_url: str) -> AsyncIterator[DynamoProxy]:
    async with DynamoProxy(moto_url) as p:
        yield p


# -- a table that is not the ledger's ------------------------------------------------------


async def test_a_missing_table_is_a_clear_error_at_start(moto_url: str, table: str) -> None:
    ledger = make(moto_url, table)
    try:
        with pytest.raises(ConfigError, match=f"the ledger table {table} does not exist.*idemsend migrate --dynamodb"):
            await ledger.start()
    finally:
        await ledger.aclose()


async def test_create_table_makes_it_with_ttl_on(moto_url: str, table: str) -> None:
    ledger = make(moto_url, table, create_table=True)
    try:
        await ledger.start()
        async with client(moto_url) as db:
            ttl = (await db.describe_time_to_live(TableName=table))["TimeToLiveDescription"]
            await db.delete_table(TableName=table)
        assert ttl["TimeToLiveStatus"] == "ENABLED" and ttl["AttributeName"] == "ttl"
    finally:
        await ledger.aclose()


async def test_a_table_without_ttl_is_refused_at_start(moto_url: str, table: str) -> None:
    async with client(moto_url) as db:
        await db.create_table(
            TableName=table, AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST",
        )
        ledger = make(moto_url, table)
        try:
            with pytest.raises(ConfigError, match=r"its TTL is DISABLED, not ENABLED on 'ttl'.*update-time-to-live"):
                await ledger.start()
            # migrate turns it on, and then the same table is fit
            await ledger.migrate()
            await ledger.start()
        finally:
            await ledger.aclose()
            await db.delete_table(TableName=table)


async def test_a_table_with_another_key_schema_is_refused_at_start(moto_url: str, table: str) -> None:
    async with client(moto_url) as db:
        await db.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "N"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            BillingMode="PAY_PER_REQUEST",
        )
        await db.update_time_to_live(TableName=table,
                                     TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"})
        ledger = make(moto_url, table, create_table=True)
        try:
            with pytest.raises(ConfigError, match=r"its key schema is id HASH \(S\), sk RANGE \(N\), not the ledger's"):
                await ledger.start()
        finally:
            await ledger.aclose()
            await db.delete_table(TableName=table)


async def test_a_provisioned_table_is_warned_about(
    moto_url: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(moto_url) as db:
        await db.create_table(
            TableName=table, AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            ProvisionedThroughput={"ReadCapacityUnits": 5, "WriteCapacityUnits": 5},
        )
        await db.update_time_to_live(TableName=table,
                                     TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"})
        ledger = make(moto_url, table)
        try:
            with caplog.at_level(logging.WARNING, logger="idemsend.ledger"):
                await ledger.start()
        finally:
            await ledger.aclose()
            await db.delete_table(TableName=table)
    assert [getattr(r, "idemsend_code", None) for r in caplog.records] == ["provisioned"]


# -- an endpoint that refuses, a throttled table ---------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_endpoint_that_refuses_is_unavailable_and_nothing_is_sent(table: str) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    ledger = make(endpoint, table, config={"retries": {"max_attempts": 1}, "connect_timeout": 2})
    try:
        with pytest.raises(LedgerUnavailableError, match=f"could not reach 127.0.0.1:{endpoint.rsplit(':', 1)[1]}"
                           "|could not read the ledger table"):
            await ledger.start()
        async with MockProvider() as p:
            engine = Engine(p.emails_url, key="welcome:{job_id}", api_key=p.api_key, ledger=ledger)
            with pytest.raises(RetryableError) as info:
                async with engine as e:
                    await e.send(Job("j1", {}), {"to": ["a"]})
            assert info.value.reason == "ledger" or "ledger" in str(info.value)
            assert p.stats.requests == 0
    finally:
        await ledger.aclose()


async def test_a_throttled_table_is_a_retryable_ledger_error_and_nothing_is_sent(
    moto_url: str, ready: str, proxy: DynamoProxy
) -> None:
    ledger = make(proxy.url, ready, config={"retries": {"mode": "standard", "max_attempts": 2}})
    try:
        await ledger.start()
        proxy.throttle("PutItem")
        with pytest.raises(LedgerUnavailableError, match="throttled the ledger's table"
                           r" \(ProvisionedThroughputExceededException\)"):
            await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        assert proxy.throttled >= 2  # botocore retried it first, then the ledger raised
        async with MockProvider() as p:
            async with Engine(p.emails_url, key="welcome:{job_id}", api_key=p.api_key, ledger=ledger) as e:
                with pytest.raises(RetryableError) as info:
                    await e.send(Job("j1", {}), {"to": ["a"]})
                assert info.value.reason == "ledger"
                assert p.stats.requests == 0  # nothing is sent while the ledger cannot record it
                proxy.throttle(None)
                sent = await e.send(Job("j1", {}), {"to": ["a"]})
            assert sent.id is not None and p.sends == 1
    finally:
        await ledger.aclose()


# -- a reply lost after the write applied ----------------------------------------------------


async def test_a_fresh_claim_whose_reply_was_lost_is_still_fresh(ready: str, proxy: DynamoProxy) -> None:
    ledger = make(proxy.url, ready)
    try:
        proxy.lose("PutItem", b"#r#k")
        claim = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        assert proxy.lost.is_set() and proxy.seen["PutItem"] == 3  # the note, the record twice
        assert isinstance(claim, Claimed) and claim.fresh and claim.payload == P1 and claim.fingerprint == F1
        other = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t2", lease=30)
        assert isinstance(other, Busy)
    finally:
        await ledger.aclose()


async def test_a_resume_whose_reply_was_lost_is_still_a_resume(ready: str, proxy: DynamoProxy) -> None:
    ledger = make(proxy.url, ready)
    try:
        first = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t1", lease=30)
        assert isinstance(first, Claimed) and await ledger.release(key="k", token="t1") == "ok"
        proxy.lose("UpdateItem", b"#r#k")
        again = await ledger.claim(key="k", job_id="j", payload=P2, fingerprint=F2, token="t2", lease=30)
        assert proxy.lost.is_set()
        assert isinstance(again, Claimed) and not again.fresh and again.payload == P1
        assert again.first_sent_at == first.first_sent_at
        assert await ledger.complete(key="k", token="t2", response={"id": "em_1"}) == "ok"
    finally:
        await ledger.aclose()


@pytest.mark.parametrize("op", ["complete", "fail", "release", "renew"])
async def test_a_settlement_whose_reply_was_lost_is_ok(ready: str, proxy: DynamoProxy, op: str) -> None:
    ledger = make(proxy.url, ready)
    try:
        claim = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        assert isinstance(claim, Claimed)
        proxy.lose("UpdateItem", b"#r#k")
        if op == "complete":
            answer = await ledger.complete(key="k", token="t", response={"id": "em_1"})
        elif op == "fail":
            answer = await ledger.fail(key="k", token="t", code="X", message="y")
        elif op == "release":
            answer = await ledger.release(key="k", token="t")
        else:
            answer = await ledger.renew(key="k", token="t", lease=30)
        assert proxy.lost.is_set() and proxy.seen["UpdateItem"] == 2
        assert answer == "ok"
        record = await ledger.get("k")
        assert record is not None
        assert record.state == {"complete": "done", "fail": "fatal"}.get(op, "in_flight")
    finally:
        await ledger.aclose()


async def test_a_recreated_completion_whose_reply_was_lost_is_recreated(ready: str, proxy: DynamoProxy) -> None:
    ledger = make(proxy.url, ready)
    try:
        proxy.lose("PutItem", b"#r#gone")
        assert await ledger.complete(key="gone", token="t", response={"id": "em_1"}) == "recreated"
        assert proxy.lost.is_set()
        record = await ledger.get("gone")
        assert record is not None and record.state == "done" and record.response == {"id": "em_1"}
    finally:
        await ledger.aclose()


# -- the clock: the workers' own ------------------------------------------------------------


async def test_a_skewed_clock_is_warned_about_at_start(
    moto_url: str, ready: str, caplog: pytest.LogCaptureFixture
) -> None:
    ahead = make(moto_url, ready, clock=lambda: time.time() + 120)
    fine = make(moto_url, ready)
    try:
        with caplog.at_level(logging.WARNING, logger="idemsend.ledger"):
            await ahead.start()
            await fine.start()
    finally:
        await ahead.aclose()
        await fine.aclose()
    [warning] = caplog.records
    assert getattr(warning, "idemsend_code", None) == "clock_skew"
    off = re.search(r"clock is \+(\d+) s off", warning.getMessage())
    assert off is not None and 110 <= int(off.group(1)) <= 120, warning.getMessage()


async def test_skew_within_the_lease_never_takes_a_live_lease(moto_url: str, ready: str) -> None:
    """Leases are the workers' clocks: a worker 10 s ahead sees another's 30 s lease run out
    10 s early, never earlier; one behind sees it later. Skew below the lease therefore
    never lets two workers hold one key at once right after a claim."""
    now = time.time()
    behind = make(moto_url, ready, clock=lambda: now - 10)
    ahead = make(moto_url, ready, clock=lambda: now + 10)
    try:
        claim = await behind.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t1", lease=30)
        assert isinstance(claim, Claimed)
        busy = await ahead.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t2", lease=30)
        assert isinstance(busy, Busy) and busy.retry_after == pytest.approx(10, abs=0.01)
        # and the worker that is behind sees an age below 0 as 0, never negative
        taken = make(moto_url, ready, clock=lambda: now + 21)
        try:
            over = await taken.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t3", lease=30)
            assert isinstance(over, Claimed) and not over.fresh and over.age == pytest.approx(31, abs=0.01)
        finally:
            await taken.aclose()
        late = await behind.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t4", lease=30)
        assert isinstance(late, Busy)
    finally:
        await behind.aclose()
        await ahead.aclose()
