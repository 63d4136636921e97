"""``SQSConsumer`` against moto in server mode with real aiobotocore clients: delete on sent,
visibility on retry, fatal delete vs dead-letter queue, the heartbeat, shutdown, a poisoned
message, FIFO order, the concurrency bound. Every wait polls a condition with a generous
deadline; nothing depends on a sleep being long enough."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from idemsend import ConfigError, Engine, RawResponse, TransportRequest
from idemsend.ledger import MemoryLedger
from idemsend.testing import MockProvider, MockTransport

from .conftest import (
    SpyClient,
    counts,
    dead_letter_url,
    engine_factory,
    make_queue,
    message,
    needs_sqs,
    send,
    until,
)

needs_sqs()

from idemsend.adapters.sqs import BAD_MESSAGE, SQSConsumer, SQSOutcome  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.processes]


class Outcomes:
    """``on_outcome``: every try's record, in order."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def __call__(self, tried: SQSOutcome) -> None:
        self.records.append(tried.record())

    def final(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["state"] != "retrying"]


@contextlib.asynccontextmanager
async def consuming(consumer: SQSConsumer) -> AsyncIterator[SQSConsumer]:
    """Run ``consumer`` while the block runs; stop it (gracefully) after."""
    task = asyncio.create_task(consumer.run())
    ready = asyncio.create_task(consumer.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises the start error
    try:
        yield consumer
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 120)


def consumer_for(provider: MockProvider, sqs: Any, url: str, **options: Any) -> SQSConsumer:
    options.setdefault("wait_time", 1)
    ledger = options.pop("ledger", None)
    factory = engine_factory(provider, ledger=ledger) if ledger is not None else engine_factory(provider)
    return SQSConsumer(factory, url, client=options.pop("client", sqs), **options)


async def test_a_sent_message_is_deleted(provider: MockProvider, sqs: Any) -> None:
    url = await make_queue(sqs)
    ids = [await send(sqs, url, message(f"u{i}")) for i in range(3)]
    outcomes = Outcomes()
    async with consuming(consumer_for(provider, sqs, url, on_outcome=outcomes)) as consumer:
        await until(lambda: consumer.stats.deleted == 3, "three deletes")
    assert sorted(r["message_id"] for r in outcomes.records) == sorted(ids)
    assert all(r["state"] == "sent" and r["attempt"] == 1 and r["job_id"] == r["message_id"] for r in outcomes.records)
    assert provider.sends == 3 and await counts(sqs, url) == (0, 0)
    assert consumer.max_attempts == 10 and consumer.visibility == 30 and consumer.heartbeat_every == 10


async def test_a_retry_is_a_visibility_change_and_comes_back_no_earlier(provider: MockProvider, sqs: Any) -> None:
    url = await make_queue(sqs)
    await send(sqs, url, message("slow", body={"to": ["s@x.io"]}), job_id="job-429")
    key = "welcome:slow:job-429"
    provider.faults.retry_after = 2.2  # rounded up to 3 whole seconds
    provider.script("429", key=key)
    spy, outcomes = SpyClient(sqs), Outcomes()
    async with consuming(consumer_for(provider, sqs, url, client=spy, on_outcome=outcomes)) as consumer:
        await until(lambda: consumer.stats.deleted == 1, "the retried message to be sent")
    hidden = spy.seen("change_message_visibility")
    assert [c["VisibilityTimeout"] for c in hidden] == [3]  # no heartbeat beat: 30 s visibility
    arrivals = provider.arrivals[key]
    assert len(arrivals) == 2 and arrivals[1] - arrivals[0] >= 2.95
    assert [r["state"] for r in outcomes.records] == ["retrying", "sent"]
    assert [r["attempt"] for r in outcomes.records] == [1, 2]  # ApproximateReceiveCount
    assert provider.sends_for(key) == 1


async def test_a_retry_after_past_the_limits_is_clamped(provider: MockProvider, sqs: Any) -> None:
    url = await make_queue(sqs)
    await send(sqs, url, message("later"), job_id="job-later")
    provider.faults.retry_after = 90_000  # a day: the kit caps it at an hour, SQS at 12 h
    provider.script("429", key="welcome:later:job-later")
    spy = SpyClient(sqs)
    async with consuming(consumer_for(provider, sqs, url, client=spy)) as consumer:
        await until(lambda: consumer.stats.retried == 1, "the retry")
    assert [c["VisibilityTimeout"] for c in spy.seen("change_message_visibility")] == [3600]
    assert await counts(sqs, url) == (0, 1)  # hidden, not deleted


