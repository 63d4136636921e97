"""The RQ adapter's translation of each outcome, on a stand-in for RQ's current job (no
worker: the conformance suite runs real ones)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from rq import Retry

import idemsend.adapters.rq as rq_adapter
from idemsend import ConfigError, FatalError, RetryableError
from idemsend.adapters.rq import RQAdapter

from .._scripted import Queues, error, scripted

DATA, BODY = {"user_id": "u1"}, {"to": ["ada@example.com"]}


class FakeJob:
    """What the adapter reads and writes on ``rq.get_current_job()``."""

    def __init__(self, retries_done: int = 0) -> None:
        self.id = "job-1"
        self.number_of_retries = retries_done
        self.retries_left = 5
        self.meta: dict[str, Any] = {}
        self.saved: list[dict[str, Any]] = []

    def save_meta(self) -> None:
        self.saved.append(dict(self.meta["idemsend"]))


@pytest.fixture
def job(monkeypatch: pytest.MonkeyPatch) -> FakeJob:
    current = FakeJob()
    monkeypatch.setattr(rq_adapter, "get_current_job", lambda: current)
    return current


@pytest.fixture
def close() -> Iterator[list[RQAdapter]]:
    adapters: list[RQAdapter] = []
    yield adapters
    for adapter in adapters:
        adapter.close()


def test_a_send_returns_the_result_and_records_it(job: FakeJob, close: list[RQAdapter]) -> None:
    hook = Queues()
    adapter = RQAdapter(scripted(hook=hook))
    close.append(adapter)
    job.number_of_retries = 2
    result = adapter.send(DATA, BODY)
    assert result["state"] == "sent" and result["key"] == "welcome:u1:job-1"
    assert job.meta["idemsend"] == {**result, "attempt": 3}
    assert hook.seen == [("rq", 3)]


def test_a_retryable_error_returns_an_rq_retry_rounded_past_the_second(job: FakeJob, close: list[RQAdapter]) -> None:
    adapter = RQAdapter(scripted(error(429, "SLOW", {"Retry-After": "7"})), max_retries=4)
    close.append(adapter)
    retry = adapter.send(DATA, BODY)
    assert isinstance(retry, Retry) and retry.max == 4
    assert retry.intervals in ([7], [8])
    assert job.meta["idemsend"]["state"] == "retrying" and job.retries_left == 5
    assert job.meta["idemsend"]["delay"] >= 7 and job.meta["idemsend"]["maybe_sent"] is False  # a 429 ran nothing


def test_the_last_retry_raises_the_real_reason_and_stops(job: FakeJob, close: list[RQAdapter]) -> None:
    adapter = RQAdapter(scripted(error(503, "UNAVAILABLE")), max_retries=2)
    close.append(adapter)
    job.number_of_retries = 2  # the third try of max_retries=2
    with pytest.raises(RetryableError, match="503"):
        adapter.send(DATA, BODY)
    assert job.retries_left == 0
    record = job.meta["idemsend"]
    # the last try of a retryable error is "failed" (no retry is scheduled), as on every queue
    assert record["state"] == "failed" and record["reason"] == "provider" and "503" in record["message"]
    assert record["detail"] and record["maybe_sent"] is True and record["attempt"] == 3


def test_a_fatal_error_is_raised_with_retries_off(job: FakeJob, close: list[RQAdapter]) -> None:
    adapter = RQAdapter(scripted(error(400, "VALIDATION_ERROR")))
    close.append(adapter)
    with pytest.raises(FatalError):
        adapter.send(DATA, BODY)
    assert job.retries_left == 0
    assert job.meta["idemsend"] == {
        "state": "fatal", "code": "VALIDATION_ERROR", "detail": "validation_error",
        "message": job.meta["idemsend"]["message"], "maybe_sent": False, "attempt": 1,
    }


def test_jobs_share_one_engine_per_process(job: FakeJob, close: list[RQAdapter]) -> None:
    made: list[object] = []
    factory = scripted()

    def counting() -> Any:
        made.append(engine := factory())
        return engine

    adapter = RQAdapter(counting)
    close.append(adapter)
    for _ in range(3):
        adapter.send(DATA, BODY)
    assert len(made) == 1


def test_outside_a_job_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rq_adapter, "get_current_job", lambda: None)
    with pytest.raises(ConfigError, match="inside an RQ job"):
        RQAdapter(scripted()).send(DATA, BODY)
