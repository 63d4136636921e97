"""The DynamoDBLedger against moto's server: the ledger contract (a table of its own per
test), the table checks at start, ``migrate``, a skewed clock, and the cost of a send.

moto never sweeps expired items (DynamoDB sweeps lazily), so every retention test here
also shows that the ledger reads expiry from the item itself."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from idemsend.ledger import Ledger, ledger_from_url
from idemsend.testing.ledger_contract import Backdate, LedgerContract, MakeLedger, StoreAction

from ._dynamodb import HAVE_DYNAMODB, NO_DYNAMODB, REGION, OwnMoto, client, moto_env

pytestmark = [pytest.mark.dynamodb, pytest.mark.skipif(not HAVE_DYNAMODB, reason=NO_DYNAMODB)]

P1, F1 = b'{"to":["a"]}', "f" * 64


def _ledger(endpoint: str, table: str, **options: Any) -> Any:
    from idemsend.ledger import DynamoDBLedger

    return DynamoDBLedger(table, region=REGION, endpoint_url=endpoint, **options)


async def _scan_delete(endpoint: str, table: str) -> None:
    async with client(endpoint) as db:
        pages = db.get_paginator("scan").paginate(TableName=table, ProjectionExpression="pk")
        async for page in pages:
            for item in page.get("Items", []):
                await db.delete_item(TableName=table, Key={"pk": item["pk"]})


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
        async def forget() -> None:
            await _scan_delete(endpoint, table)

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