async def test_a_fatal_error_is_deleted_after_it_is_recorded(provider: MockProvider, sqs: Any) -> None:
    url = await make_queue(sqs, dlq_after=3)
    await send(sqs, url, message("bad", body=["not", "an", "object"]))  # the provider answers 422
    outcomes, ledger = Outcomes(), MemoryLedger()
    async with consuming(consumer_for(provider, sqs, url, on_outcome=outcomes, ledger=ledger)) as consumer:
        await until(lambda: consumer.stats.deleted == 1, "the delete")
    assert [(r["state"], r.get("code")) for r in outcomes.records] == [("fatal", "VALIDATION_ERROR")]
    assert consumer.max_attempts == 3  # the redrive policy's maxReceiveCount, under the default 10
    assert await counts(sqs, url) == (0, 0)
    assert await counts(sqs, await dead_letter_url(sqs, url)) == (0, 0)


async def test_with_give_up_redrive_a_fatal_message_ends_in_the_dead_letter_queue(
    provider: MockProvider, sqs: Any
) -> None:
    url = await make_queue(sqs, dlq_after=2)
    message_id = await send(sqs, url, message("bad", body=["not", "an", "object"]))
    outcomes, ledger = Outcomes(), MemoryLedger()
    dlq = await dead_letter_url(sqs, url)
    consumer = consumer_for(provider, sqs, url, on_outcome=outcomes, ledger=ledger, give_up="redrive")
    async with consuming(consumer):
        async def moved() -> bool:
            return await counts(sqs, dlq) == (1, 0)

        await until(moved, "the message in the dead-letter queue", timeout=90)
    assert consumer.stats.deleted == 0 and consumer.stats.released == 2
    assert [(r["state"], r["attempt"]) for r in outcomes.records] == [("fatal", 1), ("fatal", 2)]
    assert provider.stats.requests == 1 and provider.sends == 0  # the second try was answered by the ledger
    answer = await sqs.receive_message(QueueUrl=dlq, MessageAttributeNames=["All"])
    assert answer["Messages"][0]["MessageId"] == message_id
    assert await counts(sqs, url) == (0, 0)


async def test_a_poisoned_message_is_fatal_once_and_never_retried(provider: MockProvider, sqs: Any) -> None:
    url = await make_queue(sqs)
    poison = await send(sqs, url, "{this is not json")
    good = await send(sqs, url, message("fine"))
    outcomes = Outcomes()
    async with consuming(consumer_for(provider, sqs, url, on_outcome=outcomes)) as consumer:
        await until(lambda: consumer.stats.deleted == 2, "both deletes")
    by_id = {r["message_id"]: r for r in outcomes.records}
    assert len(outcomes.records) == 2
    assert (by_id[poison]["state"], by_id[poison]["code"], by_id[poison]["job_id"]) == ("fatal", BAD_MESSAGE, None)
    assert by_id[good]["state"] == "sent" and provider.sends == 1
    assert await counts(sqs, url) == (0, 0)


async def test_a_send_longer_than_the_visibility_timeout_is_not_delivered_twice(
    provider: MockProvider, sqs: Any
) -> None:
    """The queue hides a message 4 s; the send takes 7 s (well inside the engine's 10 s
    request timeout, so a loaded machine does not turn it into a timed-out try and a retry).
    The heartbeat keeps it hidden, so a second consumer polling the queue all along never gets it."""
    url = await make_queue(sqs, VisibilityTimeout="4")
    await send(sqs, url, message("slow"), job_id="job-slow")
    key = "welcome:slow:job-slow"
    provider.delay(key, 7.0)
    first, second = Outcomes(), Outcomes()
    a = consumer_for(provider, sqs, url, on_outcome=first)
    async with consuming(a):
        await until(lambda: key in provider.arrivals, "the send at the provider")
        b = consumer_for(provider, sqs, url, on_outcome=second)  # a thief, polling all along
        async with consuming(b):
            await until(lambda: a.stats.deleted == 1, "the slow send's delete", timeout=90)
    assert a.heartbeat_every == pytest.approx(4 / 3) and a.stats.extended >= 3  # 7 s, hidden 4 s at a time
    assert a.stats.received == 1 and b.stats.received == 0 and second.records == []
    assert len(provider.arrivals[key]) == 1 and provider.sends_for(key) == 1
    assert [r["attempt"] for r in first.records] == [1]


