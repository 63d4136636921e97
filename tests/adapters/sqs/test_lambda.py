"""``SQSBatchHandler``: Lambda SQS events (the real event shape) -> partial batch responses.

The scripted-engine tests need no queue; the ones with a client receive real messages from
moto (real receipt handles and attributes), build the event Lambda would build from them,
and check what the handler did to the queue."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from idemsend import ConfigError, Engine, RawResponse, TransportRequest
from idemsend.testing import MockProvider, MockTransport

from .._scripted import KEY, URL, error, ok, scripted
from .conftest import SpyClient, counts, engine_factory, make_queue, message, needs_sqs, queue_arn, send, until

needs_sqs()

from idemsend.adapters.sqs import BAD_MESSAGE, SQSBatchHandler, SQSOutcome  # noqa: E402

pytestmark = pytest.mark.anyio

ARN = "arn:aws:sqs:us-east-2:123456789012:my-queue"


def record(message_id: str, body: Any, *, count: int = 1, group: str | None = None, job_id: str | None = None,
           arn: str = ARN, receipt: str | None = None) -> dict[str, Any]:
    """One record as Lambda delivers it (the AWS documentation's example event)."""
    attributes = {
        "ApproximateReceiveCount": str(count), "SentTimestamp": "1545082649183",
        "SenderId": "AIDAIENQZJOLO23YVJ4VO", "ApproximateFirstReceiveTimestamp": "1545082649185",
    }
    if group is not None:
        attributes.update(MessageGroupId=group, MessageDeduplicationId=message_id, SequenceNumber="1")
    return {
        "messageId": message_id,
        "receiptHandle": receipt or f"AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...{message_id}",
        "body": body if isinstance(body, str) else json.dumps(body),
        "attributes": attributes,
        "messageAttributes": {} if job_id is None else {
            "idemsend-job-id": {"stringValue": job_id, "stringListValues": [], "binaryListValues": [],
                                "dataType": "String"},
        },
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": arn,
        "awsRegion": arn.split(":")[3],
    }


def job(user: str) -> dict[str, Any]:
    return {"data": {"user_id": user}, "body": {"to": [f"{user}@x.io"]}}


class Context:
    """A Lambda context: only the remaining time matters here."""

    def __init__(self, seconds: float) -> None:
        self.ends = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self.ends - time.monotonic()) * 1000)


def by_user(answers: dict[str, list[RawResponse]], seen: list[str], delay: float = 0.0) -> Any:
    """An engine factory whose provider answers per user (``answers``, then 200) and logs keys."""

    def factory() -> Engine:
        async def answer(request: TransportRequest) -> RawResponse:
            key = request.headers["Idempotency-Key"]
            seen.append(key)
            if delay:
                await asyncio.sleep(delay)
            queue = answers.get(key.split(":")[1], [])
            return queue.pop(0) if queue else ok(request)

        return Engine(URL, key=KEY, api_key="k-123456", transport=MockTransport(answer), retry=0)

    return factory


def test_one_failed_record_does_not_fail_the_batch() -> None:
    handler = SQSBatchHandler(by_user({"u2": [error(503, "UNAVAILABLE")]}, seen := []))
    try:
        event = {"Records": [record(f"m{i}", job(f"u{i}")) for i in (1, 2, 3)]}
        assert handler(event, Context(60)) == {"batchItemFailures": [{"itemIdentifier": "m2"}]}
        assert handler({"Records": [record("m2", job("u2"), count=2)]}, None) == {"batchItemFailures": []}
    finally:
        handler.close()
    assert sorted(seen) == ["welcome:u1:m1", "welcome:u2:m2", "welcome:u2:m2", "welcome:u3:m3"]


def test_the_sync_handler_keeps_one_engine_across_invocations() -> None:
    made: list[Engine] = []

    def factory() -> Engine:
        made.append(engine := scripted()())
        return engine

    handler = SQSBatchHandler(factory)
    try:
        for n in range(3):
            assert handler({"Records": [record(f"m{n}", job("u"))]}) == {"batchItemFailures": []}
        assert handler.engines is not None and handler.engines.engine() is made[0]
    finally:
        handler.close()
    assert len(made) == 1 and repr(made[0]).endswith("closed>")


def test_fatal_and_unreadable_records_succeed_once_recorded_unless_left_to_the_redrive_policy() -> None:
    told: list[dict[str, Any]] = []

    async def on_outcome(tried: SQSOutcome) -> None:
        told.append(tried.record())

    event = {"Records": [record("bad", "{nope"), record("val", job("v"))]}
    answers = {"v": [error(422, "VALIDATION_ERROR")]}
    deleting = SQSBatchHandler(by_user(dict(answers), []), on_outcome=on_outcome)
    redrive = SQSBatchHandler(by_user({"v": [error(422, "VALIDATION_ERROR")]}, []), give_up="redrive")
    try:
        assert deleting(event) == {"batchItemFailures": []}  # Lambda deletes them
        assert redrive(event) == {"batchItemFailures": [{"itemIdentifier": "bad"}, {"itemIdentifier": "val"}]}
    finally:
        deleting.close()
        redrive.close()
    assert [(r["state"], r["code"]) for r in told] == [("fatal", BAD_MESSAGE), ("fatal", "VALIDATION_ERROR")]


