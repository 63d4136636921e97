"""``judge(facts) -> Verdict``, the one policy for "is this store fit to be a ledger?",
row by row without a store; and the words each backend feeds it, pinned to the messages
the backends logged and raised before the policy was written once."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import pytest

from idemsend import ConfigError
from idemsend.ledger import Caution, Finding, StoreFacts, Verdict, judge

A, B = Finding("a:1", "has policy x"), Finding("b:2", "has policy y")
S = StoreFacts("Store", "StoreLedger")

# -- the policy, row by row ------------------------------------------------------------------


def test_a_store_with_no_finding_is_fit_and_quiet() -> None:
    assert judge(S) == Verdict(None, ()) and judge(S).fit


def test_too_old_is_refused_before_anything_else() -> None:
    facts = StoreFacts("Store", "StoreLedger", too_old=(Finding("a:1", "runs 1.0"), Finding("b:2", "runs 0.9")),
                       needs="2.0 or newer", evicts=(A,), forgets=(A,))
    verdict = judge(facts, allow_eviction=True)
    assert verdict == Verdict("StoreLedger needs 2.0 or newer: a:1 runs 1.0; b:2 runs 0.9", ())
    assert not verdict.fit


def test_eviction_is_refused_with_the_fix_and_the_way_to_accept_it() -> None:
    facts = StoreFacts("Store", "StoreLedger", evicts=(A, B), eviction="Eviction drops records.",
                       keep_records="Turn eviction off", forgets=(A,))
    verdict = judge(facts)
    assert verdict.warnings == ()  # refused: nothing else is said
    assert verdict.refusal == (
        "Store a:1 has policy x; b:2 has policy y. Eviction drops records. A done record lost that way means a"
        " replay of its job after the provider's idempotency window is sent again: a double send. Turn eviction"
        " off, or pass allow_eviction=True to StoreLedger to accept the risk."
    )


def test_eviction_allowed_is_a_warning() -> None:
    verdict = judge(StoreFacts("Store", "StoreLedger", evicts=(A,)), allow_eviction=True)
    assert verdict.fit
    [warning] = verdict.warnings
    assert warning.code == "eviction_allowed"
    assert warning.message == (
        "idemsend: Store a:1 has policy x. A done record lost that way means a replay of its job after the"
        " provider's idempotency window is sent again: a double send. Continuing because allow_eviction=True."
    )


def test_a_store_that_persists_nothing_is_a_warning() -> None:
    facts = StoreFacts("Store", "StoreLedger", forgets=(Finding("a:1", "save off"), Finding("b:2", "aof off")),
                       persist="turn it on")
    [warning] = judge(facts).warnings
    assert warning.code == "no_persistence"
    assert warning.message.startswith("idemsend: Store a:1, b:2 persists nothing (save off; aof off): a restart")
    assert warning.message.endswith("(a double send). Fine for development and CI; turn it on.")


def test_what_a_crash_loses_is_a_warning_naming_each_server_once() -> None:
    facts = StoreFacts("Store", "StoreLedger", loses=(Finding("db", "fsync off"), Finding("db", "sync off")))
    [warning] = judge(facts).warnings
    assert warning == Caution("no_durability", (
        "idemsend: Store (db) may lose records: fsync off; sync off. A done record lost that way means a replay of"
        " its job after the provider's idempotency window is sent again (a double send). Fine for development and"
        " CI; not in production."
    ))


def test_a_store_that_could_not_be_checked_is_a_warning() -> None:
    [warning] = judge(StoreFacts("Store", "StoreLedger", unchecked=(Finding("a:1", "CONFIG: no"),))).warnings
    assert warning.code == "unchecked"
    assert warning.message.startswith("idemsend: could not check Store a:1 (CONFIG: no): make sure it never evicts")


def test_every_warning_in_order_cautions_last() -> None:
    caution = Caution("isolation", "idemsend: serializable")
    facts = StoreFacts("Store", "StoreLedger", evicts=(A,), forgets=(A,), loses=(B,), unchecked=(B,),
                       cautions=(caution,))
    codes = [w.code for w in judge(facts, allow_eviction=True).warnings]
    assert codes == ["eviction_allowed", "no_persistence", "no_durability", "unchecked", "isolation"]
    assert judge(facts, allow_eviction=True).warnings[-1] is caution


def test_enforce_raises_a_refusal_and_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="idemsend.ledger"), pytest.raises(ConfigError, match="needs"):
        Verdict("StoreLedger needs more", (Caution("x", "not logged"),)).enforce()
    assert caplog.records == []
    Verdict(None, (Caution("x", "y"),)).refuse()  # refuse() only raises


def test_enforce_logs_each_warning_with_its_code(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="idemsend.ledger"):
        Verdict(None, (Caution("one", "first"), Caution("two", "second"))).enforce()
    got = [(r.levelno, r.getMessage(), r.__dict__["idemsend_code"], r.__dict__["idemsend_op"]) for r in caplog.records]
    assert got == [(logging.WARNING, "first", "one", "start"), (logging.WARNING, "second", "two", "start")]


# -- the words each backend feeds it: the same messages as before ----------------------------

needs_redis = pytest.mark.skipif(importlib.util.find_spec("redis") is None, reason="needs redis (idemsend[redis])")


def _redis_server(node: str, **kw: Any) -> Any:
    from idemsend.ledger._redis._fitness import ServerFacts

    return ServerFacts(node, **kw)


@needs_redis
def test_redis_eviction_refusal_and_warning_read_as_before() -> None:
    from idemsend.ledger._redis._fitness import store_facts

    servers = [
        _redis_server("a:1", via="CONFIG GET", policy="allkeys-lru", maxmemory="0", persisted=True, version="7.2.4"),
        _redis_server("b:2", via="INFO", policy="volatile-ttl", maxmemory="100", persisted=True, version="7.2.4"),
        _redis_server("c:3", via="CONFIG GET", policy="noeviction", maxmemory="0", persisted=True, version="7.2.4"),
    ]
    where = ("a:1 has maxmemory-policy allkeys-lru (maxmemory 0, read with CONFIG GET); b:2 has maxmemory-policy"
             " volatile-ttl (maxmemory 100, read with INFO)")
    risk = (  # RedisLedger._judge's text, before judge()
        f"Redis {where}. A Redis that may evict keys can drop ledger records under memory"
        " pressure (every ledger key has a TTL, so volatile-* policies evict them as readily as"
        " allkeys-* ones; with maxmemory 0 nothing is evicted until a limit is set). A done record"
        " lost that way means a replay of its job after the provider's idempotency window is sent"
        " again: a double send."
    )
    assert judge(store_facts(servers)).refusal == (
        f"{risk} Set maxmemory-policy noeviction (a full Redis then refuses writes and the"
        " ledger fails closed), or pass allow_eviction=True to RedisLedger to accept the risk."
    )
    assert judge(store_facts(servers), allow_eviction=True).warnings == (
        Caution("eviction_allowed", f"idemsend: {risk} Continuing because allow_eviction=True."),
    )


@needs_redis
def test_redis_persistence_unchecked_and_version_read_as_before() -> None:
    from idemsend.ledger._redis._fitness import store_facts

    servers = [
        _redis_server("a:1", via="CONFIG GET", policy="noeviction", persisted=False,
                      persistence="appendonly no, save ''"),
        _redis_server("b:2", via="CONFIG GET", policy="noeviction", persisted=False,
                      persistence="appendonly no, save ''"),
        _redis_server("c:3", errors=["CONFIG GET: unknown command", "INFO: unknown command"]),
    ]
    assert judge(store_facts(servers)).warnings == (
        Caution("no_persistence", (
            "idemsend: Redis a:1, b:2 persists nothing (appendonly no, save ''; appendonly no, save ''): a restart"
            " loses every ledger record, and a done record lost that way means a replay of its job after the"
            " provider's idempotency window is sent again (a double send). Fine for development and CI; in"
            " production enable appendonly yes (or RDB save points, which lose the writes since the last snapshot)."
        )),
        Caution("unchecked", (
            "idemsend: could not check Redis c:3 (CONFIG GET: unknown command; INFO: unknown command): make sure"
            " maxmemory-policy is noeviction and persistence (appendonly yes) is on, or ledger records can vanish"
            " and a replay after the provider's idempotency window is sent again (a double send)."
        )),
    )
    old = [_redis_server("a:1", policy="noeviction", persisted=True, version="6.2.14"),
           _redis_server("b:2", policy="noeviction", persisted=True, version="7.0.0")]
    assert judge(store_facts(old)).refusal == (
        "RedisLedger needs Redis 7.0 or newer (its scripts use SET with both NX and GET): a:1 runs Redis 6.2.14"
    )


@pytest.mark.postgres
@pytest.mark.skipif(importlib.util.find_spec("asyncpg") is None, reason="needs asyncpg (idemsend[postgres])")
def test_postgres_durability_and_isolation_read_as_before() -> None:
    from idemsend.ledger._postgres._fitness import store_facts as _store_facts

    row = (160002, "worker", "app", "off", "off", "serializable", True, True, True, True, "u")
    assert judge(_store_facts(row, "idemsend_ledger")).warnings == (
        Caution("no_durability", (
            "idemsend: the ledger's PostgreSQL (database app) may lose records: fsync is off (an operating-system"
            " crash can lose committed records); synchronous_commit is off (a server crash loses the last commits);"
            " idemsend_ledger is UNLOGGED (a server crash empties it). A done record lost that way means a replay"
            " of its job after the provider's idempotency window is sent again (a double send). Fine for"
            " development and CI; not in production."
        )),
        Caution("isolation", (
            "idemsend: default_transaction_isolation is 'serializable' for role worker: concurrent claims of one key"
            " then fail with serialization errors (LedgerUnavailableError, retried) instead of waiting. Run ALTER"
            " ROLE worker SET default_transaction_isolation = 'read committed'."
        )),
    )
    durable = (160002, "worker", "app", "on", "on", "read committed", True, True, True, True, "p")
    assert judge(_store_facts(durable, "idemsend_ledger")) == Verdict(None, ())
    old = (110005, "worker", "app", "on", "on", "read committed", True, True, True, True, "p")
    refusal = "PostgresLedger needs PostgreSQL 12 or newer: database app runs PostgreSQL 11.5"
    assert judge(_store_facts(old, "t")).refusal == refusal
