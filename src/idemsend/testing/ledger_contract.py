"""The ledger state machine as a test suite: run it over your own ledger.

``LedgerContract`` holds the tests every ``idemsend.ledger.Ledger`` must pass (the ones
idemsend runs over MemoryLedger, RedisLedger and RedisLedger on Cluster): claim,
complete, fail, renew, release, forget and clear; leases and ``Busy``; ``Unstable`` and
``Conflict``; age on the ledger's clock; ``recreated``, ``missing`` and ``superseded``;
the frozen body; and the engine on top (drifted bodies, unstable keys, stale replays,
lost completions). Subclass it in a test module (a ``Test*`` class) and provide:

* ``make_ledger`` (required): an async factory ``await make_ledger(retention=None)``
  returning a ledger ready for use (started, if yours needs ``start()`` first) over
  **the one store this test uses** (each call another instance, as a second worker
  would have, or the same object for an in-process store). Use a fresh namespace per
  test (a key prefix, a schema, an empty database) and close what it made at teardown.
  ``retention`` (seconds) is the ledger's retention when given.
* ``ledger``: the ledger under test; by default ``await make_ledger()``.
* ``store_forget`` (optional): ``await store_forget()`` loses every record, as a
  FLUSHALL or a restart without persistence does.
* ``store_restart`` (optional): ``await store_restart()`` restarts the store, keeping
  the data if it persists; the ledgers already made must carry on afterwards.
* ``store_backdate`` (optional): ``await store_backdate(key, seconds)`` moves the
  first-sent time of ``key``'s record ``seconds`` back on the store's clock (negative:
  into the future), as if the first claim had been made that long ago.

Tests that need a capability your subclass does not provide are skipped, saying which.
The tests run on asyncio (``anyio_backend`` is ``"asyncio"`` here). An example, for a
ledger over SQLite::

    import pytest
    from idemsend.testing.ledger_contract import LedgerContract
    from mypackage import SqliteLedger

    class TestSqliteLedger(LedgerContract):
        @pytest.fixture
        async def make_ledger(self, tmp_path):
            made = []
            async def make(*, retention=None):
                options = {} if retention is None else {"retention": retention}
                made.append(SqliteLedger(tmp_path / "ledger.db", **options))
                return made[-1]
            yield make
            for ledger in made:
                await ledger.aclose()

        @pytest.fixture
        def store_forget(self, tmp_path):
            async def forget():
                (tmp_path / "ledger.db").unlink()
            return forget

Run it with ``pytest`` and anyio's pytest plugin (``pip install 'idemsend[test]'`` brings both).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import pytest

from .._body import canonical_body, fingerprint
from .._config import Provider, RetryPolicy
from .._engine import Engine
from .._errors import FatalError, InvalidJobIdError, MismatchError, RetryableError, StaleReplayError, UnstableKeyError
from .._keys import MAX_JOB_ID_BYTES, Job
from ..ledger._base import Busy, Claimed, Conflict, Done, Failed, Ledger, LedgerUnavailableError, Unstable
from ._mock import MockProvider

__all__ = ["Backdate", "LedgerContract", "MakeLedger", "StoreAction"]

T = TypeVar("T")


class MakeLedger(Protocol):
    """The ``make_ledger`` fixture: a new ledger over the test's one store."""

    def __call__(self, *, retention: float | None = None) -> Awaitable[Ledger]: ...


#: ``store_forget`` and ``store_restart``: do it to the store, return when done.
StoreAction = Callable[[], Awaitable[None]]
#: ``store_backdate(key, seconds)``.
Backdate = Callable[[str, float], Awaitable[None]]

P1, P2 = b'{"to":["a"]}', b'{"to":["b"]}'
F1, F2 = fingerprint(P1), fingerprint(P2)
KEY = "welcome:{user_id}:{job_id}"
BODY = {"to": ["ada@example.com"], "name": "Ada"}
HOUR = 3600.0
#: The worker clocks the age tests try: ten hours behind, right, ten hours ahead.
SKEWS = (-10 * HOUR, 0.0, 10 * HOUR)


def _need(value: T | None, fixture: str, what: str) -> T:
    if value is None:
        pytest.skip(f"this store provides no `{fixture}` fixture ({what})")
    return value


def _engine(p: MockProvider, ledger: Ledger | None, **kw: Any) -> Engine:
    kw.setdefault("retry", RetryPolicy(backoff=0.01))
    return Engine(p.emails_url, key=KEY, api_key=p.api_key, ledger=ledger, **kw)


