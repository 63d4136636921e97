"""PostgresLedger on a database whose default collation is not C (most managed PostgreSQL
sorts text by ``en_US.UTF-8`` or ICU ``en-US``): every statement that locks rows locks
them in one order, byte order, whatever the database's collation, so two batches never
wait on each other in a cycle (a deadlock: PostgreSQL aborts one of them, and its callers
get ``LedgerUnavailableError``; a release that fails so leaves its keys leased, a renew
lets the leases lapse).

How the order is seen, without luck: one transaction holds the row that byte order puts
first; a batch over all the keys starts and blocks on it; while it waits, a third session
tries each other row with ``NOWAIT``. A statement that locks in byte order holds none of
them yet; one that sorts by the database's collation has already locked ``k:a``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from idemsend._body import fingerprint
from idemsend.ledger import Claimed

from .conftest import MIXED_CASE_KEYS, pg_execute, sorts_like_c

asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is not installed: pip install 'idemsend[postgres]'")

from idemsend.ledger._postgres import PostgresLedger  # noqa: E402 - needs asyncpg

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

P1 = b'{"to":["a"]}'
F1 = fingerprint(P1)
#: Byte order (C), which Python's str order is for ASCII: k:A, k:B, k:a, k:b.
BYTE_ORDER = sorted(MIXED_CASE_KEYS)
#: Generous: the machine may be loaded; a pass never waits this long.
PATIENCE = 60.0


def job_of(key: str) -> str:
    """Each key's job id sorts like its key: j:a, j:B, …"""
    return "j" + key[1:]


@contextlib.asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[Any]:
    con = await asyncpg.connect(dsn, timeout=10)
    try:
        yield con
    finally:
        await con.close()


@pytest.fixture
async def ledger(postgres_store_url: str, prefix: str) -> AsyncIterator[PostgresLedger]:
    """A ledger with this test's tables on the session's database (C or en-US)."""
    made = PostgresLedger.from_url(
        postgres_store_url, table=f"{prefix}_ledger", create_table=True, timeout=PATIENCE, sweep_interval=0
    )
    await made.start()
    yield made
    await made.aclose()
    await pg_execute(postgres_store_url, f'DROP TABLE IF EXISTS "{prefix}_ledger", "{prefix}_ledger_jobs"')


async def test_the_database_sorts_as_its_collation_says(postgres_dsn: str, postgres_collation: str) -> None:
    """The en-US database really sorts k:a before k:B (else every test here proves nothing)."""
    assert await sorts_like_c(postgres_dsn) == (postgres_collation == "C")


async def claim_all(ledger: PostgresLedger, token: str) -> list[Any]:
    return list(await asyncio.gather(*(
        ledger.claim(key=k, job_id=job_of(k), payload=P1, fingerprint=F1, token=token, lease=PATIENCE)
        for k in MIXED_CASE_KEYS
    )))


# Each kind of batch: what the rows must be beforehand (so the statement finds and locks
# them), and the call, made for every key at once (one batch, one statement).
Call = Callable[[PostgresLedger, str], Awaitable[Any]]
CALLS: dict[str, tuple[str, Call]] = {
    "claim": ("in_flight", lambda lg, k: lg.claim(
        key=k, job_id=job_of(k), payload=P1, fingerprint=F1, token="t1", lease=PATIENCE)),
    "complete": ("in_flight", lambda lg, k: lg.complete(key=k, token="t0", response={"id": k})),
    "fail": ("in_flight", lambda lg, k: lg.fail(key=k, token="t0", code="INVALID", message="no")),
    "renew": ("in_flight", lambda lg, k: lg.renew(key=k, token="t0", lease=PATIENCE)),
    "release": ("in_flight", lambda lg, k: lg.release(key=k, token="t0")),
    "release-forget": ("in_flight", lambda lg, k: lg.release(key=k, token="t0", forget=True)),
    "clear": ("fatal", lambda lg, k: lg.clear(k, force=True)),
}


async def prepare(ledger: PostgresLedger, state: str) -> None:
    claims = await claim_all(ledger, "t0")
    assert all(isinstance(c, Claimed) and c.fresh for c in claims), claims
    if state == "fatal":
        assert await asyncio.gather(*(
            ledger.fail(key=k, token="t0", code="INVALID", message="no") for k in MIXED_CASE_KEYS
        )) == ["ok"] * len(MIXED_CASE_KEYS)


async def wait_until_blocked_by(observer: Any, holder_pid: int) -> None:
    """Until some session waits for a lock ``holder_pid`` holds (polls a condition; no fixed sleep)."""
    deadline = time.monotonic() + PATIENCE
    while not await observer.fetchval(
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid))", holder_pid
    ):
        assert time.monotonic() < deadline, "the batch never reached the held row"
        await asyncio.sleep(0.01)


async def rows_locked_while_waiting(
    ledger: PostgresLedger, dsn: str, table: str, column: str, values: list[str], batch: Callable[[], Awaitable[Any]]
) -> tuple[list[str], Any]:
    """Hold ``values[0]``'s row of ``table`` (by ``column``), run ``batch`` until it blocks
    on it, and answer which of the other rows it holds by then (and the batch's result)."""
    async with connect(dsn) as holder, connect(dsn) as probe:
        held = holder.transaction()
        await held.start()
        try:
            assert len(await holder.fetch(f"SELECT 1 FROM {table} WHERE {column} = $1 FOR UPDATE", values[0])) == 1
            running = asyncio.ensure_future(batch())
            await wait_until_blocked_by(probe, await holder.fetchval("SELECT pg_backend_pid()"))
            locked = []
            for value in values[1:]:
                try:
                    await probe.fetchval(f"SELECT 1 FROM {table} WHERE {column} = $1 FOR UPDATE NOWAIT", value)
                except asyncpg.LockNotAvailableError:
                    locked.append(value)
        finally:
            await held.rollback()
        return locked, await asyncio.wait_for(running, PATIENCE)


