"""A job is never reported "not sent" when it may have been sent (issue 18 item 4).

Try 1 runs at the provider but its answer is lost; then every later try gets 503, or a
rotated API key gets 401. The provider executed the job once. What the engine knows
("this key may have run") must reach the error (``maybe_sent`` and its text) and the
kit's outcome, within one delivery and across deliveries, with and without a ledger.
Real HTTP to the MockProvider; the ledger is a real Redis (or the in-process one).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from idemsend import Engine, FatalError, Job, RetryableError, RetryPolicy, SetupError
from idemsend._errors import fatal_error
from idemsend.adapters._kit import GiveUp, RetryIn, run_job
from idemsend.ledger import MemoryLedger, RedisLedger
from idemsend.testing import MockProvider

pytestmark = pytest.mark.anyio

KEY = "welcome:{user_id}:{job_id}"
BODY = {"to": ["ada@example.com"], "subject": "hi"}
JOB = Job("job-1", {"user_id": "u1"})
SENT_KEY = "welcome:u1:job-1"
QUICK = RetryPolicy(retries=2, backoff=0.01, max_backoff=0.01)


@pytest.fixture
async def provider() -> AsyncIterator[MockProvider]:
    async with MockProvider() as p:
        yield p


def _engine(p: MockProvider, *, api_key: str | None = None, **kw: object) -> Engine:
    return Engine(
        p.emails_url, key=KEY, api_key=api_key or p.api_key, retry=QUICK,
        **kw,  # type: ignore[arg-type]
    )


async def test_lost_answer_then_503s_in_one_delivery_gives_up_as_maybe_sent(provider: MockProvider) -> None:
    """(a) within one delivery: the kit's last-try GiveUp says the job may have been sent."""
    provider.script("lost", "5xx", "5xx", key=SENT_KEY)
    async with _engine(provider) as engine:
        outcome = await run_job(engine, JOB, BODY, attempt=1, max_attempts=1, queue="test")
    assert provider.sends_for(SENT_KEY) == 1  # the provider executed it once
    assert isinstance(outcome, GiveUp) and outcome.retryable and outcome.maybe_sent
    assert outcome.error.maybe_sent and "may have been sent" in str(outcome.error)
    assert "not sent" not in str(outcome.error)


async def test_refused_connections_on_a_first_delivery_are_not_sent(provider: MockProvider) -> None:
    """The control: a refused connection provably sent nothing, so on a first delivery
    the error says "not sent yet" (a 503 may follow a run, so it would not)."""
    async with Engine("http://127.0.0.1:9/api", key=KEY, retry=QUICK) as engine:
        outcome = await run_job(engine, JOB, BODY, attempt=1, max_attempts=1, queue="test")
    assert isinstance(outcome, GiveUp) and not outcome.maybe_sent
    assert "not sent yet" in str(outcome.error)


@pytest.mark.parametrize("ledger_kind", ["none", "memory", "redis"])
async def test_lost_answer_then_503s_on_the_next_delivery_still_says_maybe_sent(
    provider: MockProvider, ledger_kind: str, request: pytest.FixtureRequest
) -> None:
    """(a) across deliveries: delivery 1's answer is lost (and its quick retries get 503),
    delivery 2 gets only 503s: its GiveUp must still say "may have been sent"."""
    if ledger_kind == "redis":
        url = request.getfixturevalue("redis_url")
        ledger: object = RedisLedger.from_url(url, prefix=f"ms-{uuid.uuid4().hex[:8]}")
    else:
        ledger = MemoryLedger() if ledger_kind == "memory" else None
    kw = {} if ledger is None else {"ledger": ledger}
    provider.script("lost", "5xx", "5xx", "5xx", "5xx", "5xx", key=SENT_KEY)
    async with _engine(provider, **kw) as engine:
        first = await run_job(engine, JOB, BODY, attempt=1, max_attempts=2, queue="test")
        assert isinstance(first, RetryIn) and first.maybe_sent
        last = await run_job(engine, JOB, BODY, attempt=2, max_attempts=2, queue="test")
    assert provider.sends_for(SENT_KEY) == 1
    assert isinstance(last, GiveUp) and last.retryable and last.maybe_sent, last
    assert isinstance(last.error, RetryableError) and "may have been sent" in str(last.error)


