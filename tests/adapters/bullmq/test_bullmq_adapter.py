"""The BullMQ adapter's translation of each outcome, on a stand-in for the job BullMQ hands
its processor (no worker: ``test_bullmq_workers.py`` and the conformance suite run real ones)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

pytest.importorskip("bullmq", reason="bullmq needs redis-py >= 6.2: run these in its own environment (nox -s bullmq)")

from bullmq import UnrecoverableError

from idemsend import ConfigError, Engine, FatalError, RetryableError
from idemsend.adapters.bullmq import (
    BACKOFF_TYPE,
    BullMQAdapter,
    BullMQRetry,
    backoff_ms,
    check_worker_options,
    job_options,
)

from .._scripted import Queues, error, scripted

pytestmark = pytest.mark.anyio

DATA, BODY = {"user_id": "u1"}, {"to": ["ada@example.com"]}


class FakeJob:
    """What the adapter reads and writes on the ``bullmq.Job`` its processor gets."""

    def __init__(self, attempts_made: int = 0, opts: dict[str, Any] | None = None, job_id: str = "job-1") -> None:
        self.id = job_id
        self.attemptsMade = attempts_made
        self.opts: dict[str, Any] = {"attempts": 10, "backoff": {"type": BACKOFF_TYPE}} if opts is None else opts
        self.logs: list[dict[str, Any]] = []

    async def log(self, row: str) -> int:
        self.logs.append(json.loads(row))
        return len(self.logs)


@pytest.fixture
async def adapters() -> AsyncIterator[list[BullMQAdapter]]:
    made: list[BullMQAdapter] = []
    yield made
    for adapter in made:
        await adapter.close()


async def started(made: list[BullMQAdapter], adapter: BullMQAdapter) -> BullMQAdapter:
    made.append(adapter)
    await adapter.start(adapter.worker_options())
    return adapter


async def test_a_send_returns_the_result_and_names_the_queue_and_try(adapters: list[BullMQAdapter]) -> None:
    hook = Queues()
    adapter = await started(adapters, BullMQAdapter(scripted(hook=hook)))
    job = FakeJob(attempts_made=2)
    result = await adapter.send(job, DATA, BODY)
    assert result["state"] == "sent" and result["key"] == "welcome:u1:job-1" and result["job_id"] == "job-1"
    assert hook.seen == [("bullmq", 3)]  # attemptsMade + 1
    assert job.logs == []  # nothing to note on success: the result is the returnvalue


async def test_a_retryable_error_is_a_bullmq_retry_whose_delay_the_strategy_reads(
    adapters: list[BullMQAdapter],
) -> None:
    adapter = await started(adapters, BullMQAdapter(
        scripted(error(503, "UNAVAILABLE"), error(429, "SLOW", {"Retry-After": "30"})), retry_base=2,
    ))
    job = FakeJob(attempts_made=1)
    with pytest.raises(BullMQRetry) as backoff:
        await adapter.send(job, DATA, BODY)
    with pytest.raises(BullMQRetry) as named:
        await adapter.send(job, DATA, BODY)
    assert 4.0 <= backoff.value.delay <= 5.0  # 2 s * 2**(2-1), up to 25% more
    assert isinstance(backoff.value.__cause__, RetryableError) and "503" in str(backoff.value)
    assert named.value.delay == 30
    strategy = adapter.worker_options()["settings"]["backoffStrategy"]
    assert strategy(2, BACKOFF_TYPE, named.value, job) == 30_001  # whole ms, one more: never early
    assert [row["idemsend"] for row in job.logs] == ["retrying", "retrying"]
    assert job.logs[1] == {  # the kit's outcome record, plus the row's marker and the attempt budget
        "idemsend": "retrying", "state": "retrying", "attempt": 2, "attempts": 10, "delay": 30, "reason": "provider",
        "detail": "HTTP 429", "message": str(named.value), "maybe_sent": True,  # the first try may have run
    }


async def test_a_job_added_without_the_adapters_backoff_still_waits_as_asked(adapters: list[BullMQAdapter]) -> None:
    adapter = await started(adapters, BullMQAdapter(scripted(error(429, "SLOW", {"Retry-After": "7"}))))
    job = FakeJob(opts={"attempts": 5, "backoff": {"type": "fixed", "delay": 10}})
    with pytest.raises(BullMQRetry) as retry:
        await adapter.send(job, DATA, BODY)
    # BullMQ's built-in "fixed" would retry after 10 ms: this retry is the adapter's
    assert job.opts["backoff"] == {"type": BACKOFF_TYPE}
    assert adapter.backoff_strategy(1, BACKOFF_TYPE, retry.value, job) == 7001


async def test_the_last_attempt_raises_unrecoverable_with_the_real_reason(adapters: list[BullMQAdapter]) -> None:
    adapter = await started(adapters, BullMQAdapter(scripted(error(503, "UNAVAILABLE"))))
    job = FakeJob(attempts_made=2, opts={"attempts": 3, "backoff": {"type": BACKOFF_TYPE}})
    with pytest.raises(UnrecoverableError, match="HTTP 503") as failed:
        await adapter.send(job, DATA, BODY)
    assert isinstance(failed.value.__cause__, RetryableError)
    assert job.logs == [{
        "idemsend": "failed", "state": "failed", "attempt": 3, "attempts": 3, "reason": "provider",
        "detail": "HTTP 503", "message": str(failed.value), "maybe_sent": True,
    }]


async def test_a_job_with_one_attempt_gives_up_on_the_first_retryable_error_and_says_why_once(
    adapters: list[BullMQAdapter], caplog: pytest.LogCaptureFixture,
) -> None:
    adapter = await started(adapters, BullMQAdapter(scripted(error(503, "UNAVAILABLE"), error(503, "UNAVAILABLE"))))
    caplog.set_level(logging.WARNING, "idemsend.adapters.bullmq")
    for _ in range(2):
        with pytest.raises(UnrecoverableError, match="503"):
            await adapter.send(FakeJob(opts={}), DATA, BODY)  # BullMQ's default: attempts 0, one try
    warnings = [r for r in caplog.records if "attempts=1" in r.getMessage()]
    assert len(warnings) == 1 and "job_options" in warnings[0].getMessage()


async def test_a_counter_job_id_is_warned_about_once(
    adapters: list[BullMQAdapter], caplog: pytest.LogCaptureFixture,
) -> None:
    adapter = await started(adapters, BullMQAdapter(scripted()))
    caplog.set_level(logging.WARNING, "idemsend.adapters.bullmq")
    for job_id in ("17", "18"):
        await adapter.send(FakeJob(job_id=job_id), DATA, BODY)
    assert len([r for r in caplog.records if "counter id" in r.getMessage()]) == 1


async def test_a_fatal_error_is_unrecoverable_with_its_code(adapters: list[BullMQAdapter]) -> None:
    adapter = await started(adapters, BullMQAdapter(scripted(error(400, "VALIDATION_ERROR"))))
    job = FakeJob()
    with pytest.raises(UnrecoverableError) as fatal:
        await adapter.send(job, DATA, BODY)
    assert str(fatal.value).startswith("VALIDATION_ERROR")
    cause = fatal.value.__cause__
    assert isinstance(cause, FatalError) and cause.code == "VALIDATION_ERROR"
    assert job.logs == [{
        "idemsend": "fatal", "state": "fatal", "attempt": 1, "attempts": 10, "code": "VALIDATION_ERROR",
        "detail": "validation_error", "message": str(cause), "maybe_sent": False,
    }]


async def test_a_fatal_reason_always_names_its_code(adapters: list[BullMQAdapter]) -> None:
    adapter = await started(adapters, BullMQAdapter(scripted(error(409, "IDEMPOTENCY_MISMATCH"))))
    with pytest.raises(UnrecoverableError) as fatal:
        await adapter.send(FakeJob(), DATA, BODY)
    assert str(fatal.value).startswith("IDEMPOTENCY_MISMATCH: ")  # MismatchError's text has no code


async def test_an_invalid_key_is_fatal_before_any_request(adapters: list[BullMQAdapter]) -> None:
    adapter = await started(adapters, BullMQAdapter(scripted()))
    with pytest.raises(UnrecoverableError, match="KEY_DERIVATION"):
        await adapter.send(FakeJob(), {"user_id": "has a space"}, BODY)


async def test_a_job_log_that_cannot_be_written_does_not_change_the_outcome(adapters: list[BullMQAdapter]) -> None:
    adapter = await started(adapters, BullMQAdapter(scripted(error(503, "UNAVAILABLE"))))

    class NoLog(FakeJob):
        async def log(self, row: str) -> int:
            raise ConnectionError("redis went away")

    with pytest.raises(BullMQRetry):
        await adapter.send(NoLog(), DATA, BODY)


async def test_before_start_the_error_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"adapter\.worker\(\.\.\.\)"):
        await BullMQAdapter(scripted()).send(FakeJob(), DATA, BODY)


async def test_jobs_share_one_engine_which_close_closes(adapters: list[BullMQAdapter]) -> None:
    made: list[Engine] = []
    factory = scripted()

    def counting() -> Engine:
        made.append(engine := factory())
        return engine

    adapter = await started(adapters, BullMQAdapter(counting))
    await adapter.start(adapter.worker_options())  # again: the same engine
    for i in range(3):
        await adapter.send(FakeJob(job_id=f"job-{i}"), DATA, BODY)
    assert len(made) == 1
    await adapter.close()
    with pytest.raises(ConfigError):
        adapter.engine  # noqa: B018


async def test_unsafe_worker_options_stop_the_start_and_close_the_engine() -> None:
    made: list[Engine] = []
    factory = scripted()

    def counting() -> Engine:
        made.append(engine := factory())
        return engine

    adapter = BullMQAdapter(counting)
    with pytest.raises(ConfigError, match="lockRenewTime"):
        await adapter.start(adapter.worker_options({"lockDuration": 10_000, "lockRenewTime": 10_000}))
    with pytest.raises(ConfigError):
        adapter.engine  # noqa: B018
    with pytest.raises(ConfigError, match="closed"):
        await made[0].start()


def test_worker_options_install_the_strategy_and_a_stall_budget() -> None:
    adapter = BullMQAdapter(scripted(), max_tries=7)
    opts = adapter.worker_options({"connection": "redis://x", "concurrency": 5})
    assert opts["connection"] == "redis://x" and opts["concurrency"] == 5
    assert opts["settings"]["backoffStrategy"] == adapter.backoff_strategy
    assert opts["maxStalledCount"] == 7
    assert adapter.worker_options({"maxStalledCount": 2})["maxStalledCount"] == 2


def test_a_strategy_already_set_keeps_serving_its_own_backoff_types() -> None:
    adapter = BullMQAdapter(scripted(), retry_base=1)

    def linear(attempts_made: int, backoff_type: str, err: BaseException, job: Any) -> int:
        return 1000 * attempts_made

    adapter.worker_options({"settings": {"backoffStrategy": linear}})
    other = RuntimeError("not ours")
    assert adapter.backoff_strategy(3, "linear", other, None) == 3000
    # an unexpected error in a job of ours: the adapter's exponential backoff (1 s, 2 s, 4 s …)
    assert 4001 <= adapter.backoff_strategy(3, BACKOFF_TYPE, other, None) <= 5001


@pytest.mark.parametrize(("opts", "match"), [
    ({}, "backoffStrategy"),
    ({"settings": {"backoffStrategy": 5}}, "backoffStrategy"),
    ({"lockDuration": 0}, "lockDuration must be > 0"),
    ({"lockDuration": -1}, "lockDuration must be a number"),
    ({"lockDuration": 4000, "lockRenewTime": 5000}, "shorter than lockDuration"),
    ({"stalledInterval": 0}, "stalledInterval"),
])
def test_worker_options_are_checked(opts: dict[str, Any], match: str) -> None:
    settings = {} if "settings" in opts or not opts else {"settings": {"backoffStrategy": lambda *a: 1}}
    with pytest.raises(ConfigError, match=match):
        check_worker_options({**settings, **opts} if opts else {})


async def test_without_lock_renewal_the_lock_must_outlast_the_longest_send() -> None:
    engine = scripted()()
    worst = engine.worst_case_send_time()
    strategy = {"settings": {"backoffStrategy": lambda *a: 1}}
    with pytest.raises(ConfigError, match=r"worst_case_send_time"):
        check_worker_options({**strategy, "lockRenewTime": 0, "lockDuration": int(worst * 1000) - 1}, engine)
    check_worker_options({**strategy, "lockRenewTime": 0, "lockDuration": int(worst * 1000) + 1000}, engine)
    check_worker_options({**strategy, "lockDuration": 1000}, engine)  # renewed: any send length is fine


def test_backoff_ms_is_never_short() -> None:
    assert backoff_ms(2) == 2001
    assert backoff_ms(0.0004) == 2
    assert backoff_ms(0) == 1
    assert backoff_ms(float("inf")) == backoff_ms(1e308) == 3_600_001
    assert backoff_ms(float("nan")) == 3_600_001


def test_job_options() -> None:
    opts = job_options(max_tries=4, jobId="welcome-u1", removeOnComplete=True)
    assert opts == {"attempts": 4, "backoff": {"type": BACKOFF_TYPE}, "jobId": "welcome-u1", "removeOnComplete": True}
    made = {job_options()["jobId"] for _ in range(3)}
    assert len(made) == 3 and not any(i.isdigit() for i in made)
    assert BullMQAdapter(scripted(), max_tries=3).job_options()["attempts"] == 3


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_tries": 0}, "max_tries must be an integer >= 1"),
    ({"max_tries": True}, "max_tries"),
    ({"retry_base": 0}, r"retry_base must be a number of seconds in \(0, 3600\]"),
    ({"retry_base": 4000}, "retry_base"),
])
def test_knobs_are_checked(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BullMQAdapter(scripted(), **kwargs)


class FakeWorker:
    """A stand-in for ``bullmq.Worker``: ``run`` ends by itself when told to."""

    made: ClassVar[list[FakeWorker]] = []

    def __init__(self, name: str, processor: Any, opts: dict[str, Any]) -> None:
        self.name, self.processor, self.opts = name, processor, opts
        self.listeners: dict[str, Any] = {}
        self.closed = asyncio.Event()
        FakeWorker.made.append(self)

    def on(self, event: str, listener: Any) -> None:
        self.listeners[event] = listener

    async def run(self) -> None:
        if self.opts.get("crash"):
            raise ConnectionError("redis went away for good")
        await self.closed.wait()

    async def close(self) -> None:
        self.closed.set()


@pytest.fixture
def fake_worker(monkeypatch: pytest.MonkeyPatch) -> type[FakeWorker]:
    import idemsend.adapters.bullmq as bullmq_adapter

    FakeWorker.made = []
    monkeypatch.setattr(bullmq_adapter, "Worker", FakeWorker)
    return FakeWorker


async def test_serve_runs_until_stop_then_closes_the_worker_and_the_engine(fake_worker: type[FakeWorker]) -> None:
    adapter = BullMQAdapter(scripted())
    stop = asyncio.Event()

    async def process(job: Any, token: str) -> Any:
        return await adapter.send(job, DATA, BODY)

    serving = asyncio.ensure_future(adapter.serve("emails", process, {"concurrency": 3}, stop=stop))
    await asyncio.sleep(0.05)
    worker = fake_worker.made[0]
    assert worker.opts["autorun"] is False and worker.opts["concurrency"] == 3
    assert worker.opts["settings"]["backoffStrategy"] == adapter.backoff_strategy
    assert set(worker.listeners) == {"stalled", "error"}
    assert (await adapter.send(FakeJob(), DATA, BODY))["state"] == "sent"  # the engine is up
    stop.set()
    await asyncio.wait_for(serving, 5)
    assert worker.closed.is_set()
    with pytest.raises(ConfigError):
        adapter.engine  # noqa: B018


async def test_serve_raises_when_the_worker_loop_ends_by_itself(fake_worker: type[FakeWorker]) -> None:
    adapter = BullMQAdapter(scripted())
    with pytest.raises(RuntimeError, match="ended by itself") as ended:
        await asyncio.wait_for(adapter.serve("emails", adapter.send, {"crash": True}, stop=asyncio.Event()), 5)
    assert isinstance(ended.value.__cause__, ConnectionError)
    with pytest.raises(ConfigError):
        adapter.engine  # noqa: B018
