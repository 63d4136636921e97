"""PostgresLedger: one call the database refuses fails that call alone, not the batch.

A batch of calls is one statement, and a statement fails as a whole. When it fails with an
error about its data (a key too long for the primary key's btree, a lease whose expiry is
past the last timestamp PostgreSQL can hold: SQLSTATE classes 22, 23, 54), the ledger
runs each half again, and so on down, until the call that causes it stands alone: its
caller gets the error, every other caller its answer. A store failure (the server down,
the table missing) fails every call of the batch, as before, and is not retried.

The inputs here reach the ledger through its own API: its ``claim``/``renew`` take any key
and any float lease (an ``Engine`` refuses a provider whose keys may be longer than the
ledger's ``max_key_length``, so engine sends never carry such a key).
"""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import AsyncIterator
from typing import Any

import pytest

from idemsend import ConfigError, Engine, Provider
from idemsend._body import fingerprint
from idemsend.ledger import Claimed, LedgerUnavailableError

from .conftest import pg_execute

asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is not installed: pip install 'idemsend[postgres]'")

from idemsend.ledger._postgres import PostgresLedger  # noqa: E402 - needs asyncpg

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

P1 = b'{"to":["a"]}'
F1 = fingerprint(P1)
BODY = {"to": ["ada@example.com"], "name": "Ada"}


def long_key(n: int = 3000) -> str:
    """A key of visible ASCII that no btree entry (2,704 bytes at most) can hold: random, so
    PostgreSQL cannot compress it under the limit."""
    rnd = random.Random(18)
    return "k:" + "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(n))


@pytest.fixture
async def made(postgres_store_url: str, prefix: str) -> AsyncIterator[list[PostgresLedger]]:
    ledgers: list[PostgresLedger] = []
    yield ledgers
    for ledger in ledgers:
        await ledger.aclose()
    await pg_execute(postgres_store_url, f'DROP TABLE IF EXISTS "{prefix}_ledger", "{prefix}_ledger_jobs"')


@pytest.fixture
async def ledger(postgres_store_url: str, prefix: str, made: list[PostgresLedger]) -> PostgresLedger:
    new = PostgresLedger.from_url(postgres_store_url, table=f"{prefix}_ledger", create_table=True, sweep_interval=0)
    made.append(new)
    await new.start()
    return new


async def test_a_claim_whose_key_is_too_long_to_index_fails_alone(ledger: PostgresLedger) -> None:
    """120 concurrent claims (one group-commit round or a few), one of them with a key of
    3,000 characters: the other 119 are claimed; only that claim fails, with the reason."""
    bad = 57
    keys = [long_key() if i == bad else f"welcome:u{i}:j{i}" for i in range(120)]
    answers = await asyncio.gather(*(
        ledger.claim(key=k, job_id=f"j{i}", payload=P1, fingerprint=F1, token=f"t{i}", lease=30)
        for i, k in enumerate(keys)
    ), return_exceptions=True)
    failed = {i: a for i, a in enumerate(answers) if not isinstance(a, Claimed)}
    assert list(failed) == [bad], {i: repr(a)[:200] for i, a in failed.items()}
    assert isinstance(failed[bad], LedgerUnavailableError) and "exceeds btree" in str(failed[bad])
    records = [await ledger.get(keys[i]) for i in (0, bad - 1, bad + 1, 119)]
    assert all(record is not None and record.state == "in_flight" for record in records), records


async def test_an_engine_whose_provider_allows_keys_the_ledger_cannot_store_is_refused(ledger: PostgresLedger) -> None:
    """The provider's key limit may be far over what a btree entry holds: refused at
    construction, naming both limits, instead of failing those jobs at their claim."""
    with pytest.raises(ConfigError, match=r"allows keys of 4096 characters.*at most 2048"):
        Engine("https://api.example.com/v1/emails", key="welcome:{job_id}", ledger=ledger,
               provider=Provider(max_key_length=4096))
    Engine("https://api.example.com/v1/emails", key="welcome:{job_id}", ledger=ledger,
           provider=Provider(max_key_length=PostgresLedger.max_key_length))


