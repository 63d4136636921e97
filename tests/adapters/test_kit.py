"""The adapter kit over a real Engine and a MockTransport (no sockets, no queue): what one
try of a job comes to, and the queues' backoff."""

from __future__ import annotations

import math

import pytest

from idemsend import (
    ConfigError,
    Engine,
    FatalError,
    Job,
    MismatchError,
    RawResponse,
    RetryableError,
)
from idemsend.adapters import (
    GiveUp,
    JobOutcome,
    QueueBackoff,
    RetryIn,
    Succeeded,
    outcome_record,
    run_job,
)
from idemsend.classify import MAX_RETRY_AFTER
from idemsend.testing import MockTransport

from ._scripted import Queues, error, scripted

pytestmark = pytest.mark.anyio

BODY = {"to": ["ada@example.com"]}
JOB = Job("job-1", {"user_id": "u1"})


def engine(*answers: RawResponse, hook: Queues | None = None) -> Engine:
    return scripted(*answers, hook=hook)()


async def one_try(e: Engine, attempt: int | None, max_attempts: int | None, **kw: object) -> JobOutcome:
    return await run_job(e, JOB, BODY, attempt=attempt, max_attempts=max_attempts, queue="test", **kw)  # type: ignore[arg-type]


async def test_a_send_is_succeeded_with_the_result_dict_and_the_queue_reaches_the_hooks() -> None:
    hook = Queues()
    async with engine(hook=hook) as e:
        outcome = await run_job(e, JOB, BODY, attempt=3, max_attempts=10, queue="arq")
    assert isinstance(outcome, Succeeded)
    assert outcome.result == {
        "state": "sent", "key": "welcome:u1:job-1", "id": "em_1", "status": 200, "replayed": False,
        "from_ledger": False, "attempts": 1, "job_id": "job-1",
    }
    assert hook.seen == [("arq", 3)]


async def test_a_retryable_error_with_tries_left_is_retry_in_the_backoff() -> None:
    async with engine(error(503, "UNAVAILABLE")) as e:
        outcome = await one_try(e, 3, 10, backoff=QueueBackoff(base=2.0))
    assert isinstance(outcome, RetryIn)
    assert isinstance(outcome.error, RetryableError)
    assert 8.0 <= outcome.delay <= 8.0 * 1.25  # base * 2**(3-1), stretched by up to 25%


async def test_the_providers_retry_after_is_the_delay() -> None:
    async with engine(error(429, "RATE_LIMITED", {"Retry-After": "40"})) as e:
        outcome = await one_try(e, 1, 10)
    assert isinstance(outcome, RetryIn) and outcome.delay == 40.0 and outcome.error.retry_after == 40.0


async def test_a_retryable_error_on_the_last_try_gives_up_with_the_real_reason() -> None:
    async with engine(error(503, "UNAVAILABLE"), error(503, "UNAVAILABLE")) as e:
        last = await one_try(e, 5, 5)
        past = await one_try(e, 6, 5)  # a queue that ran it once more (a redelivery) still stops
    for outcome in (last, past):
        assert isinstance(outcome, GiveUp) and outcome.retryable
        assert isinstance(outcome.error, RetryableError)
        assert "503" in str(outcome.error) and outcome.code == outcome.error.reason


@pytest.mark.parametrize(("attempt", "max_attempts"), [(50, None), (None, 3)])
async def test_without_a_known_last_try_a_retryable_error_is_always_retried(
    attempt: int | None, max_attempts: int | None
) -> None:
    async with engine(error(503, "UNAVAILABLE")) as e:
        outcome = await one_try(e, attempt, max_attempts)
    assert isinstance(outcome, RetryIn)
    assert outcome.delay <= 300 * 1.25


async def test_a_fatal_error_gives_up_on_any_try() -> None:
    async with engine(error(422, "IDEMPOTENCY_MISMATCH")) as e:
        outcome = await one_try(e, 1, 10)
    assert isinstance(outcome, GiveUp) and not outcome.retryable
    assert isinstance(outcome.error, MismatchError) and outcome.code == "IDEMPOTENCY_MISMATCH"


async def test_a_key_that_cannot_be_derived_gives_up_before_any_request() -> None:
    e = engine()
    async with e:
        outcome = await run_job(e, Job("j", {"user_id": "has a space"}), BODY, attempt=1, max_attempts=3, queue="q")
    assert isinstance(outcome, GiveUp) and outcome.code == "KEY_DERIVATION"
    assert isinstance(e.transport, MockTransport) and e.transport.requests == []


