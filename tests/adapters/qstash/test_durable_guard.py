"""The default replay guard lives in the ledger's store, so it outlives a restart (issue
18, item 9): over real Redis, Redis Cluster and PostgreSQL, a "restart" being a new
handler, engine and ledger (new clients and pools) over the same store.

Where these run: the Redis and Cluster cases in the dev environment (``pytest
tests/adapters/qstash``); the PostgreSQL cases wherever asyncpg is installed (skipped,
saying so, where not), e.g. ``pip install 'idemsend[postgres]'`` in the dev venv."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from idemsend import ConfigError, Engine
from idemsend.adapters import qstash
from idemsend.adapters.qstash import InMemoryReplayGuard, QStashHandler, RedisReplayGuard
from idemsend.adapters.qstash._handler import CLOCK_SKEW_MARGIN
from idemsend.ledger import MemoryLedger
from idemsend.testing import MockProvider
from idemsend.testing._redis_server import free_port
from idemsend.testing.qstash import Attempt, QStashDeliverer, sign

from .conftest import GuardStore
from .test_qstash_security import CURRENT, MESSAGE, NEXT, serving

pytestmark = pytest.mark.anyio

PUBLIC = "https://hooks.example.com/qstash"  # the endpoint URL, the same for every process
RAW = json.dumps(MESSAGE).encode()

Post = Callable[[str, str], Awaitable[Attempt]]


def engine_on(provider: MockProvider, store: GuardStore) -> Engine:
    return Engine(
        provider.emails_url, key="welcome:{user_id}:{job_id}", api_key=provider.api_key, ledger=store.ledger()
    )


@asynccontextmanager
async def webhook_process(provider: MockProvider, store: GuardStore, **kw: Any) -> AsyncIterator[Post]:
    """One webhook "process": its own handler, engine and ledger (new clients, new pool)
    over ``store``, served until the block ends (then closed, as at a deploy)."""
    port = free_port()
    handler = QStashHandler(
        lambda: engine_on(provider, store), current_signing_key=CURRENT, next_signing_key=NEXT, url=PUBLIC, **kw
    )
    deliverer = QStashDeliverer(f"http://127.0.0.1:{port}/hook", signing_key=CURRENT, retries=0, sign_url=PUBLIC)

    async def post(message_id: str, signature: str) -> Attempt:
        return (await deliverer.deliver(RAW, message_id=message_id, signature=signature)).last

    async with serving(handler, port):
        yield post


def code(attempt: Attempt) -> str | None:
    body = attempt.body
    return body.get("error", {}).get("code") if isinstance(body, dict) else None


# -- the regression: a replay after a restart -------------------------------------------------


async def test_a_captured_delivery_replayed_after_a_restart_is_refused(guard_store: GuardStore) -> None:
    captured = sign(RAW, PUBLIC, CURRENT)
    async with MockProvider() as provider:
        async with webhook_process(provider, guard_store) as post:
            first = await post("msg_original", captured)
            assert first.status == 200, first.body
        # the deploy: every process goes, new ones come, over the same store
        async with webhook_process(provider, guard_store) as post:
            replay = await post("msg_fresh_after_restart", captured)
            assert replay.status == 401, replay.body
            assert code(replay) == "REPLAYED_SIGNATURE"
            duplicate = await post("msg_original", captured)  # the same delivery again: not a replay
            assert duplicate.status == 200 and duplicate.body["replayed"] is True
        assert provider.sends == 1
        assert provider.stats.requests == 1  # the replay sent nothing; the duplicate came from the ledger


async def test_the_default_guard_is_kept_in_the_ledgers_store(guard_store: GuardStore) -> None:
    async with MockProvider() as provider:
        engine = engine_on(provider, guard_store)
        handler = QStashHandler(engine, current_signing_key=CURRENT, next_signing_key=NEXT, url=PUBLIC)
        guard = handler.replay_guard
        try:
            await engine.start()
            await handler.engine()
            exp = time.time() + 300
            expected = {"postgres": qstash.PostgresReplayGuard, "sqlite": qstash.SQLiteReplayGuard}.get(
                guard_store.kind, RedisReplayGuard
            )
            assert isinstance(guard, expected) and guard is not None
            assert await guard.remember("jti-kept", "msg_a", exp + CLOCK_SKEW_MARGIN) == "msg_a"
            left = await _seconds_kept(guard, "jti-kept")
            # kept while any host may still accept the token (plus the skew margin), not much longer
            assert exp - time.time() + CLOCK_SKEW_MARGIN - 5 < left <= exp - time.time() + CLOCK_SKEW_MARGIN + 1
        finally:
            await handler.aclose()
            await engine.aclose()


async def _seconds_kept(guard: Any, jti: str) -> float:
    if isinstance(guard, RedisReplayGuard):
        return float(await guard.redis.pttl(guard.prefix + jti)) / 1000
    if isinstance(guard, qstash.SQLiteReplayGuard):  # read on a connection of its own
        import sqlite3

        con = sqlite3.connect(guard.path)
        try:
            [(expires,)] = con.execute(f'SELECT expires_at FROM "{guard.table}" WHERE jti = ?', (jti,)).fetchall()
        finally:
            con.close()
        return float(expires) - time.time()
    async with (await guard._pool()).acquire() as con:
        left = await con.fetchval(
            f"SELECT extract(epoch FROM expires_at - now()) FROM {guard._t} WHERE jti = $1", jti
        )
    return float(left)


# -- concurrency: one token, many message ids at once -----------------------------------------


async def test_concurrent_replays_of_one_token_let_exactly_one_through(guard_store: GuardStore) -> None:
    fresh = sign(RAW, PUBLIC, CURRENT)  # never delivered: every copy races for it
    async with MockProvider() as provider:
        async with webhook_process(provider, guard_store) as a, webhook_process(provider, guard_store) as b:
            answers = await asyncio.gather(*(
                (a if i % 2 else b)(f"msg_race_{i}", fresh) for i in range(20)
            ))
        statuses = sorted(attempt.status for attempt in answers)
        assert statuses == [200] + [401] * 19, [(x.status, x.body) for x in answers]
        assert all(code(x) == "REPLAYED_SIGNATURE" for x in answers if x.status == 401)
        assert provider.sends == 1


async def test_concurrent_remembers_over_two_clients_agree_on_the_first(guard_store: GuardStore) -> None:
    ledgers = [guard_store.ledger(), guard_store.ledger()]
    try:
        for ledger in ledgers:
            await ledger.start()
        guards = [qstash.durable_guard_for(ledger) for ledger in ledgers]
        for guard in guards:
            start = getattr(guard, "start", None)
            if start is not None:
                await start()
        exp = time.time() + 300
        for round_ in range(5):
            jti = f"jti-race-{round_}"
            firsts = await asyncio.gather(*(
                guards[i % 2].remember(jti, f"msg_{i}", exp) for i in range(50)  # type: ignore[union-attr]
            ))
            assert len(set(firsts)) == 1, firsts  # one message id won, and every caller was told which
    finally:
        for ledger in ledgers:
            await ledger.aclose()


# -- fail closed ---------------------------------------------------------------------------------


async def test_the_guard_fails_closed_when_its_store_is_down(own_guard_store: GuardStore) -> None:
    async with MockProvider() as provider:
        async with webhook_process(provider, own_guard_store) as post:
            ok = await post("msg_before", sign(RAW, PUBLIC, CURRENT))
            assert ok.status == 200, ok.body
            own_guard_store.server.stop()
            down = await post("msg_during", sign(RAW, PUBLIC, CURRENT))
            # refused by the guard itself (not only the ledger's claim after it), retryable
            assert down.status == 503, down.body
            assert code(down) == "REPLAY_GUARD_UNAVAILABLE"
            assert "Retry-After" not in down.headers  # QStash's own backoff spreads the retries
        assert provider.stats.requests == 1


# -- refusing a volatile guard -------------------------------------------------------------------


def _handler(engine: Any, **kw: Any) -> QStashHandler:
    return QStashHandler(engine, current_signing_key=CURRENT, next_signing_key=NEXT, url=PUBLIC, **kw)


@pytest.mark.parametrize("ledger", [None, MemoryLedger()], ids=["no ledger", "memory ledger"])
async def test_a_handler_without_a_durable_guard_is_refused(ledger: MemoryLedger | None) -> None:
    engine = Engine("http://127.0.0.1:9/api/v1/emails", key="k:{job_id}", api_key="x", ledger=ledger)
    with pytest.raises(ConfigError, match="allow_volatile_replay_guard=True"):
        _handler(engine)
    # an engine factory: refused when the app starts, before the engine is started
    made: list[Engine] = []

    def factory() -> Engine:
        made.append(engine)
        return engine

    handler = _handler(factory)
    with pytest.raises(ConfigError, match="no durable replay guard"):
        await handler.engine()
    assert made and repr(engine).endswith("not started>")  # refused before the engine was started
    # the explicit choices that need no durable store
    assert isinstance(_handler(engine, replay_guard=InMemoryReplayGuard()).replay_guard, InMemoryReplayGuard)
    assert _handler(engine, job_id_from="body").replay_guard is None


async def test_the_volatile_default_warns_at_start(caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine("http://127.0.0.1:9/api/v1/emails", key="k:{job_id}", api_key="x")
    handler = _handler(engine, allow_volatile_replay_guard=True)
    assert isinstance(handler.replay_guard, InMemoryReplayGuard)
    with caplog.at_level(logging.WARNING, logger="idemsend.qstash"):
        await handler.engine()
        await handler.engine()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "restart forgets every token" in warnings[0].getMessage()
    caplog.clear()
    explicit = _handler(engine, replay_guard=InMemoryReplayGuard())
    with caplog.at_level(logging.WARNING, logger="idemsend.qstash"):
        await explicit.engine()
    assert not caplog.records  # chosen explicitly: no warning
    await engine.aclose()


# -- the PostgreSQL guard's table -----------------------------------------------------------------


@pytest.fixture
async def pg_guard(qstash_postgres_url: str) -> AsyncIterator[Any]:
    """A PostgresReplayGuard over its own pool, a table of this test's own."""
    guard = qstash.PostgresReplayGuard.from_url(
        qstash_postgres_url, table=f"t_{time.time_ns()}_jti", create_table=True, sweep_interval=0
    )
    await guard.start()
    try:
        yield guard
    finally:
        async with (await guard._pool()).acquire() as con:
            await con.execute(f"DROP TABLE IF EXISTS {guard._t}")
        await guard.aclose()