async def test_without_a_heartbeat_the_visibility_must_cover_the_longest_send(
    provider: MockProvider, sqs: Any
) -> None:
    url = await make_queue(sqs, VisibilityTimeout="30")
    consumer = consumer_for(provider, sqs, url, heartbeat=0)
    with pytest.raises(ConfigError, match=r"worst_case_send_time\(\) = \d+s"):
        async with consuming(consumer):
            pass
    covered = consumer_for(provider, sqs, url, heartbeat=0, visibility_timeout=43_200)
    async with consuming(covered):
        assert covered.heartbeat_every == 0


@pytest.mark.parametrize(("options", "queue", "says"), [
    ({"give_up": "redrive"}, {}, "has none"),
    ({"max_attempts": 4}, {"dlq_after": 3}, "maxReceiveCount=3"),
    ({"heartbeat": 20}, {}, "beat at most every 15s"),
    ({"visibility_timeout": 2}, {}, "too short"),
])
async def test_a_queue_that_disagrees_with_the_options_stops_the_start(
    provider: MockProvider, sqs: Any, options: dict[str, Any], queue: dict[str, Any], says: str
) -> None:
    url = await make_queue(sqs, **queue)
    with pytest.raises(ConfigError, match=says):
        async with consuming(consumer_for(provider, sqs, url, **options)):
            pass


async def test_shutdown_lets_a_running_send_finish_and_stops_receiving(provider: MockProvider, sqs: Any) -> None:
    url = await make_queue(sqs)
    await send(sqs, url, message("busy"), job_id="job-busy")
    provider.delay("welcome:busy:job-busy", 3.0)
    consumer = consumer_for(provider, sqs, url, shutdown_timeout=60, wait_time=2)
    task = asyncio.create_task(consumer.run())
    await until(lambda: "welcome:busy:job-busy" in provider.arrivals, "the send at the provider")
    consumer.stop()
    await send(sqs, url, message("after"))  # sent after the stop: never run here
    await asyncio.wait_for(task, 60)
    assert consumer.stats.deleted == 1 and provider.sends == 1
    # the poll under way when stop() came may have picked it up: then it was handed back at once
    assert consumer.stats.received - 1 == consumer.stats.released <= 1
    assert await counts(sqs, url) == (1, 0)


async def test_shutdown_past_its_deadline_releases_what_still_runs(sqs: Any) -> None:
    url = await make_queue(sqs)
    await send(sqs, url, message("stuck"), job_id="job-stuck")
    arrived = asyncio.Event()

    async def never(request: TransportRequest) -> RawResponse:  # a send that never ends
        arrived.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def factory() -> Engine:
        return Engine("https://api.example.com/v1/emails", key="welcome:{user_id}:{job_id}", api_key="k-123456",
                      transport=MockTransport(never), retry=0)

    consumer = SQSConsumer(factory, url, client=sqs, wait_time=1, shutdown_timeout=0.5)
    task = asyncio.create_task(consumer.run())
    await until(arrived.is_set, "the send under way")
    started = time.monotonic()
    consumer.stop()
    await asyncio.wait_for(task, 60)
    assert time.monotonic() - started < 30  # the send would never have ended
    assert consumer.stats.released == 1 and consumer.stats.deleted == 0
    answer = await sqs.receive_message(QueueUrl=url, MessageSystemAttributeNames=["All"], WaitTimeSeconds=5)
    assert answer["Messages"][0]["Attributes"]["ApproximateReceiveCount"] == "2"  # back at once, for another consumer


