"""``JetStreamConsumer`` against a real nats-server with JetStream and real HTTP to the
MockProvider: ack on sent, ``nak(delay)`` on retry (redelivered with ``num_delivered`` 2), term
on fatal and on a message without a usable job id (never sent), settings refused at start,
the ``in_progress()`` heartbeat across a send longer than ``ack_wait``, ``max_deliver``,
graceful drain. Every wait polls a condition with a generous deadline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from idemsend import ConfigError
from idemsend.ledger import MemoryLedger
from idemsend.testing import MockProvider

from .conftest import Stream, engine_factory, job, needs_nats, until

needs_nats()

from nats.js.api import AckPolicy  # noqa: E402

from idemsend.adapters.nats import BAD_MESSAGE, JetStreamConsumer, NatsOutcome  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.processes]


class Outcomes:
    """``on_outcome``: every try's record, in order."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def __call__(self, tried: NatsOutcome) -> None:
        self.records.append(tried.record())

    def final(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["state"] != "retrying"]


@contextlib.asynccontextmanager
async def consuming(consumer: JetStreamConsumer) -> AsyncIterator[JetStreamConsumer]:
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


def make(provider: MockProvider, stream: Stream, nats_url: str, outcomes: Outcomes | None = None,
         **options: Any) -> JetStreamConsumer:
    engine_options = options.pop("engine", {})
    return JetStreamConsumer(
        engine_factory(provider, **engine_options), stream=stream.name, durable=stream.durable, servers=nats_url,
        fetch_wait=0.5, retry_base=0.2, on_outcome=outcomes, **options,
    )


async def test_a_sent_job_is_acked_and_sent_once(provider: MockProvider, stream: Stream, nats_url: str) -> None:
    await stream.consumer()
    outcomes = Outcomes()
    async with consuming(make(provider, stream, nats_url, outcomes)) as consumer:
        await stream.publish(job("u1"), job_id="job-1")
        await until(lambda: outcomes.final(), "the outcome")
        await until(lambda: consumer.stats.acked == 1, "the ack")
    [record] = outcomes.records
    assert (record["state"], record["job_id"], record["attempt"]) == ("sent", "job-1", 1)
    assert provider.sends_for("welcome:u1:job-1") == 1
    info = await stream.info()
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)


async def test_without_the_header_the_stream_sequence_is_the_job_id(
    provider: MockProvider, stream: Stream, nats_url: str
) -> None:
    await stream.consumer()
    outcomes = Outcomes()
    async with consuming(make(provider, stream, nats_url, outcomes)) as consumer:
        seq = await stream.publish(job("u2"))
        await until(lambda: outcomes.final(), "the outcome")
    job_id = outcomes.records[0]["job_id"]
    assert consumer.stream_created is not None and job_id == f"{stream.name}:{consumer.stream_created}:{seq}"
    assert provider.sends_for(f"welcome:u2:{job_id}") == 1


async def test_a_stream_made_again_does_not_reuse_an_old_jobs_key(
    provider: MockProvider, stream: Stream, nats_url: str
) -> None:
    ledger = MemoryLedger()
    outcomes = Outcomes()
    for round_ in range(2):  # the same stream name, its sequences starting over at 1
        if round_:
            await stream.js.delete_stream(stream.name)
            await stream.js.add_stream(name=stream.name, subjects=[stream.subject])
        await stream.consumer()
        async with consuming(make(provider, stream, nats_url, outcomes, engine={"ledger": ledger})):
            assert await stream.publish(job("same")) == 1
            want = round_ + 1
            await until(lambda: len(outcomes.final()) == want, "the outcome")  # noqa: B023 - awaited here
    first, second = outcomes.final()
    assert first["job_id"] != second["job_id"]
    assert (first["replayed"], second["replayed"]) == (False, False)
    assert provider.sends_for(f"welcome:same:{first['job_id']}") == provider.sends_for(
        f"welcome:same:{second['job_id']}") == 1


async def test_a_retryable_error_is_naked_and_redelivered(
    provider: MockProvider, stream: Stream, nats_url: str
) -> None:
    await stream.consumer()
    provider.script("5xx", key="welcome:u3:job-3")
    outcomes = Outcomes()
    async with consuming(make(provider, stream, nats_url, outcomes)) as consumer:
        await stream.publish(job("u3"), job_id="job-3")
        await until(lambda: outcomes.final(), "the outcome after the retry")
    assert [(r["state"], r["attempt"]) for r in outcomes.records] == [("retrying", 1), ("sent", 2)]
    assert outcomes.records[0]["delay"] >= 0.2
    assert consumer.stats.naked == 1 and consumer.stats.acked == 1
    assert provider.sends_for("welcome:u3:job-3") == 1


