"""Fixtures for the SQS adapter's tests: moto in server mode on a loopback port (the
harness's ``MotoServer``), real aiobotocore and boto3 clients, a MockProvider.

Nothing here imports aiobotocore or moto at import time: where they are missing (the main
``.venv``), each test module skips with the reason, and ``nox -s sqs`` runs them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from idemsend import Engine
from idemsend.testing import MockProvider

SKIP_REASON = "the SQS adapter needs aiobotocore, boto3 and moto[server]: run it in its own environment (nox -s sqs)"
KEY = "welcome:{user_id}:{job_id}"
T = TypeVar("T")


def needs_sqs() -> None:
    """Skip the calling test module unless the sqs environment's packages are here."""
    for module in ("aiobotocore", "boto3", "moto"):
        pytest.importorskip(module, reason=SKIP_REASON)


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    needs_sqs()
    from harness.queues.sqs import MotoServer

    with MotoServer() as moto:
        yield moto.url


@pytest.fixture
async def sqs(moto_url: str) -> AsyncIterator[Any]:
    """An aiobotocore SQS client on moto."""
    from harness.queues.sqs import sqs_client

    async with sqs_client(moto_url) as client:
        yield client


@pytest.fixture
def boto3_sqs(moto_url: str) -> Iterator[Any]:
    """A boto3 (sync) SQS client on moto, as a Lambda function has."""
    import boto3

    from harness.queues.sqs import CREDENTIALS, REGION

    client = boto3.client("sqs", region_name=REGION, endpoint_url=moto_url, **CREDENTIALS)
    yield client
    client.close()


@pytest.fixture
async def provider() -> AsyncIterator[MockProvider]:
    async with MockProvider(api_key="sqs-key") as p:
        yield p


def engine_factory(provider: MockProvider, **options: Any) -> Callable[[], Engine]:
    """No quick retries: every retryable outcome goes back to the queue."""
    return lambda: Engine(provider.emails_url, key=KEY, api_key="sqs-key", retry=0, **options)


async def make_queue(sqs: Any, *, fifo: bool = False, dlq_after: int | None = None, **attributes: str) -> str:
    """A fresh queue (``dlq_after``: with a dead-letter queue after that many receives)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    attrs = {"VisibilityTimeout": "30", **attributes}
    if fifo:
        attrs["FifoQueue"] = "true"
    if dlq_after is not None:
        dlq = await make_queue(sqs, fifo=fifo)
        arn = await queue_arn(sqs, dlq)
        attrs["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": dlq_after})
    answer = await sqs.create_queue(QueueName=name + (".fifo" if fifo else ""), Attributes=attrs)
    return str(answer["QueueUrl"])


async def queue_arn(sqs: Any, url: str) -> str:
    answer = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(answer["Attributes"]["QueueArn"])


async def dead_letter_url(sqs: Any, url: str) -> str:
    answer = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
    arn = json.loads(answer["Attributes"]["RedrivePolicy"])["deadLetterTargetArn"]
    return str((await sqs.get_queue_url(QueueName=arn.rsplit(":", 1)[1]))["QueueUrl"])


def message(user: str, *, body: Any = None) -> str:
    """A job message: ``{"data": {"user_id": user}, "body": ...}``."""
    return json.dumps({"data": {"user_id": user}, "body": body if body is not None else {"to": [f"{user}@x.io"]}})


async def send(sqs: Any, url: str, body: str, *, job_id: str | None = None, **extra: Any) -> str:
    attributes = {"idemsend-job-id": {"DataType": "String", "StringValue": job_id}} if job_id else {}
    answer = await sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attributes, **extra)
    return str(answer["MessageId"])


async def counts(sqs: Any, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of the queue."""
    answer = await sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )
    attrs = answer["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


async def until(check: Callable[[], Awaitable[T | None] | T | None], what: str, timeout: float = 60.0) -> T:
    """Poll ``check`` until it returns something other than None/False (generous deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value is not None and value is not False:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


class SpyClient:
    """Forwards to a real SQS client and records the settling calls it saw."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.client, name)
        if name not in ("delete_message", "change_message_visibility", "receive_message"):
            return target

        def call(**kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            return target(**kwargs)

        return call

    def seen(self, name: str) -> list[dict[str, Any]]:
        return [kwargs for called, kwargs in self.calls if called == name]