async def _until_available(call: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
    """``call()`` once the store answers again (after a restart a ledger may fail a call
    or two with LedgerUnavailableError while it reconnects; it must not fail for good)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except LedgerUnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


class LedgerContract:
    """The tests every Ledger must pass; see the module docstring for the fixtures to
    provide. Not collected itself (its name does not start with ``Test``)."""

    # -- fixtures a subclass provides ------------------------------------------------

    @pytest.fixture
    def anyio_backend(self) -> str:
        """Ledgers run on asyncio."""
        return "asyncio"

    @pytest.fixture
    def make_ledger(self) -> MakeLedger:
        """Override: an async factory of ledgers over this test's store."""
        raise NotImplementedError(f"{type(self).__name__} must provide a `make_ledger` fixture")

    @pytest.fixture
    async def ledger(self, make_ledger: MakeLedger) -> Ledger:
        """The ledger under test: ``await make_ledger()`` unless overridden."""
        return await make_ledger()

    @pytest.fixture
    def store_forget(self) -> StoreAction | None:
        """Override (optional): lose every record, like FLUSHALL."""
        return None

    @pytest.fixture
    def store_restart(self) -> StoreAction | None:
        """Override (optional): restart the store, keeping the data if it persists."""
        return None

    @pytest.fixture
    def store_backdate(self) -> Backdate | None:
        """Override (optional): move a record's first-sent time back on the store's clock."""
        return None

    # -- the state machine -------------------------------------------------------------

    @pytest.mark.anyio
    async def test_is_a_ledger(self, ledger: Ledger) -> None:
        """The ledger implements the ``Ledger`` protocol (every method present)."""
        assert isinstance(ledger, Ledger)

    @pytest.mark.anyio
    async def test_start_can_be_called_again(self, ledger: Ledger) -> None:
        """``start`` succeeds on a fit store, and a second call (once checked) does too."""
        await ledger.start()
        await ledger.start()

    @pytest.mark.anyio
    async def test_claim_complete_then_done(self, ledger: Ledger) -> None:
        """A fresh claim, Busy for another token, ``complete`` by the owner only, then
        ``Done`` for every later claim; a done record is settled for good."""
        claim = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
        assert isinstance(claim, Claimed) and claim.fresh and claim.payload == P1 and claim.fingerprint == F1
        assert abs(claim.first_sent_at - time.time()) < 5 and claim.age == 0
        busy = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-b", lease=30)
        assert isinstance(busy, Busy) and 25 < busy.retry_after <= 30
        assert await ledger.complete(key="k", token="tok-b", response={"id": "x"}) == "superseded"
        assert await ledger.complete(key="k", token="tok-a", response={"id": "em_1", "status": 200}) == "ok"
        done = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-c", lease=30)
        assert done == Done({"id": "em_1", "status": 200}, F1)
        record = await ledger.get("k")
        assert record is not None and record.state == "done" and record.job_id == "j1" and record.fingerprint == F1
        assert record.response == {"id": "em_1", "status": 200} and record.lease_until is None
        assert record.key == "k" and abs(record.first_sent_at - claim.first_sent_at) < 0.01
        assert await ledger.get("missing") is None
        # a done record is settled for good: no token can complete, fail, renew or release it
        assert await ledger.complete(key="k", token="tok-a", response={"id": "again"}) == "superseded"
        assert await ledger.fail(key="k", token="tok-a", code="X", message="late") == "superseded"
        assert await ledger.renew(key="k", token="tok-a", lease=30) == "superseded"
        assert await ledger.release(key="k", token="tok-a", forget=True) == "superseded"
        record = await ledger.get("k")
        assert record is not None and record.state == "done" and record.response == {"id": "em_1", "status": 200}

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        ("bad_id", "named"),
        [
            ("", "non-empty"),
            ("job-\ud800", "lone surrogate"),
            ("job\x00id", "NUL"),
            ("j" * (MAX_JOB_ID_BYTES + 1), "over the limit"),
            ("\u00e9" * (MAX_JOB_ID_BYTES // 2 + 1), "UTF-8 bytes, over the limit"),
        ],
        ids=["empty", "lone-surrogate", "nul", "too-long", "too-long-in-utf8"],
    )
    async def test_a_job_id_no_ledger_can_store_is_refused_alone(
        self, ledger: Ledger, bad_id: str, named: str
    ) -> None:
        """One rule for every ledger: a job id that ``validate_job_id`` refuses raises
        ``InvalidJobIdError`` naming the problem, writes nothing, and a claim made at the
        same moment (same batch, on a group-commit ledger) still succeeds."""
        bad, good = await asyncio.gather(
            ledger.claim(key="bad", job_id=bad_id, payload=P1, fingerprint=F1, token="tok-a", lease=30),
            ledger.claim(key="good", job_id="j1", payload=P1, fingerprint=F1, token="tok-b", lease=30),
            return_exceptions=True,
        )
        assert isinstance(bad, InvalidJobIdError) and bad.code == "INVALID_JOB_ID", bad
        assert isinstance(good, Claimed) and good.fresh, good
        assert named in str(bad), str(bad)
        assert await ledger.get("bad") is None

    @pytest.mark.anyio
    async def test_in_flight_record_as_get_shows_it(self, ledger: Ledger) -> None:
        """``get`` shows an in-flight record with its job id, fingerprint and lease end."""
        claim = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
        assert isinstance(claim, Claimed)
        record = await ledger.get("k")
        assert record is not None and record.state == "in_flight" and record.job_id == "j1"
        assert record.fingerprint == F1 and record.response is None and record.code is None
        assert record.lease_until is not None and 25 < record.lease_until - claim.first_sent_at <= 30

    @pytest.mark.anyio
    async def test_the_same_token_claiming_again_resumes_its_claim(self, ledger: Ledger) -> None:
        """A claim by the token that holds the lease resumes it (frozen body), not Busy."""
        await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
        again = await ledger.claim(key="k", job_id="j1", payload=P2, fingerprint=F2, token="tok-a", lease=30)
        assert isinstance(again, Claimed) and not again.fresh and again.payload == P1 and again.fingerprint == F1

    @pytest.mark.anyio
    async def test_expired_lease_is_taken_over_with_the_frozen_body(self, ledger: Ledger) -> None:
        """Once a lease runs out another token resumes the record with the first body;
        the token that lost it is "superseded" and changes nothing."""
        first = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=0.2)
        assert isinstance(first, Claimed)
        await asyncio.sleep(0.3)
        # the body drifted meanwhile
        second = await ledger.claim(key="k", job_id="j1", payload=P2, fingerprint=F2, token="tok-b", lease=30)
        assert isinstance(second, Claimed) and not second.fresh
        assert (second.payload, second.fingerprint) == (P1, F1)
        assert abs(second.first_sent_at - first.first_sent_at) < 0.01
        assert 0.25 < second.age < 5
        before = await ledger.get("k")
        # the worker whose lease ran out cannot overwrite what tok-b owns now: "superseded"
        assert await ledger.complete(key="k", token="tok-a", response={"id": "stale"}) == "superseded"
        assert await ledger.fail(key="k", token="tok-a", code="X", message="stale") == "superseded"
        assert await ledger.renew(key="k", token="tok-a", lease=30) == "superseded"
        assert await ledger.release(key="k", token="tok-a") == "superseded"
        assert await ledger.release(key="k", token="tok-a", forget=True) == "superseded"
        assert await ledger.get("k") == before  # untouched: still tok-b's, same lease
        assert await ledger.complete(key="k", token="tok-b", response={"id": "em_2"}) == "ok"
        # Done carries the fingerprint of what was sent (the frozen body), not this claim's
        done = await ledger.claim(key="k", job_id="j1", payload=P2, fingerprint=F2, token="tok-c", lease=30)
        assert done == Done({"id": "em_2"}, F1)

    @pytest.mark.anyio
    async def test_renew_keeps_the_lease(self, ledger: Ledger) -> None:
        """``renew`` moves the lease end to ``lease`` seconds from now."""
        await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=0.3)
        await asyncio.sleep(0.15)
        assert await ledger.renew(key="k", token="tok-a", lease=5) == "ok"
        await asyncio.sleep(0.3)
        busy = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-b", lease=30)
        assert isinstance(busy, Busy) and 3 < busy.retry_after <= 5

    @pytest.mark.anyio
    async def test_release_keeps_the_record_and_frees_the_lease(self, ledger: Ledger) -> None:
        """``release`` drops the lease but keeps the record: the next claim resumes it."""
        await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
        assert await ledger.release(key="k", token="tok-a") == "ok"
        again = await ledger.claim(key="k", job_id="j1", payload=P2, fingerprint=F2, token="tok-b", lease=30)
        assert isinstance(again, Claimed) and not again.fresh and again.payload == P1
        record = await ledger.get("k")
        assert record is not None and record.state == "in_flight" and record.lease_until is not None

    @pytest.mark.anyio
    async def test_release_with_forget_deletes_the_record(self, ledger: Ledger) -> None:
        """A fresh claim that provably sent nothing (a 401, a redirect) leaves no trace:
        no frozen body and no first-sent time to start the stale clock."""
        await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
        assert await ledger.release(key="k", token="tok-a", forget=True) == "ok"
        assert await ledger.get("k") is None
        again = await ledger.claim(key="k", job_id="j1", payload=P2, fingerprint=F2, token="tok-b", lease=30)
        assert isinstance(again, Claimed) and again.fresh and again.payload == P2 and again.age == 0
        assert await ledger.release(key="k", token="tok-b", forget=True) == "ok"
        assert await ledger.release(key="k", token="tok-b", forget=True) == "missing"

    @pytest.mark.anyio
    async def test_fail_is_terminal(self, ledger: Ledger) -> None:
        """A fatal record answers ``Failed`` to every claim and cannot be settled again."""
        await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
        assert await ledger.fail(key="k", token="tok-a", code="IDEMPOTENCY_MISMATCH", message="nope") == "ok"
        failed = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-b", lease=30)
        assert failed == Failed("IDEMPOTENCY_MISMATCH", "nope")
        record = await ledger.get("k")
        assert record is not None
        assert (record.state, record.code, record.message) == ("fatal", "IDEMPOTENCY_MISMATCH", "nope")
        assert record.lease_until is None and record.response is None
        assert await ledger.fail(key="k", token="tok-a", code="OTHER", message="again") == "superseded"
        assert await ledger.complete(key="k", token="tok-a", response={"id": "late"}) == "superseded"
        assert await ledger.renew(key="k", token="tok-a", lease=30) == "superseded"
        assert await ledger.release(key="k", token="tok-a") == "superseded"

    @pytest.mark.anyio
    async def test_settling_a_key_never_claimed_says_missing(self, ledger: Ledger) -> None:
        """No record at all is "missing", not "superseded", and fail/renew/release write nothing."""
        assert await ledger.fail(key="never", token="tok-a", code="X", message="y") == "missing"
        assert await ledger.renew(key="never", token="tok-a", lease=30) == "missing"
        assert await ledger.release(key="never", token="tok-a") == "missing"
        assert await ledger.release(key="never", token="tok-a", forget=True) == "missing"
        assert await ledger.get("never") is None

    @pytest.mark.anyio
    async def test_settling_a_record_the_store_lost_says_missing(
        self, ledger: Ledger, store_forget: StoreAction | None
    ) -> None:
        """A record lost to a restart without persistence, an eviction or retention is
        "missing", and fail/renew/release write nothing."""
        forget = _need(store_forget, "store_forget", "losing every record, like FLUSHALL")
        await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
        await forget()
        assert await ledger.renew(key="k", token="tok-a", lease=30) == "missing"
        assert await ledger.fail(key="k", token="tok-a", code="X", message="y") == "missing"
        assert await ledger.release(key="k", token="tok-a") == "missing"
        assert await ledger.release(key="k", token="tok-a", forget=True) == "missing"
        assert await ledger.get("k") is None

    @pytest.mark.anyio
    async def test_complete_recreates_a_lost_record(self, ledger: Ledger, store_forget: StoreAction | None) -> None:
        """The send happened but the store lost the record: complete writes a done record
        anyway ("recreated"), so a replay after the provider's window is not sent again."""
        forget = _need(store_forget, "store_forget", "losing every record, like FLUSHALL")
        await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
        await forget()
        assert await ledger.complete(key="k", token="tok-a", response={"id": "em_1", "status": 200}) == "recreated"
        record = await ledger.get("k")
        assert record is not None and record.state == "done" and record.response == {"id": "em_1", "status": 200}
        assert (record.job_id, record.fingerprint) == ("", "")
        assert abs(record.first_sent_at - time.time()) < 5
        # every later claim of the key is answered from the ledger (fingerprint unknown: "")
        done = Done({"id": "em_1", "status": 200}, "")
        assert await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-b", lease=30) == done
        assert await ledger.claim(key="k", job_id="j9", payload=P2, fingerprint=F2, token="tok-c", lease=30) == done
        assert await ledger.complete(key="k", token="tok-a", response={"id": "again"}) == "superseded"

    @pytest.mark.anyio
    async def test_clear_removes_only_fatal_records(self, ledger: Ledger) -> None:
        """``clear`` removes a fatal record only; done and in-flight records stay."""
        await ledger.claim(key="fatal", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
        await ledger.fail(key="fatal", token="tok-a", code="INVALID", message="bad address")
        await ledger.claim(key="done", job_id="j2", payload=P1, fingerprint=F1, token="tok-b", lease=30)
        await ledger.complete(key="done", token="tok-b", response={"id": "em_1"})
        await ledger.claim(key="flight", job_id="j3", payload=P1, fingerprint=F1, token="tok-c", lease=30)
        assert await ledger.clear("done") is False  # clearing it would allow a double send
        assert await ledger.clear("flight") is False
        assert await ledger.clear("nothing") is False
        assert await ledger.clear("fatal") is True
        assert await ledger.clear("fatal") is False
        assert await ledger.get("fatal") is None
        states = [(r.state if r else None) for r in [await ledger.get("done"), await ledger.get("flight")]]
        assert states == ["done", "in_flight"]
        # the job runs again after its fatal record is cleared
        again = await ledger.claim(key="fatal", job_id="j1", payload=P1, fingerprint=F1, token="tok-d", lease=30)
        assert isinstance(again, Claimed) and again.fresh

    @pytest.mark.anyio
    async def test_clear_refuses_a_stale_or_mismatched_record_unless_forced(self, ledger: Ledger) -> None:
        """A ``STALE_REPLAY`` record may stand for a send that ran, a mismatch for a key that
        ran with another body: clearing either could send twice, so only ``force`` does."""
        for key, code in (("stale", "STALE_REPLAY"), ("mismatch", "IDEMPOTENCY_MISMATCH")):
            await ledger.claim(key=key, job_id=key, payload=P1, fingerprint=F1, token="tok-a", lease=30)
            await ledger.fail(key=key, token="tok-a", code=code, message="a person looks at it")
            assert await ledger.clear(key) is False
            record = await ledger.get(key)
            assert record is not None and record.state == "fatal" and record.code == code
            assert await ledger.clear(key, force=True) is True
            assert await ledger.get(key) is None

    @pytest.mark.anyio
    async def test_unstable_key_is_reported_and_leaves_nothing_claimed(self, ledger: Ledger) -> None:
        """A job id claiming a second key gets ``Unstable`` and leaves no record behind."""
        first = await ledger.claim(key="key-1", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
        assert isinstance(first, Claimed)
        unstable = await ledger.claim(key="key-2", job_id="j1", payload=P1, fingerprint=F1, token="tok-b", lease=30)
        assert unstable == Unstable("key-1")
        assert await ledger.get("key-2") is None
        # key-2 was not left in flight: another job can take it at once
        claim = await ledger.claim(key="key-2", job_id="j2", payload=P1, fingerprint=F1, token="tok-c", lease=30)
        assert isinstance(claim, Claimed) and claim.fresh

    @pytest.mark.anyio
    async def test_same_key_other_job_other_body_is_a_conflict(self, ledger: Ledger) -> None:
        """Another job with another body on a recorded key is a ``Conflict``; the same
        body from another job is the same send."""
        await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
        # in flight, a live lease: still a conflict, not busy
        assert await ledger.claim(key="k", job_id="j2", payload=P2, fingerprint=F2, token="tok-x", lease=30) == (
            Conflict(F1)
        )
        await ledger.complete(key="k", token="tok-a", response={"id": "em_1"})
        assert await ledger.claim(key="k", job_id="j2", payload=P2, fingerprint=F2, token="tok-b", lease=30) == (
            Conflict(F1)
        )
        # same body from another job is the same send: answered from the ledger
        assert await ledger.claim(key="k", job_id="j3", payload=P1, fingerprint=F1, token="tok-c", lease=30) == (
            Done({"id": "em_1"}, F1)
        )

    @pytest.mark.anyio
    async def test_records_are_kept_for_retention_only(self, make_ledger: MakeLedger) -> None:
        """Records (done and fatal) are gone after the retention; the key is fresh again."""
        ledger = await make_ledger(retention=0.3)
        await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t", lease=30)
        await ledger.complete(key="k", token="t", response={"id": "x"})
        await ledger.claim(key="f", job_id="jf", payload=P1, fingerprint=F1, token="t", lease=30)
        await ledger.fail(key="f", token="t", code="X", message="y")
        await asyncio.sleep(0.45)
        assert await ledger.get("k") is None and await ledger.get("f") is None
        again = await ledger.claim(key="k", job_id="j", payload=P1, fingerprint=F1, token="t2", lease=30)
        assert isinstance(again, Claimed) and again.fresh

    # -- two workers over one store ------------------------------------------------------

    @pytest.mark.anyio
    async def test_two_ledgers_over_one_store_share_every_record(self, make_ledger: MakeLedger) -> None:
        """Two ledgers over one store (two workers) see each other's records and leases."""
        one, two = await make_ledger(), await make_ledger()
        claim = await one.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
        assert isinstance(claim, Claimed) and claim.fresh
        assert isinstance(await two.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-b", lease=30),
                          Busy)
        assert await two.claim(key="k2", job_id="j1", payload=P1, fingerprint=F1, token="tok-b", lease=30) == (
            Unstable("k")
        )
        assert await two.complete(key="k", token="tok-b", response={"id": "x"}) == "superseded"
        assert await one.complete(key="k", token="tok-a", response={"id": "em_1"}) == "ok"
        assert await two.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-c", lease=30) == (
            Done({"id": "em_1"}, F1)
        )
        record = await two.get("k")
        assert record is not None and record.state == "done"

    @pytest.mark.anyio
    async def test_concurrent_claims_of_one_key_have_one_winner(self, make_ledger: MakeLedger) -> None:
        """Twenty concurrent claims of one key from two ledgers: one winner, the rest
        Busy; the same for the takeover once the winner's lease ran out."""
        ledgers = [await make_ledger(), await make_ledger()]

        async def race(stage: str, lease: float, payload: bytes, fp: str) -> list[Any]:
            return list(await asyncio.gather(*(
                ledgers[i % 2].claim(
                    key="k", job_id="j1", payload=payload, fingerprint=fp, token=f"{stage}-{i}", lease=lease
                )
                for i in range(20)
            )))

        results = await race("first", 0.5, P1, F1)
        winners = [r for r in results if isinstance(r, Claimed)]
        assert len(winners) == 1 and winners[0].fresh, results
        assert all(isinstance(r, Busy) for r in results if not isinstance(r, Claimed)), results
        await asyncio.sleep(0.6)  # the winner's lease runs out: the takeover is raced too
        results = await race("takeover", 30, P2, F2)
        winners = [r for r in results if isinstance(r, Claimed)]
        assert len(winners) == 1 and not winners[0].fresh and winners[0].payload == P1, results
        assert all(isinstance(r, Busy) for r in results if not isinstance(r, Claimed)), results

    # -- clocks ------------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_age_is_measured_on_the_ledgers_clock(self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
        """A worker whose clock is hours off gets the age the ledger's clock says. (A
        ledger reads its store's clock, or a clock it was given, never the worker's
        ``time.time()`` at call time.)"""
        first = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
        assert isinstance(first, Claimed)
        assert await ledger.release(key="k", token="tok-a") == "ok"
        await asyncio.sleep(0.3)
        real = time.time
        for i, skew in enumerate(SKEWS):
            monkeypatch.setattr(time, "time", lambda skew=skew: real() + skew)
            again = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token=f"tok-{i}", lease=30)
            monkeypatch.undo()
            assert isinstance(again, Claimed) and not again.fresh
            assert abs(again.first_sent_at - first.first_sent_at) < 0.01 and 0.25 < again.age < 5, (skew, again)
            assert await ledger.release(key="k", token=f"tok-{i}") == "ok"

    @pytest.mark.anyio
    async def test_age_of_an_old_record_whatever_the_workers_clock(
        self, ledger: Ledger, store_backdate: Backdate | None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A record first claimed two hours ago (on the store's clock) reports age ~7200 s
        whatever the calling worker's clock says; a first-sent time in the future (a
        clock that went backwards) never gives a negative age."""
        backdate = _need(store_backdate, "store_backdate", "moving a record's first-sent time back")
        first = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-a", lease=30)
        assert isinstance(first, Claimed)
        await ledger.release(key="k", token="tok-a")
        await backdate("k", 7200)
        real = time.time
        for i, skew in enumerate(SKEWS):
            monkeypatch.setattr(time, "time", lambda skew=skew: real() + skew)
            again = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token=f"tok-{i}", lease=30)
            monkeypatch.undo()
            assert isinstance(again, Claimed) and not again.fresh
            assert 7200 <= again.age < 7210, (skew, again)
            assert abs(again.first_sent_at - (first.first_sent_at - 7200)) < 0.01
            await ledger.release(key="k", token=f"tok-{i}")
        await backdate("k", -3 * HOUR)  # now an hour in the future
        ahead = await ledger.claim(key="k", job_id="j1", payload=P1, fingerprint=F1, token="tok-x", lease=30)
        assert isinstance(ahead, Claimed) and ahead.age == 0

    # -- the engine over the ledger ------------------------------------------------------

    @pytest.mark.anyio
    async def test_engine_judges_staleness_by_the_ledgers_clock(
        self, ledger: Ledger, make_ledger: MakeLedger, store_backdate: Backdate | None,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """An unknown outcome first sent 23.5 h ago (the store's clock) is stale (window
        24 h, margin 1 h) even for a worker whose clock is 10 h behind: nothing is resent."""
        backdate = _need(store_backdate, "store_backdate", "moving a record's first-sent time back")
        key, payload = "welcome:u1:j1", canonical_body(BODY)
        async with MockProvider() as p:
            claim = await ledger.claim(
                key=key, job_id="j1", payload=payload, fingerprint=fingerprint(payload), token="crashed", lease=30
            )
            assert isinstance(claim, Claimed)
            await ledger.release(key=key, token="crashed")  # the worker died with the outcome unknown
            await backdate(key, 23.5 * HOUR)
            real = time.time
            monkeypatch.setattr(time, "time", lambda: real() - 10 * HOUR)
            async with _engine(p, ledger) as e:
                with pytest.raises(StaleReplayError):
                    await e.send(Job("j1", {"user_id": "u1"}), BODY)
            monkeypatch.undo()
            assert p.stats.requests == 0
        check = await make_ledger()
        record = await check.get(key)
        assert record is not None and record.state == "fatal" and record.code == "STALE_REPLAY"

    @pytest.mark.anyio
    async def test_replay_after_the_provider_window(self, ledger: Ledger) -> None:
        """A replay after the provider forgot the key is answered from the ledger."""
        now = [time.time()]
        async with MockProvider(clock=lambda: now[0]) as p:
            job = Job("j1", {"user_id": "u1"})
            async with _engine(p, ledger) as e:
                await e.send(job, BODY)
                now[0] += 25 * HOUR  # the provider has forgotten the key
                again = await e.send(job, BODY)
            assert again.from_ledger and again.replayed and again.attempts == 0
            assert p.sends == 1 and p.stats.requests == 1
            # without a ledger the gotcha is real: the same replay sends twice
            async with _engine(p, None) as bare:
                await bare.send(job, BODY)
            assert p.sends == 2 and p.double_sends() == {"welcome:u1:j1": 2}

    @pytest.mark.anyio
    async def test_drifted_body_resends_the_first_bytes(
        self, ledger: Ledger, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An unknown outcome resumed with a changed body sends the first bytes, and logs both."""
        async with MockProvider() as p:
            job = Job("j1", {"user_id": "u1"})
            async with _engine(p, ledger, retry=0) as e:
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

    @pytest.mark.anyio
    async def test_timestamp_in_the_key_is_unstable(self, ledger: Ledger) -> None:
        """A key template that changes between retries raises ``UnstableKeyError``."""
        async with MockProvider() as p:
            async with Engine(p.emails_url, key="welcome:{job_id}:{ts}", api_key=p.api_key, ledger=ledger) as e:
                await e.send(Job("j1", {"ts": "1700000000"}), BODY)
                with pytest.raises(UnstableKeyError) as info:
                    await e.send(Job("j1", {"ts": "1700000005"}), BODY)
            assert info.value.recorded_key == "welcome:j1:1700000000" and info.value.code == "UNSTABLE_KEY"
            assert p.sends == 1 and p.stats.requests == 1

    @pytest.mark.anyio
    async def test_unstable_key_after_a_failed_first_attempt_sends_at_most_once(self, ledger: Ledger) -> None:
        """An unstable key after a failed first try sends nothing the second time."""
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

    @pytest.mark.anyio
    async def test_unknown_outcome_past_the_window_is_stale(self, ledger: Ledger) -> None:
        """An unknown outcome older than the provider window is not resent: STALE_REPLAY,
        recorded fatal."""
        async with MockProvider() as p:
            job = Job("j1", {"user_id": "u1"})
            async with _engine(p, ledger, retry=0, provider=Provider(window=0.6, stale_margin=0.3)) as e:
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

    @pytest.mark.anyio
    async def test_mismatch_is_recorded_fatal(self, ledger: Ledger) -> None:
        """A provider's mismatch answer is recorded fatal and answered from the ledger."""
        async with MockProvider() as p:
            async with Engine(p.emails_url, key="welcome:{user_id}", api_key=p.api_key) as bare:
                await bare.send(Job("other", {"user_id": "u1"}), {"x": 1})  # the key, used with another body
            async with Engine(p.emails_url, key="welcome:{user_id}", api_key=p.api_key, ledger=ledger) as e:
                with pytest.raises(MismatchError):
                    await e.send(Job("j1", {"user_id": "u1"}), BODY)
                with pytest.raises(MismatchError):
                    await e.send(Job("j1", {"user_id": "u1"}), BODY)
            assert p.stats.requests == 2  # the second answer came from the ledger

    @pytest.mark.anyio
    async def test_leases_are_renewed_while_a_send_runs(self, ledger: Ledger, make_ledger: MakeLedger) -> None:
        """The engine renews its lease during a long send; another worker sees Busy."""
        other = await make_ledger()  # another worker, same store
        async with MockProvider() as p:
            p.delay("welcome:u1:j1", 1.6)
            async with _engine(p, ledger, lease=0.6) as e:
                task = asyncio.ensure_future(e.send(Job("j1", {"user_id": "u1"}), BODY))
                await asyncio.sleep(1.2)  # two leases long: only renewal keeps it
                record = await other.get("welcome:u1:j1")
                assert record is not None and record.state == "in_flight"
                assert record.lease_until is not None and record.lease_until > time.time()
                intruder = await other.claim(
                    key="welcome:u1:j1", job_id="j1", payload=b"{}", fingerprint="x", token="intruder", lease=5
                )
                assert isinstance(intruder, Busy)
                result = await task
            assert not result.replayed and p.sends == 1

    @pytest.mark.anyio
    async def test_a_completion_the_store_lost_is_recorded_again(
        self, ledger: Ledger, store_forget: StoreAction | None
    ) -> None:
        """The store loses everything while a send is at the provider: the completion finds
        no record, writes the done record anew ("recreated"), and a replay after the
        provider's window is answered from the ledger instead of being sent again."""
        forget = _need(store_forget, "store_forget", "losing every record, like FLUSHALL")
        now = [time.time()]
        job, key = Job("j1", {"user_id": "u1"}), "welcome:u1:j1"
        async with MockProvider(clock=lambda: now[0]) as p:
            p.delay(key, 1.0)
            async with _engine(p, ledger, lease=5.0) as e:
                task = asyncio.ensure_future(e.send(job, BODY))
                deadline = time.monotonic() + 10
                while p.stats.requests < 1:  # claimed, and the POST is at the provider
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                await forget()
                sent = await task
                record = await ledger.get(key)
                assert record is not None and record.state == "done" and record.response is not None
                assert record.response["id"] == sent.id
                now[0] += 25 * HOUR  # the provider has forgotten the key
                again = await e.send(job, BODY)
            assert again.from_ledger and again.id == sent.id
            assert p.sends == 1 and not p.double_sends()

    # -- a store restart -------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_the_ledger_carries_on_after_a_store_restart(
        self, ledger: Ledger, store_restart: StoreAction | None
    ) -> None:
        """After a restart the same ledger object answers again (it reconnects, reloads
        what it cached), and every answer fits what the store kept: a record kept is
        settled as usual, a record lost is "missing" (complete: "recreated")."""
        restart = _need(store_restart, "store_restart", "restarting the store")
        for key in ("a", "b", "c"):
            claim = await ledger.claim(key=key, job_id=f"job-{key}", payload=P1, fingerprint=F1, token="tok", lease=30)
            assert isinstance(claim, Claimed)
        assert await ledger.complete(key="c", token="tok", response={"id": "em_c"}) == "ok"
        await restart()
        c = await _until_available(lambda: ledger.get("c"))
        assert c is None or (c.state == "done" and c.response == {"id": "em_c"})
        kept_a = await ledger.get("a") is not None
        assert await ledger.renew(key="a", token="tok", lease=30) == ("ok" if kept_a else "missing")
        assert await ledger.release(key="a", token="tok") == ("ok" if kept_a else "missing")
        kept_b = await ledger.get("b") is not None
        assert await ledger.complete(key="b", token="tok", response={"id": "em_b"}) == (
            "ok" if kept_b else "recreated"
        )
        b = await ledger.get("b")
        assert b is not None and b.state == "done" and b.response == {"id": "em_b"}
        again = await ledger.claim(key="c", job_id="job-c", payload=P1, fingerprint=F1, token="tok-2", lease=30)
        if c is not None:
            assert again == Done({"id": "em_c"}, F1)
        else:
            assert isinstance(again, Claimed) and again.fresh