@pytest.mark.parametrize("kind", list(CALLS))
async def test_every_locking_statement_locks_its_rows_in_byte_order(
    ledger: PostgresLedger, postgres_store_url: str, kind: str
) -> None:
    state, call = CALLS[kind]
    await prepare(ledger, state)
    before = ledger.statements

    async def batch() -> list[Any]:
        return list(await asyncio.gather(*(call(ledger, k) for k in MIXED_CASE_KEYS)))

    locked, results = await rows_locked_while_waiting(ledger, postgres_store_url, ledger._t, "key", BYTE_ORDER, batch)
    assert ledger.statements == before + 1, "the calls went as one statement"
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert locked == [], f"{kind} locked {locked} before {BYTE_ORDER[0]}: not in byte order"


async def test_a_claim_locks_its_job_notes_in_byte_order(ledger: PostgresLedger, postgres_store_url: str) -> None:
    """A claim's first phase, the job-id notes, is in byte order too."""
    await prepare(ledger, "in_flight")
    jobs = [job_of(k) for k in BYTE_ORDER]
    locked, results = await rows_locked_while_waiting(
        ledger, postgres_store_url, ledger._j, "job_id", jobs, lambda: claim_all(ledger, "t1")
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert locked == [], f"the claim locked job notes {locked} before {jobs[0]}: not in byte order"


# -- the deadlock itself, with the interleaving forced ---------------------------------------

#: A pair that C and en-US sort in opposite orders (byte order: k:A first).
PAIR = ["k:A", "k:a"]
FIRST: dict[str, Call] = {
    "claim": lambda lg, k: lg.claim(key=k, job_id=job_of(k), payload=P1, fingerprint=F1, token="t1", lease=PATIENCE),
    "complete": lambda lg, k: lg.complete(key=k, token="t0", response={"id": k}),
}
SECOND: dict[str, Call] = {kind: CALLS[kind][1] for kind in ("release", "fail", "renew")}


async def ledger_sessions(observer: Any, table: str, holder_pid: int) -> tuple[int, int]:
    """How many sessions running a statement on ``table`` wait for a lock, and how many of
    them wait for ``holder_pid``."""
    row = await observer.fetchrow(
        "SELECT count(*) FILTER (WHERE cardinality(pg_blocking_pids(pid)) > 0),"
        "       count(*) FILTER (WHERE $2::int = ANY(pg_blocking_pids(pid)))"
        " FROM pg_stat_activity WHERE query LIKE $1 AND pid <> pg_backend_pid()",
        f"%{table}%", holder_pid,
    )
    return int(row[0]), int(row[1])


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not await condition():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("second", list(SECOND))
@pytest.mark.parametrize("first", list(FIRST))
async def test_batches_over_keys_that_sort_differently_never_deadlock(
    ledger: PostgresLedger, postgres_store_url: str, prefix: str, first: str, second: str
) -> None:
    """Two workers' batches over k:A and k:a, e.g. a claim and a release: H1 holds k:a and
    H2 holds k:A; the release waits for H2; the claim starts; H1 lets go, and the claim,
    had it locked k:a first (the database's order), now holds k:a and waits for k:A; H2
    lets go, the release takes k:A and waits for k:a: a cycle, which PostgreSQL breaks by
    failing one of them. In byte order both wait for k:A first, and both go through."""
    other = PostgresLedger.from_url(
        postgres_store_url, table=f"{prefix}_ledger", timeout=PATIENCE, sweep_interval=0
    )
    try:
        claims = await asyncio.gather(*(
            ledger.claim(key=k, job_id=job_of(k), payload=P1, fingerprint=F1, token="t0", lease=PATIENCE)
            for k in PAIR
        ))
        assert all(isinstance(c, Claimed) for c in claims), claims
        table = ledger._t
        async with connect(postgres_store_url) as h1, connect(postgres_store_url) as h2, \
                connect(postgres_store_url) as watch:
            held1, held2 = h1.transaction(), h2.transaction()
            await held1.start()
            await held2.start()
            await h2.fetch(f"SELECT 1 FROM {table} WHERE key = $1 FOR UPDATE", PAIR[0])
            await h1.fetch(f"SELECT 1 FROM {table} WHERE key = $1 FOR UPDATE", PAIR[1])
            h1_pid = await h1.fetchval("SELECT pg_backend_pid()")

            async def waiting(n: int, for_h1: int | None = None) -> bool:
                blocked, by_h1 = await ledger_sessions(watch, table, h1_pid)
                return blocked == n and (for_h1 is None or by_h1 == for_h1)

            two = asyncio.ensure_future(asyncio.gather(*(SECOND[second](other, k) for k in PAIR)))
            await until(lambda: waiting(1), f"the {second} batch waits")
            one = asyncio.ensure_future(asyncio.gather(*(FIRST[first](ledger, k) for k in PAIR)))
            await until(lambda: waiting(2), f"the {first} batch waits too")
            await held1.rollback()
            await until(lambda: waiting(2, for_h1=0), f"the {first} batch waits for the next row")
            await held2.rollback()
            results = await asyncio.wait_for(asyncio.gather(one, two, return_exceptions=True), PATIENCE)
        assert not [r for r in results if isinstance(r, BaseException)], results
    finally:
        await other.aclose()