@pytest.mark.postgres
async def test_an_expired_token_row_is_not_answered_and_is_swept(pg_guard: Any) -> None:
    async with (await pg_guard._pool()).acquire() as con:
        await con.executemany(
            f"INSERT INTO {pg_guard._t} (jti, message_id, expires_at) VALUES ($1, $2, now() - interval '1 hour')",
            [(f"old-{i}", "msg_old") for i in range(7)],
        )
    exp = time.time() + 300
    # an expired row is not a memory of the token: the new caller takes it
    assert await pg_guard.remember("old-0", "msg_new", exp) == "msg_new"
    assert await pg_guard.remember("old-0", "msg_other", exp) == "msg_new"
    pg_guard.sweep_batch = 2
    assert await pg_guard.sweep() == 6  # in batches of 2; the live row stays
    async with (await pg_guard._pool()).acquire() as con:
        assert await con.fetchval(f"SELECT array_agg(jti) FROM {pg_guard._t}") == ["old-0"]


@pytest.mark.postgres
async def test_a_missing_guard_table_is_a_config_error_quoting_the_sql(qstash_postgres_url: str) -> None:
    guard = qstash.PostgresReplayGuard.from_url(qstash_postgres_url, table="t_never_made_jti")
    try:
        with pytest.raises(ConfigError, match=r"(?s)does not exist.*CREATE TABLE IF NOT EXISTS \"t_never_made_jti\""):
            await guard.start()
    finally:
        await guard.aclose()
    assert qstash.guard_schema_sql("s.x").startswith('CREATE TABLE IF NOT EXISTS "s"."x"')
    with pytest.raises(ConfigError, match="invalid replay guard table name"):
        qstash.PostgresReplayGuard(table='x"; DROP TABLE y; --')
