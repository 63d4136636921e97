"""A replay where none is expected is loud (issue 20 item 6).

A provider replay on the first send of a key (a fresh ledger claim, or the queue's first
delivery) before any try of this call may have run means the provider had the key from
before: another job, or another system, used it. The result says ``replayed=True`` as
always, and also ``unexpected_replay=True``; the engine logs a WARNING (the key hashed) and
the hooks hear ``code="UNEXPECTED_REPLAY"``. A caller that grants something per successful
payment must not take such a result for a fresh one (CVE-2026-34210: mppx with Stripe's
``Idempotent-Replayed``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from idemsend import Engine, Job, OutcomeInfo, SendInfo, SendObserver
from idemsend._log import key_ref
from idemsend.ledger import MemoryLedger
from idemsend.testing import MockProvider

pytestmark = pytest.mark.anyio

TEMPLATE = "charge:{order_id}"
BODY = {"amount": 500, "currency": "usd"}


class Outcomes:
    def __init__(self) -> None:
        self.seen: list[OutcomeInfo] = []

    @contextmanager
    def send_scope(self, info: SendInfo) -> Iterator[SendObserver]:
        outcomes = self

        class Observer:
            def on_try(self, info: object) -> None: ...
            def on_wait(self, info: object) -> None: ...
            def on_ledger(self, info: object) -> None: ...
            def on_outcome(self, info: OutcomeInfo) -> None:
                outcomes.seen.append(info)

        yield Observer()


def _engine(provider: MockProvider, hook: Outcomes, **kw: object) -> Engine:
    return Engine(provider.emails_url, key=TEMPLATE, api_key=provider.api_key, hooks=hook, **kw)  # type: ignore[arg-type]


async def test_another_jobs_key_replayed_on_a_fresh_claim_is_flagged_logged_and_heard(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = Outcomes()
    async with MockProvider() as provider:
        # job A (through one ledger) and job B (another worker's ledger, or none) share an order id
        async with _engine(provider, hook, ledger=MemoryLedger()) as first:
            a = await first.send(Job("job-a", {"order_id": "o-1"}), BODY, attempt=1)
        async with _engine(provider, hook, ledger=MemoryLedger()) as second:
            with caplog.at_level(logging.WARNING, logger="idemsend"):
                b = await second.send(Job("job-b", {"order_id": "o-1"}), BODY, attempt=1)
        assert provider.sends == 1
    assert not a.replayed and not a.unexpected_replay
    assert b.replayed and b.unexpected_replay and b.id == a.id
    [warning] = [r for r in caplog.records if getattr(r, "idemsend_code", None) == "UNEXPECTED_REPLAY"]
    assert key_ref("charge:o-1") in warning.getMessage() and "charge:o-1" not in warning.getMessage()
    assert [o.code for o in hook.seen] == [None, "UNEXPECTED_REPLAY"]


async def test_without_a_ledger_the_queues_first_delivery_decides() -> None:
    hook = Outcomes()
    async with MockProvider() as provider, _engine(provider, hook) as engine:
        await engine.send(Job("job-a", {"order_id": "o-2"}), BODY, attempt=1)
        first = await engine.send(Job("job-b", {"order_id": "o-2"}), BODY, attempt=1)
        later = await engine.send(Job("job-b", {"order_id": "o-2"}), BODY, attempt=2)
        unknown = await engine.send(Job("job-b", {"order_id": "o-2"}), BODY)
    assert first.unexpected_replay  # the queue says it is job-b's first delivery
    assert not later.unexpected_replay and later.replayed  # a redelivery: its first may have run
    assert not unknown.unexpected_replay  # the queue did not say: nothing is claimed


async def test_a_replay_after_a_lost_answer_is_expected() -> None:
    hook = Outcomes()
    async with MockProvider() as provider, _engine(provider, hook, ledger=MemoryLedger()) as engine:
        provider.script("lost")  # the first try runs, its answer is lost; the retry is a replay
        result = await engine.send(Job("job-c", {"order_id": "o-3"}), BODY, attempt=1)
        assert provider.sends == 1
    assert result.replayed and not result.unexpected_replay
    assert [o.code for o in hook.seen] == [None]


async def test_a_replay_after_a_429_that_ran_nothing_is_still_unexpected() -> None:
    hook = Outcomes()
    async with MockProvider() as provider:
        async with _engine(provider, hook, ledger=MemoryLedger()) as first:
            await first.send(Job("job-a", {"order_id": "o-4"}), BODY, attempt=1)
        provider.script("429")
        async with _engine(provider, hook, ledger=MemoryLedger()) as second:
            b = await second.send(Job("job-b", {"order_id": "o-4"}), BODY, attempt=1)
    assert b.replayed and b.unexpected_replay and b.tries[0].status == 429


async def test_a_ledger_that_lost_the_record_is_named_as_a_possible_cause(caplog: pytest.LogCaptureFixture) -> None:
    # The same job, sent once; then its ledger forgets (a store restarted without persistence)
    # and the queue redelivers. A fresh claim cannot tell "another job used the key" from "the
    # ledger lost this job's record", so the replay is flagged, and the warning names both.
    hook = Outcomes()
    async with MockProvider() as provider:
        async with _engine(provider, hook, ledger=MemoryLedger()) as first:
            await first.send(Job("job-a", {"order_id": "o-3"}), BODY, attempt=1)
        async with _engine(provider, hook, ledger=MemoryLedger()) as forgetful:
            with caplog.at_level(logging.WARNING, logger="idemsend"):
                again = await forgetful.send(Job("job-a", {"order_id": "o-3"}), BODY, attempt=2)
        assert provider.sends == 1
    assert again.replayed and again.unexpected_replay
    [warning] = [r for r in caplog.records if getattr(r, "idemsend_code", None) == "UNEXPECTED_REPLAY"]
    assert "another job" in warning.getMessage() and "ledger lost this job's record" in warning.getMessage()
