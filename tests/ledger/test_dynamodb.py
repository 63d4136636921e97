"""The DynamoDBLedger against moto's server: the ledger contract (a table of its own per
test), the table checks at start, ``migrate``, a skewed clock, and the cost of a send.

moto never sweeps expired items (DynamoDB sweeps lazily), so every retention test here
also shows that the ledger reads expiry from the item itself."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from idemsend import ConfigError
from idemsend.ledger import DEFAULT_RETENTION, Busy, Claimed, Done, Ledger, LedgerUnavailableError, ledger_from_url
from idemsend.testing.ledger_contract import Backdate, LedgerContract, MakeLedger, StoreAction

from ._dynamodb import HAVE_DYNAMODB, NO_DYNAMODB, REGION, OwnMoto, client, moto_env

pytestmark = [pytest.mark.dynamodb, pytest.mark.skipif(not HAVE_DYNAMODB, reason=NO_DYNAMODB)]

P1, F1 = b'{"to":["a"]}', "f" * 64


def _ledger(endpoint: str, table: str, **options: Any) -> Any:
    from idemsend.ledger import DynamoDBLedger

    return DynamoDBLedger(table, region=REGION, endpoint_url=endpoint, **options)


async def _scan_delete(endpoint: str, table: str, before: float) -> None:
    """Lose every item written before ``before`` (the moment the store "loses everything",
    as FLUSHALL does), however long the scan takes: an item's ``exp`` is its last write
    plus the retention, so only items with ``exp <= before + retention`` go, each on that
    condition; a record a ledger writes meanwhile (a completion written anew) stays."""
    async with client(endpoint) as db:
        pages = db.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
        async for page in pages:
            for item in page.get("Items", []):
                with contextlib.suppress(db.exceptions.ConditionalCheckFailedException):
                    await db.delete_item(TableName=table, Key={"pk": item["pk"]},
                                         ConditionExpression="exp <= :before",
                                         ExpressionAttributeValues={":before": {"N": repr(before)}})


async def _backdate(endpoint: str, table: str, prefix: str, key: str, seconds: float) -> None:
    async with client(endpoint) as db:
        pk = {"pk": {"S": f"{prefix}#r#{key}"}}
        item = (await db.get_item(TableName=table, Key=pk, ConsistentRead=True))["Item"]
        first = float(item["first"]["N"]) - seconds
        await db.update_item(TableName=table, Key=pk, UpdateExpression="SET #f = :f",
                             ExpressionAttributeNames={"#f": "first"},
                             ExpressionAttributeValues={":f": {"N": repr(first)}})


@pytest.fixture(scope="module")
def own_moto() -> Iterator[OwnMoto]:
    """A moto server of this module's own, for the restart test."""
    moto_env()
    moto = OwnMoto().start()
    try:
        yield moto
    finally:
        moto.cleanup()


class TestDynamoDBLedger(LedgerContract):
    @pytest.fixture
    def endpoint(self, request: pytest.FixtureRequest) -> str:
        if "store_restart" in request.fixturenames:
            return str(request.getfixturevalue("own_moto").url)
        return str(request.getfixturevalue("moto_url"))

    @pytest.fixture
    def table(self) -> str:
        return f"t-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    async def make_ledger(self, endpoint: str, table: str) -> AsyncIterator[MakeLedger]:
        made: list[Ledger] = []

        async def make(*, retention: float | None = None) -> Ledger:
            options: dict[str, Any] = {"create_table": True}
            if retention is not None:
                options["retention"] = retention
            ledger = ledger_from_url(f"dynamodb://{table}?region={REGION}&endpoint_url={endpoint}", **options)
            await ledger.start()
            made.append(ledger)
            return ledger

        yield make
        for ledger in made:
            await ledger.aclose()
        async with client(endpoint) as db:
            with contextlib.suppress(Exception):  # a restarted moto may have none
                await db.delete_table(TableName=table)

    @pytest.fixture
    def store_forget(self, endpoint: str, table: str) -> StoreAction:
        async def forget() -> None:  # the contract's ledgers keep the default retention
            await _scan_delete(endpoint, table, time.time() + DEFAULT_RETENTION)

        return forget

    @pytest.fixture
    def store_restart(self, own_moto: OwnMoto, table: str) -> StoreAction:
        async def restart() -> None:
            # moto keeps nothing across a restart, not even the table (OwnMoto makes it again)
            own_moto.tables[:] = [table]
            own_moto.stop()
            own_moto.start()

        return restart

    @pytest.fixture
    def store_backdate(self, endpoint: str, table: str) -> Backdate:
        async def backdate(key: str, seconds: float) -> None:
            await _backdate(endpoint, table, "idemsend", key, seconds)

        return backdate


# -- beyond the contract ---------------------------------------------------------------------


@pytest.fixture
async def own_table(moto_url: str) -> AsyncIterator[str]:
    table = f"t-{uuid.uuid4().hex[:12]}"
    maker = _ledger(moto_url, table)
    await maker.migrate()
    await maker.aclose()
    yield table
    async with client(moto_url) as db:
        await db.delete_table(TableName=table)


