"""What moto's SQS does with FIFO order, as docs/adapters-sqs.md says ("Testing without AWS"):
a group's messages come in order when they are new or were released (visibility 0), but
when several of them become visible together because their visibility lapsed, moto hands
out the group's *last* one first (SQS would hand out the first). If moto changes, this test
fails and the docs need the same change."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import counts, make_queue, needs_sqs, until

needs_sqs()

pytestmark = [pytest.mark.anyio, pytest.mark.processes]


async def receive(sqs: Any, url: str, **options: Any) -> list[Any]:
    answer = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, **options)
    return list(answer.get("Messages", []))


async def test_moto_keeps_fifo_order_for_released_messages_but_not_for_lapsed_ones(sqs: Any) -> None:
    url = await make_queue(sqs, fifo=True)
    for name in ("a1", "a2", "a3", "a4"):
        await sqs.send_message(QueueUrl=url, MessageBody=name, MessageGroupId="A", MessageDeduplicationId=name)
    first = await receive(sqs, url)
    assert [m["Body"] for m in first] == ["a1", "a2", "a3", "a4"]
    for m in reversed(first):  # released, in another order than sent
        await sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    released = await receive(sqs, url, VisibilityTimeout=1)
    assert [m["Body"] for m in released] == ["a1", "a2", "a3", "a4"]  # in order

    async def lapsed() -> bool:
        return await counts(sqs, url) == (4, 0)

    await until(lapsed, "the four messages visible again", timeout=30)
    assert [m["Body"] for m in await receive(sqs, url)] == ["a4"]  # not SQS's order: the group's last first
