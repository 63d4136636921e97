"""The Temporal adapter's decisions, row by row (no activity, no server)."""

from __future__ import annotations

from datetime import timedelta

import pytest

pytest.importorskip("temporalio", reason="needs temporalio: pip install -e '.[temporal]' (nox -s temporal)")

from idemsend import ConfigError, FatalError, RetryableError
from idemsend.adapters import GiveUp, QueueBackoff, RetryIn
from idemsend.adapters.temporal._decide import (
    ActivityFacts,
    check_template_fields,
    heartbeat_every,
    job_id_for,
    retry_delay,
    run_id_in_key,
    timeout_warnings,
    to_application_error,
)


def test_the_job_id_is_workflow_id_and_activity_id_and_never_ambiguous() -> None:
    assert job_id_for("wf-1", "3") == "wf-1/3"
    assert job_id_for(None, "standalone-7") == "standalone-7"
    ids = {job_id_for("a/b", "c"), job_id_for("a", "b/c"), job_id_for(None, "a/b/c"), job_id_for("a%2Fb", "c")}
    assert len(ids) == 4


@pytest.mark.parametrize("name", ["run_id", "workflow_run_id", "activity_run_id", "RunId"])
def test_a_template_naming_a_run_id_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=f"{{{name}}}"):
        check_template_fields(("user_id", name, "job_id"))
    check_template_fields(("user_id", "job_id", "runner"))


def test_a_key_holding_the_run_id_is_found() -> None:
    run = "0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b"
    assert run_id_in_key(f"welcome:u1:{run}", (run, None)) == run
    assert run_id_in_key("welcome:u1:wf/1", (run, None)) is None
    assert run_id_in_key("welcome:test-run", ("run", None)) is None  # too short to mean anything
    assert run_id_in_key("welcome:u1", (None, None)) is None


def facts(**changes: object) -> ActivityFacts:
    base: dict[str, object] = {
        "activity_type": "send_welcome", "start_to_close": timedelta(minutes=5), "schedule_to_close": None,
        "heartbeat": timedelta(seconds=20), "maximum_attempts": 0,
    }
    return ActivityFacts(**{**base, **changes})  # type: ignore[arg-type]


def test_timeouts_long_enough_earn_no_warning() -> None:
    assert timeout_warnings(facts(), worst_send=120.0) == []


def test_timeouts_shorter_than_the_worst_send_are_named() -> None:
    notes = timeout_warnings(facts(start_to_close=timedelta(seconds=30), schedule_to_close=timedelta(seconds=60)),
                             worst_send=120.0)
    assert len(notes) == 2
    assert "start_to_close_timeout is 30s" in notes[0] and "120s" in notes[0]
    assert "schedule_to_close_timeout is 60s" in notes[1]


def test_no_heartbeat_timeout_and_a_single_attempt_are_named() -> None:
    notes = timeout_warnings(facts(heartbeat=None, maximum_attempts=1), worst_send=10.0)
    assert any("no heartbeat_timeout" in n for n in notes)
    assert any("maximum_attempts=1" in n for n in notes)
    assert timeout_warnings(facts(heartbeat=None, is_local=True), worst_send=10.0) == []


def test_heartbeats_come_three_times_a_heartbeat_timeout() -> None:
    assert heartbeat_every(timedelta(seconds=30), 5.0) == 5.0
    assert heartbeat_every(timedelta(seconds=3), 5.0) == 1.0
    assert heartbeat_every(None, 5.0) == 5.0
    assert heartbeat_every(timedelta(0), 5.0) == 5.0


def retry(after: float | None) -> RetryIn:
    return RetryIn(1.0, RetryableError("503 from the provider", key="k", reason="provider", retry_after=after))


@pytest.mark.parametrize(("after", "expected"), [
    (None, None), (0, None), (-3, None), (float("nan"), None), (2.5, timedelta(seconds=2.5)),
    (float("inf"), timedelta(seconds=3600)), (10**9, timedelta(seconds=3600)),
])
def test_without_a_backoff_only_the_providers_retry_after_sets_the_delay(
    after: float | None, expected: timedelta | None
) -> None:
    assert retry_delay(retry(after), None, attempt=1) == expected


def test_with_a_backoff_every_retry_has_a_delay() -> None:
    delay = retry_delay(retry(None), QueueBackoff(base=2.0), attempt=2)
    assert delay is not None and 4.0 <= delay.total_seconds() <= 5.0
    named = retry_delay(retry(30), QueueBackoff(base=2.0), attempt=1)
    assert named is not None and named.total_seconds() == 30


def test_a_retry_is_a_retryable_application_error_with_its_reason_and_record() -> None:
    err = to_application_error(retry(2), attempt=3, next_delay=timedelta(seconds=2))
    assert not err.non_retryable and err.type == "provider" and err.next_retry_delay == timedelta(seconds=2)
    assert err.message == "503 from the provider"
    (record,) = err.details
    assert record["state"] == "retrying" and record["attempt"] == 3 and record["delay"] == 2.0
    policy = to_application_error(retry(None), attempt=1, next_delay=None)
    assert policy.next_retry_delay is None and "delay" not in policy.details[0]


def test_a_fatal_error_is_non_retryable_with_its_code() -> None:
    fatal = FatalError("IDEMPOTENCY_MISMATCH: other body (key 'k')", code="IDEMPOTENCY_MISMATCH", key="k")
    err = to_application_error(GiveUp(fatal, retryable=False), attempt=1, next_delay=None)
    assert err.non_retryable and err.type == "IDEMPOTENCY_MISMATCH" and err.next_retry_delay is None
    assert err.details[0]["state"] == "fatal" and err.details[0]["code"] == "IDEMPOTENCY_MISMATCH"