async def test_the_outcome_record_is_one_vocabulary_with_the_same_fields() -> None:
    async with engine(error(429, "SLOW", {"Retry-After": "2.0004"})) as e:
        retrying = await one_try(e, 1, 3)
    async with engine(error(503, "UNAVAILABLE")) as e:
        failed = await one_try(e, 3, 3)
    async with engine(error(400, "VALIDATION_ERROR")) as e:
        fatal = await one_try(e, 1, 3)  # a first try: nothing can have run before it
    async with engine() as e:
        sent = await one_try(e, 1, 3)
    assert [o.state for o in (sent, retrying, failed, fatal)] == ["sent", "retrying", "failed", "fatal"]
    assert isinstance(sent, Succeeded) and outcome_record(sent, attempt=1) == {**sent.result, "attempt": 1}
    assert outcome_record(retrying, attempt=1) == {
        "state": "retrying", "reason": "provider", "detail": "HTTP 429", "message": str(retrying.error),  # type: ignore[union-attr]
        "maybe_sent": False, "attempt": 1, "delay": 2.0,  # a 429 ran nothing; the delay to the millisecond
    }
    assert isinstance(failed, GiveUp) and isinstance(failed.error, RetryableError)
    assert outcome_record(failed, attempt=3) == {
        "state": "failed", "reason": "provider", "detail": failed.error.detail, "message": str(failed.error),
        "maybe_sent": True, "attempt": 3,  # a 503 may have run
    }
    assert isinstance(fatal, GiveUp) and isinstance(fatal.error, FatalError)
    assert outcome_record(fatal, attempt=None) == {
        "state": "fatal", "code": "VALIDATION_ERROR", "detail": fatal.error.detail, "message": str(fatal.error),
        "maybe_sent": False, "attempt": None,
    }
    with pytest.raises(TypeError, match="not a JobOutcome"):
        outcome_record("sent", attempt=1)  # type: ignore[arg-type]


async def test_setup_mistakes_are_not_outcomes_they_propagate() -> None:
    with pytest.raises(ConfigError, match="not started"):
        await one_try(engine(), 1, 3)


async def test_every_outcome_translates_with_one_match() -> None:
    """What an adapter looks like: a match over the three outcomes, nothing else."""

    def translate(outcome: JobOutcome) -> str:
        match outcome:
            case Succeeded(result):
                return f"ok {result['id']}"
            case RetryIn(delay, err):
                return f"retry in {delay:g}s ({err.reason})"
            case GiveUp(err, retryable=True):
                return f"failed, tries used up: {type(err).__name__}"
            case GiveUp(err):
                return f"fatal {outcome.code}"

    async with engine(error(429, "RATE_LIMITED", {"Retry-After": "9"}), error(503, "X"), error(400, "BAD")) as e:
        seen = [translate(await one_try(e, n, 3)) for n in (1, 3, 1, 1)]
    assert seen[0].startswith("retry in 9s")
    assert seen[1] == "failed, tries used up: RetryableError"
    assert seen[2] == "fatal BAD"
    assert seen[3] == "ok em_1"


# -- QueueBackoff -------------------------------------------------------------------------


def test_backoff_doubles_from_base_up_to_cap_with_at_most_25_percent_jitter() -> None:
    backoff = QueueBackoff(base=1.0, cap=300.0)
    assert [backoff.step(n) for n in range(1, 11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert backoff.step(10_000) == 300 and backoff.step(0) == 1
    for attempt in (1, 4, 20):
        delays = [backoff.delay(RetryableError("x"), attempt) for _ in range(200)]
        assert all(backoff.step(attempt) <= d <= backoff.step(attempt) * 1.25 for d in delays)
        assert len(set(delays)) > 1  # spread, so jobs that failed together come back apart


@pytest.mark.parametrize(
    ("after", "expected"),
    [(7.5, 7.5), (30.0, 30.0), (math.inf, MAX_RETRY_AFTER), (1e308, MAX_RETRY_AFTER)],
)
def test_backoff_takes_the_providers_delay_clamped(after: float, expected: float) -> None:
    # on try 2 the backoff step is 2 s (+0-25%): a longer delay named by the provider wins
    assert QueueBackoff().delay(RetryableError("x", retry_after=after), 2) == expected


@pytest.mark.parametrize("after", [-3.0, 0.0, 1.0])
def test_a_short_retry_after_never_shortens_the_backoff(after: float) -> None:
    # Retry-After: 1 on every try must not squeeze the job's whole budget into seconds
    for attempt in (1, 5, 9):
        delay = QueueBackoff().delay(RetryableError("x", retry_after=after), attempt)
        assert QueueBackoff().step(attempt) <= delay <= QueueBackoff().step(attempt) * 1.25
    total = sum(QueueBackoff().delay(RetryableError("x", retry_after=1.0), n) for n in range(1, 10))
    assert total >= QueueBackoff().span(10) == 511


def test_a_nan_retry_after_falls_back_to_the_backoff() -> None:
    assert 16 <= QueueBackoff().delay(RetryableError("x", retry_after=math.nan), 5) <= 20


def test_span_is_the_outage_a_job_rides_out() -> None:
    assert QueueBackoff().span(10) == 511
    assert QueueBackoff().span(5) == 15
    assert QueueBackoff(base=0.5, cap=2.0).span(4) == 0.5 + 1 + 2


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, 3601, "1", True])
def test_backoff_refuses_nonsense(bad: object) -> None:
    with pytest.raises(ConfigError, match="base"):
        QueueBackoff(base=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cap"):
        QueueBackoff(cap=bad)  # type: ignore[arg-type]


def test_outcomes_are_plain_values() -> None:
    fatal = FatalError("nope", code="VALIDATION_ERROR")
    assert GiveUp(fatal, retryable=False).code == "VALIDATION_ERROR"
    assert GiveUp(RetryableError("x", reason="HTTP 503"), retryable=True).code == "HTTP 503"
    assert RetryIn(1.0, RetryableError("x")).delay == 1.0
    assert Succeeded({"id": "em_1"}) == Succeeded({"id": "em_1"})