def test_a_retryable_error_on_the_last_receive_gives_up() -> None:
    handler = SQSBatchHandler(by_user({"u": [error(503, "UNAVAILABLE")] * 2}, []), max_attempts=3)
    try:
        second = handler({"Records": [record("m", job("u"), count=2)]})
        assert second == {"batchItemFailures": [{"itemIdentifier": "m"}]}
        assert handler({"Records": [record("m", job("u"), count=3)]}) == {"batchItemFailures": []}
    finally:
        handler.close()


def test_a_fifo_group_stops_at_its_first_failure_and_other_groups_go_on() -> None:
    seen: list[str] = []
    handler = SQSBatchHandler(by_user({"a1": [error(503, "UNAVAILABLE")]}, seen))
    try:
        event = {"Records": [
            record("a1", job("a1"), group="A"), record("b1", job("b1"), group="B"),
            record("a2", job("a2"), group="A"), record("b2", job("b2"), group="B"), record("a3", job("a3"), group="A"),
        ]}
        failures = handler(event)["batchItemFailures"]
    finally:
        handler.close()
    assert failures == [{"itemIdentifier": "a1"}, {"itemIdentifier": "a2"}, {"itemIdentifier": "a3"}]
    assert sorted(seen) == ["welcome:a1:a1", "welcome:b1:b1", "welcome:b2:b2"]  # a2, a3: never tried out of order


def test_records_still_running_at_the_lambda_deadline_are_failures() -> None:
    seen: list[str] = []
    handler = SQSBatchHandler(by_user({}, seen, delay=30.0), deadline_margin=1.0)
    try:
        started = time.monotonic()
        answer = handler({"Records": [record("slow", job("s"))]}, Context(2.0))
        took = time.monotonic() - started
    finally:
        handler.close()
    assert answer == {"batchItemFailures": [{"itemIdentifier": "slow"}]}
    assert took < 20 and seen == ["welcome:s:slow"]


async def test_the_async_form_uses_the_callers_engine() -> None:
    engine = await scripted(error(503, "UNAVAILABLE"))().start()
    try:
        handler = SQSBatchHandler()
        event = {"Records": [record("m1", job("u1")), record("m2", job("u2"), job_id="order-2")]}
        assert await handler.handle(event, engine) == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
        assert await handler.handle({}, engine) == {"batchItemFailures": []}
        with pytest.raises(ConfigError, match="engine_factory"):
            handler(event)
    finally:
        await engine.aclose()


# -- with a client: the queue is told the retry delay -------------------------------------------


async def _lambda_event(sqs: Any, url: str, max_messages: int) -> dict[str, Any]:
    """Receive like Lambda's poller does, and build the event it would invoke with."""
    arn = await queue_arn(sqs, url)
    answer = await sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=max_messages, MessageSystemAttributeNames=["All"],
        MessageAttributeNames=["All"], WaitTimeSeconds=5,
    )
    records = []
    for raw in answer["Messages"]:
        attrs = raw.get("MessageAttributes", {})
        records.append({
            "messageId": raw["MessageId"], "receiptHandle": raw["ReceiptHandle"], "body": raw["Body"],
            "attributes": raw["Attributes"],
            "messageAttributes": {k: {"stringValue": v["StringValue"], "dataType": v["DataType"]}
                                  for k, v in attrs.items()},
            "md5OfBody": raw["MD5OfBody"], "eventSource": "aws:sqs", "eventSourceARN": arn, "awsRegion": "us-east-1",
        })
    return {"Records": records}