class PollClock(SpyClient):
    """A SpyClient that also notes when each long poll began (``time.monotonic()``)."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.polls: list[float] = []

    def __getattr__(self, name: str) -> Any:
        if name == "receive_message":
            self.polls.append(time.monotonic())
        return super().__getattr__(name)


@pytest.mark.parametrize("cut_off", ["deadline", "second stop"])
async def test_a_cut_off_stop_releases_its_message_for_another_consumer_at_once(
    sqs: Any, caplog: pytest.LogCaptureFixture, cut_off: str
) -> None:
    """A send cut off by the shutdown deadline, or by a second ``stop()``, while a long poll
    is open: the released message must not go to that poll (SQS would keep it in flight for
    the queue's 30 s visibility timeout with no consumer left). Another consumer that asks
    once every poll of this one is over, however it ended, gets it within seconds. And the
    log says how long the shutdown really took."""
    url = await make_queue(sqs)
    await send(sqs, url, message("cut"), job_id="job-cut")
    arrived = asyncio.Event()

    async def never(request: TransportRequest) -> RawResponse:  # a send that never ends
        arrived.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def factory() -> Engine:
        return Engine("https://api.example.com/v1/emails", key="welcome:{user_id}:{job_id}", api_key="k-123456",
                      transport=MockTransport(never), retry=0)

    wait_time, timeout = 3, (0.5 if cut_off == "deadline" else 600.0)
    spy = PollClock(sqs)
    consumer = SQSConsumer(factory, url, client=spy, wait_time=wait_time, shutdown_timeout=timeout)
    task = asyncio.create_task(consumer.run())
    await until(arrived.is_set, "the send under way")
    with caplog.at_level("WARNING", logger="idemsend.adapters.sqs"):
        started = time.monotonic()
        consumer.stop()
        if cut_off == "second stop":
            consumer.stop()
        await asyncio.wait_for(task, 60)
        took = time.monotonic() - started
    assert consumer.stats.released >= 1 and consumer.stats.deleted == 0
    # moto ends a long poll wait_time after it began (an abandoned one too): past that, with
    # a wide margin, nothing of this consumer's can take the message any more
    await asyncio.sleep(max(0.0, spy.polls[-1] + wait_time + 3 - time.monotonic()))
    answer = await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)
    assert [m["Body"] for m in answer.get("Messages", [])] == [message("cut")], "the released message is in flight"
    said = [r.getMessage() for r in caplog.records if "still going after" in r.getMessage()]
    assert len(said) == 1, said
    seconds = float(said[0].split("still going after ")[1].split("s")[0])
    assert (0.5 if cut_off == "deadline" else 0.0) <= seconds <= took + 0.05, (said, took)


async def test_concurrency_bounds_the_messages_in_flight(provider: MockProvider, sqs: Any) -> None:
    url = await make_queue(sqs)
    for i in range(12):
        await send(sqs, url, message(f"c{i}"))
    provider.faults.latency = 0.3  # every answer takes a while, so sends overlap
    async with consuming(consumer_for(provider, sqs, url, concurrency=3)) as consumer:
        await until(lambda: consumer.stats.deleted == 12, "every delete", timeout=90)
    assert provider.stats.max_concurrency <= 3 and provider.sends == 12


async def test_two_messages_of_one_job_are_one_send(provider: MockProvider, sqs: Any) -> None:
    url = await make_queue(sqs)
    await send(sqs, url, message("twice"), job_id="job-twice")
    await send(sqs, url, message("twice"), job_id="job-twice")  # the producer sent it again
    outcomes = Outcomes()
    async with consuming(consumer_for(provider, sqs, url, on_outcome=outcomes, ledger=MemoryLedger())) as consumer:
        await until(lambda: consumer.stats.deleted == 2, "both deletes")
    assert provider.sends_for("welcome:twice:job-twice") == 1
    assert sorted(r["replayed"] for r in outcomes.records) == [False, True]


async def test_a_fifo_group_keeps_its_order_through_a_retry(provider: MockProvider, sqs: Any) -> None:
    """a1 fails once (503): SQS keeps it in flight for the retry delay, so a2 and a3 (released
    untried behind it) wait; group b is not held up."""
    url = await make_queue(sqs, fifo=True)
    for name in ("a1", "a2", "a3", "b1", "b2"):
        await send(sqs, url, message(name), job_id=f"job-{name}", MessageGroupId=name[0],
                   MessageDeduplicationId=name)
    provider.script("5xx", key="welcome:a1:job-a1")
    outcomes = Outcomes()
    async with consuming(consumer_for(provider, sqs, url, on_outcome=outcomes, concurrency=10)) as consumer:
        await until(lambda: consumer.stats.deleted == 5, "every delete", timeout=90)
    assert consumer.fifo
    sent = [r["job_id"] for r in outcomes.records if r["state"] == "sent"]
    assert [j for j in sent if j.startswith("job-a")] == ["job-a1", "job-a2", "job-a3"]
    assert [j for j in sent if j.startswith("job-b")] == ["job-b1", "job-b2"]
    first_a = {key: times[0] for key, times in provider.arrivals.items() if key.startswith("welcome:a")}
    assert first_a["welcome:a2:job-a2"] > provider.arrivals["welcome:a1:job-a1"][1]  # after a1's retry
    assert len(provider.arrivals["welcome:a2:job-a2"]) == 1 and provider.sends == 5