@pytest.mark.anyio
async def test_an_expired_item_still_in_the_table_is_absent(moto_url: str, own_table: str) -> None:
    """moto never sweeps (DynamoDB sweeps lazily): the expired item is still there, and the
    ledger treats it as absent by its own ``exp``: get is None, settlements say missing,
    a claim is fresh, with the new body."""
    import asyncio

    ledger = _ledger(moto_url, own_table, retention=0.3)
    try:
        first = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        assert isinstance(first, Claimed)
        await asyncio.sleep(0.5)
        async with client(moto_url) as db:
            raw = await db.get_item(TableName=own_table, Key={"pk": {"S": "idemsend#r#k"}}, ConsistentRead=True)
        assert "Item" in raw  # not swept
        assert await ledger.get("k") is None
        assert await ledger.renew(key="k", token="t", lease=30) == "missing"
        again = await ledger.claim(key="k", job_id="j2", payload=b"{}", fingerprint="f2", token="t2", lease=30)
        assert isinstance(again, Claimed) and again.fresh and again.payload == b"{}"
    finally:
        await ledger.aclose()


@pytest.mark.anyio
async def test_a_body_over_the_item_limit_is_unavailable_and_names_the_store(
    moto_url: str, own_table: str
) -> None:
    ledger = _ledger(moto_url, own_table, config={"retries": {"max_attempts": 1}})
    try:
        with pytest.raises(LedgerUnavailableError, match=r"ValidationException.*size"):
            await ledger.claim(key="big", job_id="j", payload=b"x" * 420_000, fingerprint=F1, token="t", lease=30)
        assert await ledger.get("big") is None
    finally:
        await ledger.aclose()


@pytest.mark.anyio
async def test_calls_per_completed_send(moto_url: str, own_table: str) -> None:
    """What benchmarks/memory.py reports, held here: a fresh claim is two PutItem (the
    note, the record), a completion one UpdateItem; a replay one refused PutItem more."""
    ledger = _ledger(moto_url, own_table)
    try:
        await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        assert await ledger.complete(key="k", token="t", response={"id": "em"}) == "ok"
        assert dict(ledger.calls) == {"put_item": 2, "update_item": 1}
        replay = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t2", lease=30)
        assert replay == Done({"id": "em"}, F1) and dict(ledger.calls) == {"put_item": 4, "update_item": 1}
    finally:
        await ledger.aclose()


@pytest.mark.anyio
async def test_a_busy_claim_never_writes_the_record(moto_url: str, own_table: str) -> None:
    """A claim refused as Busy changed nothing: the holder's lease and token are intact."""
    ledger = _ledger(moto_url, own_table)
    try:
        await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t1", lease=30)
        before = await ledger.get("k")
        busy = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t2", lease=30)
        assert isinstance(busy, Busy)
        assert await ledger.get("k") == before
        assert await ledger.renew(key="k", token="t1", lease=30) == "ok"
        assert await ledger.renew(key="k", token="t2", lease=30) == "superseded"
    finally:
        await ledger.aclose()


@pytest.mark.anyio
async def test_keys_and_job_ids_that_look_like_item_names_stay_apart(moto_url: str, own_table: str) -> None:
    """A key holding the separators (``#j#``, ``#r#``), or non-ASCII, never meets another
    key's item or a job id's note: the prefix has no ``#``, so the first one after it says
    which kind of item it is."""
    ledger = _ledger(moto_url, own_table, prefix="p")
    try:
        tricky = ["a#j#b", "#r#", "j#x", "ключ:é:😀", "a"]
        for i, key in enumerate(tricky):
            claim = await ledger.claim(key=key, job_id=f"a#j#b{i}" if i else key, payload=P1, fingerprint=F1,
                                       token=f"t{i}", lease=30)
            assert isinstance(claim, Claimed) and claim.fresh, (key, claim)
        for i, key in enumerate(tricky):
            record = await ledger.get(key)
            assert record is not None and record.key == key and record.job_id == (f"a#j#b{i}" if i else key)
    finally:
        await ledger.aclose()


@pytest.mark.anyio
async def test_the_longest_key_of_4_byte_characters_is_stored_and_longer_providers_refused(
    moto_url: str, own_table: str
) -> None:
    from idemsend import Engine, Provider

    ledger = _ledger(moto_url, own_table)
    try:
        assert ledger.max_key_length == (2048 - len("idemsend#r#")) // 4
        key = "😀" * ledger.max_key_length  # 4 bytes each in UTF-8
        claim = await ledger.claim(key=key, job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        assert isinstance(claim, Claimed) and await ledger.complete(key=key, token="t", response={"id": "x"}) == "ok"
        with pytest.raises(ConfigError, match=rf"allows keys of 4096 characters.*at most {ledger.max_key_length}"):
            Engine("https://api.example.com/v1/emails", key="welcome:{job_id}", ledger=ledger,
                   provider=Provider(max_key_length=4096))
    finally:
        await ledger.aclose()