async def test_the_longest_key_the_ledger_admits_is_stored(ledger: PostgresLedger) -> None:
    key = long_key(PostgresLedger.max_key_length - 2)
    assert len(key) == PostgresLedger.max_key_length
    assert isinstance(await ledger.claim(key=key, job_id="j", payload=P1, fingerprint=F1, token="t", lease=30), Claimed)
    assert await ledger.complete(key=key, token="t", response={"id": "x"}) == "ok"


async def test_a_completion_the_table_cannot_hold_fails_alone(ledger: PostgresLedger) -> None:
    """A completion of a key that was never claimed writes a done record anew: one too long
    to index fails, and the completions beside it in the same statement go through."""
    keys = [f"k{i}" for i in range(8)]
    claims = await asyncio.gather(*(
        ledger.claim(key=k, job_id=f"j{k}", payload=P1, fingerprint=F1, token="t", lease=30) for k in keys
    ))
    assert all(isinstance(c, Claimed) for c in claims)
    before = ledger.statements
    answers = await asyncio.gather(
        *(ledger.complete(key=k, token="t", response={"id": k}) for k in keys[:4]),
        ledger.complete(key=long_key(), token="t", response={"id": "long"}),
        *(ledger.complete(key=k, token="t", response={"id": k}) for k in keys[4:]),
        return_exceptions=True,
    )
    assert answers[:4] == ["ok"] * 4 and answers[5:] == ["ok"] * 4, answers
    assert isinstance(answers[4], LedgerUnavailableError) and "exceeds btree" in str(answers[4])
    assert ledger.statements - before <= 1 + 2 * 4  # halving: at most two statements a level


@pytest.mark.parametrize("lease", [1e15, float("inf"), float("nan")])
async def test_a_lease_past_the_last_timestamp_fails_alone(ledger: PostgresLedger, lease: float) -> None:
    """now() + 1e15 s is past the year 294,276 (and inf, nan are no interval): that claim,
    or that renewal, fails; the ones beside it in the same statement do not."""
    claims = await asyncio.gather(*(
        ledger.claim(key=f"k{i}", job_id=f"j{i}", payload=P1, fingerprint=F1, token="t",
                     lease=lease if i == 2 else 30)
        for i in range(5)
    ), return_exceptions=True)
    assert isinstance(claims[2], LedgerUnavailableError) and "out of range" in str(claims[2]), claims
    assert all(isinstance(c, Claimed) and c.fresh for i, c in enumerate(claims) if i != 2), claims
    renewals = await asyncio.gather(*(
        ledger.renew(key=f"k{i}", token="t", lease=lease if i == 3 else 30) for i in (0, 1, 3, 4)
    ), return_exceptions=True)
    assert renewals[:2] == ["ok", "ok"] and renewals[3] == "ok", renewals
    assert isinstance(renewals[2], LedgerUnavailableError) and "out of range" in str(renewals[2])


async def test_a_store_failure_still_fails_the_whole_batch_at_once(
    ledger: PostgresLedger, postgres_store_url: str, prefix: str
) -> None:
    """Not the data's fault (the table is gone): every caller gets the failure, from the one
    statement, without it being split and sent again."""
    await pg_execute(postgres_store_url, f'DROP TABLE "{prefix}_ledger", "{prefix}_ledger_jobs"')
    before = ledger.statements
    answers: list[Any] = await asyncio.gather(*(
        ledger.claim(key=f"k{i}", job_id=f"j{i}", payload=P1, fingerprint=F1, token="t", lease=30) for i in range(6)
    ), return_exceptions=True)
    assert all(isinstance(a, LedgerUnavailableError) and "UndefinedTableError" in str(a) for a in answers), answers
    assert ledger.statements - before == 1