async def test_a_fatal_error_is_terminated_with_its_reason_and_never_redelivered(
    provider: MockProvider, stream: Stream, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await stream.consumer(ack_wait=2.0)
    outcomes = Outcomes()
    caplog.set_level(logging.WARNING, "idemsend.adapters.nats")
    async with consuming(make(provider, stream, nats_url, outcomes)) as consumer:
        await stream.publish({"data": {"user_id": "u4"}, "body": ["not", "an", "object"]}, job_id="job-4")
        await until(lambda: consumer.stats.terminated == 1, "the term")
        # a terminated message is never delivered again (twice its ack_wait, and more)
        await stream.publish(job("later"), job_id="job-later")
        await until(lambda: len(outcomes.final()) == 2, "the later job")
        info = await until(lambda: _settled(stream), "the consumer's counts")
    first = outcomes.records[0]
    assert (first["state"], first.get("code"), first["attempt"]) == ("fatal", "VALIDATION_ERROR", 1)
    assert [r["job_id"] for r in outcomes.records] == ["job-4", "job-later"]  # job-4 came back no more
    assert info.num_redelivered == 0
    assert "job-4" in caplog.text and "gave up, terminating it" in caplog.text


async def _settled(stream: Stream) -> Any:
    info = await stream.info()
    return info if info.num_ack_pending == 0 and info.num_pending == 0 else None


@pytest.mark.parametrize(("headers", "raw"), [
    ({"Nats-Msg-Id": "has space"}, None),
    ({}, b"not json at all"),
    ({"Nats-Msg-Id": "ok-id"}, b'{"data": {"user_id": "x"}, "body": Infinity}'),
])
async def test_a_message_that_can_never_be_sent_is_terminated_never_sent(
    provider: MockProvider, stream: Stream, nats_url: str, headers: dict[str, str], raw: bytes | None
) -> None:
    await stream.consumer()
    outcomes = Outcomes()
    async with consuming(make(provider, stream, nats_url, outcomes)) as consumer:
        await stream.publish(job("bad"), raw=raw, headers=headers)
        await until(lambda: consumer.stats.terminated == 1, "the term")
    [record] = outcomes.records
    assert (record["state"], record["code"]) == ("fatal", BAD_MESSAGE)
    assert provider.stats.requests == 0


async def test_require_msg_id_terminates_a_message_without_the_header(
    provider: MockProvider, stream: Stream, nats_url: str
) -> None:
    await stream.consumer()
    outcomes = Outcomes()
    async with consuming(make(provider, stream, nats_url, outcomes, require_msg_id=True)) as consumer:
        await stream.publish(job("nohdr"))
        await until(lambda: consumer.stats.terminated == 1, "the term")
    assert outcomes.records[0]["code"] == BAD_MESSAGE and "no Nats-Msg-Id header" in outcomes.records[0]["message"]
    assert provider.stats.requests == 0


@pytest.mark.parametrize(("policy", "words"), [(AckPolicy.NONE, "AckPolicy.NONE"), (AckPolicy.ALL, "AckPolicy.ALL")])
async def test_a_consumer_without_per_message_acks_is_refused_at_start(
    provider: MockProvider, stream: Stream, nats_url: str, policy: AckPolicy, words: str
) -> None:
    await stream.consumer(ack_policy=policy)
    await stream.publish(job("never"), job_id="job-never")
    with pytest.raises(ConfigError, match=rf"ack_policy={words}"):
        await make(provider, stream, nats_url).run()
    assert provider.stats.requests == 0


async def test_a_missing_consumer_is_named(provider: MockProvider, stream: Stream, nats_url: str) -> None:
    with pytest.raises(ConfigError, match=rf"no consumer {stream.durable!r} on stream {stream.name!r}"):
        await make(provider, stream, nats_url).run()
    missing = JetStreamConsumer(engine_factory(provider), stream="NO_SUCH_STREAM_X9", durable="d", servers=nats_url)
    with pytest.raises(ConfigError, match="no stream 'NO_SUCH_STREAM_X9'"):
        await missing.run()


async def test_a_short_ack_wait_is_warned_about_at_start(
    provider: MockProvider, stream: Stream, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await stream.consumer(ack_wait=1.5)
    with caplog.at_level(logging.WARNING, "idemsend.adapters.nats"):
        async with consuming(make(provider, stream, nats_url)) as consumer:
            assert consumer.plan is not None and consumer.plan.heartbeat_every == 0.5
    assert "ack_wait 1.5s" in caplog.text


async def test_the_heartbeat_keeps_a_send_longer_than_ack_wait_from_redelivery(
    provider: MockProvider, stream: Stream, nats_url: str
) -> None:
    # ack_wait 3 s, a send of 8 s: without in_progress() the server would redeliver it twice
    await stream.consumer(ack_wait=3.0)
    provider.delay("welcome:slow:job-slow", 8.0)
    outcomes = Outcomes()
    async with consuming(make(provider, stream, nats_url, outcomes, engine={"timeout": 30})) as consumer:
        await stream.publish(job("slow"), job_id="job-slow")
        await until(lambda: outcomes.final(), "the slow send", timeout=90)
    assert [(r["state"], r["attempt"]) for r in outcomes.records] == [("sent", 1)]
    assert consumer.stats.extended >= 2
    assert len(provider.arrivals.get("welcome:slow:job-slow", [])) == 1
    assert (await stream.info()).num_redelivered == 0


async def test_a_smaller_max_deliver_gives_up_on_its_last_delivery_with_the_real_reason(
    provider: MockProvider, stream: Stream, nats_url: str
) -> None:
    await stream.consumer(max_deliver=2)
    provider.script("5xx", "5xx", "5xx", key="welcome:down:job-down")
    outcomes = Outcomes()
    async with consuming(make(provider, stream, nats_url, outcomes)) as consumer:
        await stream.publish(job("down"), job_id="job-down")
        await until(lambda: consumer.stats.terminated == 1, "the term on delivery 2")
    assert [(r["state"], r["attempt"]) for r in outcomes.records] == [("retrying", 1), ("failed", 2)]
    assert outcomes.records[-1]["reason"]


async def test_stop_lets_a_running_send_finish_and_loses_nothing(
    provider: MockProvider, stream: Stream, nats_url: str
) -> None:
    await stream.consumer()
    ledger = MemoryLedger()
    provider.delay("welcome:busy:job-busy", 2.0)
    outcomes = Outcomes()
    first = make(provider, stream, nats_url, outcomes, concurrency=1, engine={"ledger": ledger})
    async with consuming(first):
        await stream.publish(job("busy"), job_id="job-busy")
        for i in range(5):
            await stream.publish(job(f"q{i}"), job_id=f"job-q{i}")
        await until(lambda: provider.arrivals.get("welcome:busy:job-busy"), "the busy send at the provider")
    # stop() returned: the running send finished and was acked; the rest wait in the stream
    assert [r["job_id"] for r in outcomes.final()] == ["job-busy"] and first.stats.acked == 1
    second = make(provider, stream, nats_url, outcomes, engine={"ledger": ledger})
    async with consuming(second):
        await until(lambda: len(outcomes.final()) == 6, "every job")
    assert sorted(r["job_id"] for r in outcomes.final()) == sorted(["job-busy", *(f"job-q{i}" for i in range(5))])
    assert provider.double_sends() == {}


async def test_a_send_cut_off_at_shutdown_is_released_and_the_ledger_stops_the_double(
    provider: MockProvider, stream: Stream, nats_url: str
) -> None:
    await stream.consumer()
    ledger = MemoryLedger()
    provider.delay("welcome:cut:job-cut", 3.0)
    outcomes = Outcomes()
    first = make(provider, stream, nats_url, outcomes, shutdown_timeout=0.0, engine={"ledger": ledger, "lease": 5})
    async with consuming(first):
        await stream.publish(job("cut"), job_id="job-cut")
        await until(lambda: provider.arrivals.get("welcome:cut:job-cut"), "the send at the provider")
    # released, and released again if the fetch still open at the server got it back
    assert first.stats.released >= 1 and first.stats.acked == 0 and outcomes.records == []
    second = make(provider, stream, nats_url, outcomes, engine={"ledger": ledger, "lease": 5})
    async with consuming(second):
        await until(lambda: outcomes.final(), "the released job, run again", timeout=90)
    assert outcomes.final()[0]["attempt"] >= 2, outcomes.records
    assert provider.sends_for("welcome:cut:job-cut") == 1


async def test_options_out_of_range_are_refused_naming_them(provider: MockProvider) -> None:
    factory = engine_factory(provider)
    for options, words in [
        ({"stream": "a.b", "durable": "d"}, "stream must be a JetStream name"),
        ({"stream": "s", "durable": ""}, "durable must be"),
        ({"stream": "s", "durable": "d", "fetch_wait": 0}, "fetch_wait"),
        ({"stream": "s", "durable": "d", "heartbeat": -1}, "heartbeat"),
        ({"stream": "s", "durable": "d", "concurrency": 0}, "concurrency"),
        ({"stream": "s", "durable": "d", "max_tries": 0}, "max_tries"),
        ({"stream": "s", "durable": "d", "on_outcome": "no"}, "on_outcome"),
    ]:
        with pytest.raises(ConfigError, match=words):
            JetStreamConsumer(factory, **options)


async def test_an_on_outcome_that_raises_keeps_the_message_and_the_ledger_answers_it_again(
    provider: MockProvider, stream: Stream, nats_url: str
) -> None:
    await stream.consumer()
    seen: list[dict[str, Any]] = []

    async def flaky(tried: NatsOutcome) -> None:
        seen.append(tried.record())
        if len(seen) == 1:
            raise RuntimeError("the results store is down")

    consumer = make(provider, stream, nats_url, None, engine={"ledger": MemoryLedger()})
    consumer.on_outcome = flaky
    async with consuming(consumer):
        await stream.publish(job("flaky"), job_id="job-flaky")
        await until(lambda: consumer.stats.acked == 1, "the ack after the second try")
    assert [(r["state"], r["attempt"], r["replayed"]) for r in seen] == [("sent", 1, False), ("sent", 2, True)]
    assert consumer.stats.naked == 1 and provider.sends_for("welcome:flaky:job-flaky") == 1