async def test_lost_answer_then_a_rotated_key_gets_401_says_maybe_sent(provider: MockProvider, redis_url: str) -> None:
    """(b) delivery 1 runs but its answer is lost; delivery 2 runs with a rotated (wrong)
    API key and gets 401: the SetupError says the job may have been sent, and the record
    is kept (not forgotten), so the fixed engine replays instead of sending again."""
    prefix = f"ms-{uuid.uuid4().hex[:8]}"
    provider.script("lost", "5xx", "5xx", key=SENT_KEY)
    async with _engine(provider, ledger=RedisLedger.from_url(redis_url, prefix=prefix)) as engine:
        first = await run_job(engine, JOB, BODY, attempt=1, max_attempts=3, queue="test")
    assert isinstance(first, RetryIn) and first.maybe_sent
    rotated = RedisLedger.from_url(redis_url, prefix=prefix)
    async with _engine(provider, api_key="rotated-wrong-key", ledger=rotated) as engine:
        second = await run_job(engine, JOB, BODY, attempt=2, max_attempts=3, queue="test")
    assert isinstance(second, GiveUp) and not second.retryable and second.maybe_sent
    assert isinstance(second.error, SetupError) and "may have been sent" in str(second.error)
    reader = RedisLedger.from_url(redis_url, prefix=prefix)
    try:
        assert (await reader.get(SENT_KEY)) is not None  # kept: the key may have run
    finally:
        await reader.aclose()
    async with _engine(provider, ledger=RedisLedger.from_url(redis_url, prefix=prefix)) as engine:
        result = await engine.send(JOB, BODY, attempt=3)
    assert result.replayed and provider.sends_for(SENT_KEY) == 1


async def test_a_401_on_a_first_delivery_with_a_ledger_is_not_sent(provider: MockProvider) -> None:
    """The control for (b): a 401 with nothing run before says nothing about maybe-sent."""
    async with _engine(provider, api_key="wrong", ledger=MemoryLedger()) as engine:
        with pytest.raises(SetupError) as caught:
            await engine.send(JOB, BODY, attempt=1)
    assert not caught.value.maybe_sent and "may have been sent" not in str(caught.value)
    assert provider.sends_for(SENT_KEY) == 0


async def test_a_recorded_fatal_keeps_saying_maybe_sent_when_replayed(provider: MockProvider) -> None:
    """A fatal after a try that may have run is recorded with that said in its detail, so
    the record's replay on a later delivery says the same; one that ran nothing does not."""
    ledger = MemoryLedger()
    for key, maybe in (("welcome:u1:j-maybe", True), ("welcome:u1:j-never", False)):
        claim = await ledger.claim(key=key, job_id=key[-7:], payload=b"{}", fingerprint="", token="t", lease=30)
        assert claim is not None
        error = fatal_error("VALIDATION_ERROR", "to is not an address", key, maybe_sent=maybe)
        assert error.maybe_sent is maybe and ("may have been sent" in str(error)) is maybe
        await ledger.fail(key=key, token="t", code=error.code, message=error.detail)
    async with _engine(provider, ledger=ledger) as engine:
        for job_id, maybe in (("j-maybe", True), ("j-never", False)):
            with pytest.raises(FatalError) as caught:
                await engine.send(Job(job_id, {"user_id": "u1"}), BODY, attempt=2)
            assert "recorded in the ledger" in str(caught.value)
            assert caught.value.maybe_sent is maybe and ("may have been sent" in str(caught.value)) is maybe
    assert provider.sends == 0
