"""The SQS adapter's outcome mapping, over a scripted engine (no queue, no sockets): how a
message becomes a job, what each try comes to, and what SQS is told."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from idemsend import FatalError, RetryableError

from .._scripted import Queues, error, scripted
from .conftest import SKIP_REASON

pytest.importorskip("aiobotocore", reason=SKIP_REASON)

from idemsend.adapters._kit import DEFAULT_BACKOFF, GiveUp, RetryIn, Succeeded, outcome_record
from idemsend.adapters.sqs import (
    BAD_MESSAGE,
    MAX_VISIBILITY,
    Delete,
    Hide,
    SQSMessage,
    settle,
    visibility_seconds,
)
from idemsend.adapters.sqs._message import Reader

pytestmark = pytest.mark.anyio

BODY = {"to": ["ada@example.com"]}


def api_message(body: Any = None, *, count: int = 1, job_id: str | None = None, **attributes: str) -> SQSMessage:
    raw: dict[str, Any] = {
        "MessageId": "3b7e4a9c-0000-4000-8000-000000000001", "ReceiptHandle": "rh-1",
        "Body": body if isinstance(body, str) else json.dumps(body or {"data": {"user_id": "u1"}, "body": BODY}),
        "Attributes": {"ApproximateReceiveCount": str(count), "SentTimestamp": "1700000000000", **attributes},
    }
    if job_id is not None:
        raw["MessageAttributes"] = {"idemsend-job-id": {"DataType": "String", "StringValue": job_id}}
    return SQSMessage.from_api(raw)


def reader(max_attempts: int | None = 10) -> Reader:
    from idemsend.adapters.sqs import default_parse

    return Reader(parse=default_parse, job_id_attribute="idemsend-job-id", max_attempts=max_attempts,
                  backoff=DEFAULT_BACKOFF)


# -- what SQS is told -------------------------------------------------------------------------


@pytest.mark.parametrize(("delay", "elapsed", "seconds"), [
    (2.0, 0, 2),
    (0.2, 0, 1),  # whole seconds, rounded up: a retry never comes early
    (2.000001, 0, 3),
    (0.0, 0, 0),
    (-5.0, 0, 0),
    (3600.0, 0, 3600),
    (1e9, 0, MAX_VISIBILITY),  # SQS's 12 h limit
    (math.inf, 0, MAX_VISIBILITY),
    (math.nan, 0, MAX_VISIBILITY),
    (1e9, 43_000.5, MAX_VISIBILITY - 43_001),  # what is left of the 12 h since the receive
    (5.0, 50_000, 0),
])
def test_visibility_is_whole_seconds_clamped_to_the_12_hour_limit(delay: float, elapsed: float, seconds: int) -> None:
    assert visibility_seconds(delay, elapsed) == seconds


def test_each_outcome_becomes_a_delete_or_a_visibility_change() -> None:
    retry = RetryableError("503", retry_after=None)
    fatal = FatalError("nope", code="VALIDATION_ERROR")
    assert settle(Succeeded({"state": "sent"})) == Delete()
    assert settle(RetryIn(2.3, retry)) == Hide(3)
    assert settle(RetryIn(1e12, retry)) == Hide(MAX_VISIBILITY)
    assert settle(RetryIn(100.0, retry), elapsed=MAX_VISIBILITY - 10) == Hide(10)
    for give_up in (GiveUp(fatal, retryable=False), GiveUp(retry, retryable=True)):
        assert settle(give_up) == Delete()  # recorded, then deleted
        assert settle(give_up, give_up="redrive") == Hide(0)  # left to the redrive policy


# -- messages ------------------------------------------------------------------------------------


def test_an_api_message_and_a_lambda_record_read_the_same() -> None:
    api = SQSMessage.from_api({
        "MessageId": "m-1", "ReceiptHandle": "rh", "Body": "{}",
        "Attributes": {"ApproximateReceiveCount": "3", "MessageGroupId": "g"},
        "MessageAttributes": {"idemsend-job-id": {"DataType": "String", "StringValue": "job-7"},
                              "blob": {"DataType": "Binary", "BinaryValue": b"x"}},
    })
    record = SQSMessage.from_lambda({
        "messageId": "m-1", "receiptHandle": "rh", "body": "{}", "eventSourceARN": "arn:aws:sqs:us-east-1:1:q",
        "attributes": {"ApproximateReceiveCount": "3", "MessageGroupId": "g"},
        "messageAttributes": {"idemsend-job-id": {"stringValue": "job-7", "stringListValues": [],
                                                  "binaryListValues": [], "dataType": "String"}},
    })
    for m in (api, record):
        assert (m.message_id, m.receive_count, m.group_id) == ("m-1", 3, "g")
        assert m.message_attributes == {"idemsend-job-id": "job-7"}
        assert reader().job_id(m) == "job-7"
    assert record.source_arn == "arn:aws:sqs:us-east-1:1:q"


def test_the_job_id_is_the_message_id_unless_the_producer_named_one() -> None:
    assert reader().job_id(api_message()) == "3b7e4a9c-0000-4000-8000-000000000001"
    assert reader().job_id(api_message(job_id="order-42")) == "order-42"
    job, body = reader().read(api_message(job_id="order-42"))
    assert (job.id, dict(job.data), body) == ("order-42", {"user_id": "u1"}, BODY)


@pytest.mark.parametrize(("body", "job_id", "says"), [
    ("not json", None, "not JSON"),
    ('{"data": {}, "body": NaN}', None, "NaN is not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, None, "nested too deeply"),
    (json.dumps({"data": {"user_id": "u1"}}), None, '"body"'),
    (json.dumps({"data": ["u1"], "body": BODY}), None, '"data" must be a JSON object'),
    (json.dumps([1, 2]), None, '"body"'),
    (None, "has a space", "visible ASCII"),
    (None, "x" * 300, "visible ASCII"),
])
def test_a_message_that_can_never_be_read_is_fatal_bad_message(body: str | None, job_id: str | None, says: str) -> None:
    from idemsend.adapters.sqs import BadMessageError

    with pytest.raises(BadMessageError, match=says) as caught:
        reader().read(api_message(body, job_id=job_id))
    assert caught.value.code == BAD_MESSAGE


# -- one try, through the engine ------------------------------------------------------------------


async def _try(factory: Any, message: SQSMessage, max_attempts: int | None = 10) -> Any:
    engine = await factory().start()
    try:
        return await reader(max_attempts).run(engine, message)
    finally:
        await engine.aclose()


async def test_a_send_is_succeeded_and_names_the_queue_and_the_receive_count() -> None:
    hook = Queues()
    tried = await _try(scripted(hook=hook), api_message(count=3))
    assert isinstance(tried.outcome, Succeeded) and tried.outcome.result["key"] == "welcome:u1:" + tried.job_id
    assert hook.seen == [("sqs", 3)]
    record = tried.record()
    assert record["state"] == "sent" and record["attempt"] == 3 and record["message_id"] == tried.message.message_id
    assert settle(tried.outcome) == Delete()


async def test_a_retryable_error_is_a_visibility_change_by_the_backoff_or_retry_after() -> None:
    backoff = await _try(scripted(error(503, "UNAVAILABLE")), api_message(count=2))
    named = await _try(scripted(error(429, "SLOW", {"Retry-After": "30"})), api_message())
    assert isinstance(backoff.outcome, RetryIn) and 2.0 <= backoff.outcome.delay <= 2.5  # 1 s * 2**(2-1), +25%
    assert settle(backoff.outcome) in (Hide(2), Hide(3))
    assert isinstance(named.outcome, RetryIn) and settle(named.outcome) == Hide(30)
    assert named.record()["state"] == "retrying" and not named.final
    assert backoff.record()["maybe_sent"] is True and named.record()["maybe_sent"] is False  # a 429 ran nothing


async def test_the_last_receive_gives_up_with_the_real_reason() -> None:
    tried = await _try(scripted(error(503, "UNAVAILABLE")), api_message(count=4), max_attempts=4)
    assert isinstance(tried.outcome, GiveUp) and tried.outcome.retryable
    record = tried.record()
    assert record["state"] == "failed" and "503" in record["message"]
    assert record["maybe_sent"] is True and tried.outcome.maybe_sent  # a 503 may follow a run: not "unsent"
    # the kit's record, as on every queue, with the message's ids
    assert record == {
        **outcome_record(tried.outcome, attempt=4), "message_id": tried.message.message_id, "job_id": tried.job_id,
    }
    assert record["reason"] == "provider" and record["detail"] == "HTTP 503"
    assert settle(tried.outcome) == Delete() and settle(tried.outcome, give_up="redrive") == Hide(0)
    later = await _try(scripted(error(503, "UNAVAILABLE")), api_message(count=4), max_attempts=None)
    assert isinstance(later.outcome, RetryIn)  # no limit: the redrive policy decides


async def test_a_fatal_error_and_an_unreadable_message_give_up() -> None:
    fatal = await _try(scripted(error(422, "VALIDATION_ERROR")), api_message())
    bad = await _try(scripted(), api_message("{oops"))
    assert isinstance(fatal.outcome, GiveUp) and fatal.record()["code"] == "VALIDATION_ERROR"
    assert isinstance(bad.outcome, GiveUp) and not bad.outcome.retryable and bad.job_id is None
    assert bad.record()["state"] == "fatal" and bad.record()["code"] == BAD_MESSAGE and bad.final
    assert fatal.record()["maybe_sent"] is False and bad.record()["maybe_sent"] is False