@pytest.mark.processes
async def test_with_a_client_a_retry_is_hidden_for_its_delay(
    provider: MockProvider, sqs: Any, boto3_sqs: Any
) -> None:
    url = await make_queue(sqs, VisibilityTimeout="60")
    await send(sqs, url, message("ok"), job_id="job-ok")
    await send(sqs, url, message("later"), job_id="job-later")
    provider.faults.retry_after = 2
    provider.script("429", key="welcome:later:job-later")
    spy = SpyClient(boto3_sqs)
    handler = SQSBatchHandler(engine_factory(provider), client=spy)
    event = await _lambda_event(sqs, url, 2)
    ids = {r["messageAttributes"]["idemsend-job-id"]["stringValue"]: r["messageId"] for r in event["Records"]}
    try:
        answer = await asyncio.to_thread(handler, event, Context(60))
    finally:
        await asyncio.to_thread(handler.close)
    assert answer == {"batchItemFailures": [{"itemIdentifier": ids["job-later"]}]}
    assert [c["VisibilityTimeout"] for c in spy.seen("change_message_visibility")] == [2]
    # Lambda would delete the successes; the failure is back in 2 s, not the queue's 60 s
    await sqs.delete_message(QueueUrl=url, ReceiptHandle=next(
        r["receiptHandle"] for r in event["Records"] if r["messageId"] == ids["job-ok"]))

    async def back() -> bool:
        return await counts(sqs, url) == (1, 0)

    await until(back, "the retried message visible again", timeout=30)
    again = await _lambda_event(sqs, url, 1)
    assert again["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
    handler2 = SQSBatchHandler(engine_factory(provider))
    try:
        assert await asyncio.to_thread(handler2, again) == {"batchItemFailures": []}
    finally:
        await asyncio.to_thread(handler2.close)
    assert provider.sends_for("welcome:later:job-later") == 1 and provider.sends == 2


@pytest.mark.processes
async def test_with_a_client_a_fifo_groups_later_records_are_released_behind_its_failure(
    provider: MockProvider, sqs: Any, boto3_sqs: Any
) -> None:
    """As the consumer does: a1 is hidden for its retry delay, a2 and a3 (reported failed,
    untried) are released at once, so the group comes back after a1's delay, not after
    the queue's visibility timeout (60 s)."""
    url = await make_queue(sqs, fifo=True, VisibilityTimeout="60")
    for name in ("a1", "a2", "a3"):
        await send(sqs, url, message(name), job_id=f"job-{name}", MessageGroupId="A", MessageDeduplicationId=name)
    provider.faults.retry_after = 2
    provider.script("429", key="welcome:a1:job-a1")
    spy = SpyClient(boto3_sqs)
    handler = SQSBatchHandler(engine_factory(provider), client=spy)
    event = await _lambda_event(sqs, url, 3)
    ids = [r["messageAttributes"]["idemsend-job-id"]["stringValue"] for r in event["Records"]]
    assert ids == ["job-a1", "job-a2", "job-a3"]
    try:
        answer = await asyncio.to_thread(handler, event, Context(60))
    finally:
        await asyncio.to_thread(handler.close)
    assert answer == {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"]]}
    by_handle = {r["receiptHandle"]: r["messageAttributes"]["idemsend-job-id"]["stringValue"] for r in event["Records"]}
    hidden = {by_handle[c["ReceiptHandle"]]: c["VisibilityTimeout"] for c in spy.seen("change_message_visibility")}
    assert hidden == {"job-a1": 2, "job-a2": 0, "job-a3": 0}
    assert await counts(sqs, url) == (2, 1)  # a2, a3 visible (their group waits behind a1), a1 hidden
    assert provider.sends == 0 and sorted(provider.arrivals) == ["welcome:a1:job-a1"]  # a2, a3 never tried

    async def back() -> bool:
        return await counts(sqs, url) == (3, 0)

    await until(back, "the whole group visible again after a1's 2 s delay", timeout=30)


@pytest.mark.processes
async def test_redrive_releases_the_record_at_once_with_an_async_client(provider: MockProvider, sqs: Any) -> None:
    url = await make_queue(sqs, VisibilityTimeout="60")
    await send(sqs, url, "{not json")
    event = await _lambda_event(sqs, url, 1)
    handler = SQSBatchHandler(give_up="redrive", client=sqs)
    async with engine_factory(provider)() as engine:
        answer = await handler.handle(event, engine)
    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    assert await counts(sqs, url) == (1, 0)  # visibility 0: back for the redrive policy to count


@pytest.mark.processes
async def test_the_lambda_function_of_the_worker_project(
    provider: MockProvider, sqs: Any, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``adapters/sqs_worker/lambda_function.py`` as Lambda would load it, on a real event."""
    import importlib.util

    from harness.queues.base import ADAPTERS
    from harness.queues.sqs import CREDENTIALS, REGION

    for name, value in {
        "IDEMSEND_URL": provider.emails_url, "IDEMSEND_API_KEY": "sqs-key", "IDEMSEND_RETRIES": "0",
        "SQS_ENDPOINT_URL": moto_url, "AWS_DEFAULT_REGION": REGION, "SQS_MAX_ATTEMPTS": "5",
        "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
    }.items():
        monkeypatch.setenv(name, value)
    path = ADAPTERS / "sqs_worker" / "lambda_function.py"
    spec = importlib.util.spec_from_file_location("sqs_lambda_function", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    url = await make_queue(sqs)
    await send(sqs, url, message("lam"), job_id="job-lam")
    await send(sqs, url, message("down"), job_id="job-down")
    provider.script("5xx", key="welcome:down:job-down")
    event = await _lambda_event(sqs, url, 2)
    try:
        answer = await asyncio.to_thread(module.lambda_handler, event, Context(30))
    finally:
        await asyncio.to_thread(module.handler.close)
    failed = [r["messageId"] for r in event["Records"] if r["messageAttributes"]["idemsend-job-id"]["stringValue"]
              == "job-down"]
    assert answer == {"batchItemFailures": [{"itemIdentifier": failed[0]}]}
    assert provider.sends == 1 and module.handler.max_attempts == 5
