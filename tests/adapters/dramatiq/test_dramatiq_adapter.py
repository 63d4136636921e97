"""The Dramatiq adapter on Dramatiq's own in-memory ``StubBroker`` with a real ``Worker``
(its thread pool, the Retries middleware, the delay queue, the dead letters) and a scripted
provider: each outcome's translation, the try number and budget Retries uses, the refusals.
The real brokers (RabbitMQ, Redis) and the ``dramatiq`` CLI are in test_dramatiq_workers.py."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

pytest.importorskip("dramatiq", reason="Dramatiq is not installed here: nox -s dramatiq tests it")

import dramatiq
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, Retries

from idemsend import ConfigError, Engine, RawResponse, TransportRequest
from idemsend.adapters.dramatiq import (
    DramatiqAdapter,
    SendFailed,
    actor_problems,
    broker_problems,
    job_id_problem,
    max_attempts,
    retry_delay_ms,
)
from idemsend.testing import MockTransport

from .._scripted import KEY, URL, error, ok

DATA, BODY = {"user_id": "u1"}, {"to": ["ada@example.com"]}


class Provider:
    """A scripted provider that counts the requests it got, per idempotency key."""

    def __init__(self, *answers: RawResponse) -> None:
        self.answers = list(answers)
        self.keys: list[str] = []

    def __call__(self, request: TransportRequest) -> RawResponse:
        self.keys.append(dict(request.headers).get("Idempotency-Key", ""))
        return self.answers.pop(0) if self.answers else ok(request)

    def factory(self) -> Callable[[], Engine]:
        transport = MockTransport(self)
        return lambda: Engine(URL, key=KEY, api_key="k-123456", transport=transport, retry=0)


class Seen(Middleware):
    """Keeps every message's options as a try starts, and the delay of every enqueue."""

    def __init__(self) -> None:
        self.tries: list[dict[str, Any]] = []
        self.delays: list[int | None] = []

    def after_enqueue(self, broker: Any, message: Any, delay: int | None) -> None:
        self.delays.append(delay)

    def before_process_message(self, broker: Any, message: Any) -> None:
        self.tries.append({"id": message.message_id, **message.options})


class Rig:
    """A StubBroker with a Seen middleware, an adapter on it, the records it was told."""

    def __init__(self, provider: Provider, *, middleware: list[Middleware] | None = None, **adapter: Any) -> None:
        self.broker = StubBroker(middleware=middleware)
        self.broker.emit_after("process_boot")
        self.seen = Seen()
        self.broker.add_middleware(self.seen)
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.provider = provider
        self.idem = DramatiqAdapter(self.broker, provider.factory(), retry_base=0.05, retry_cap=0.2,
                                    on_outcome=self.tell, **adapter)

    def tell(self, message: Any, record: Mapping[str, Any]) -> None:
        self.records.append((message.message_id, dict(record)))

    def actor(self, **options: Any) -> Any:
        @self.idem.actor(queue_name="emails", **options)
        def send_email(data: dict[str, Any], body: Any) -> None:
            self.idem.send(data, body)

        return send_email

    def run(self, *messages: Any) -> None:
        worker = Worker(self.broker, worker_timeout=20, worker_threads=2)
        worker.start()
        try:
            for message in messages:
                self.broker.enqueue(message)
            self.broker.join("emails", fail_fast=False, timeout=60_000)
            worker.join()
        finally:
            worker.stop()

    def states(self) -> list[str]:
        return [record.get("state", "?") for _, record in self.records]

    def close(self) -> None:
        self.idem.close()
        self.broker.close()


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.close()


def rig(rigs: list[Rig], *answers: RawResponse, **adapter: Any) -> Rig:
    made = Rig(Provider(*answers), **adapter)
    rigs.append(made)
    return made


def with_id(actor: Any, job_id: object) -> Any:
    return actor.message(DATA, BODY).copy(message_id=job_id)


def test_the_message_id_is_the_job_id_and_a_send_is_recorded(rigs: list[Rig]) -> None:
    r = rig(rigs)
    r.run(with_id(r.actor(), "job-1"))
    assert r.records == [("job-1", {**r.records[0][1], "state": "sent", "attempt": 1, "job_id": "job-1"})]
    assert r.provider.keys == ["welcome:u1:job-1"] and not r.broker.dead_letters


def test_a_retry_keeps_the_message_id_and_waits_at_least_the_retry_after(rigs: list[Rig]) -> None:
    r = rig(rigs, error(503, "UNAVAILABLE", {"Retry-After": "0.3"}), error(429, "RATE_LIMITED"))
    r.run(with_id(r.actor(), "job-2"))
    assert r.states() == ["retrying", "retrying", "sent"]
    assert [record["attempt"] for _, record in r.records] == [1, 2, 3]
    assert {job_id for job_id, _ in r.records} == {"job-2"}
    assert r.provider.keys == ["welcome:u1:job-2"] * 3  # one key across Dramatiq's retries
    first_delay = r.records[0][1]["delay"]
    assert first_delay >= 0.3
    # Retries re-enqueued the message with exactly the adapter's delays (not min/max_backoff)
    # (each delayed message is enqueued again, without a delay, when its eta comes)
    delays = [delay for delay in r.seen.delays if delay is not None]
    wanted = [record["delay"] * 1000 for _, record in r.records[:2]]  # records keep 3 decimals
    assert len(delays) == 2 and all(0 <= got - want <= 1 for got, want in zip(delays, wanted, strict=True))
    assert delays[0] >= 300
    assert [t.get("retries", 0) for t in r.seen.tries] == [0, 1, 2]


def test_a_fatal_error_is_never_retried_and_dead_letters_the_message(rigs: list[Rig]) -> None:
    r = rig(rigs, error(422, "IDEMPOTENCY_MISMATCH"))
    r.run(with_id(r.actor(max_retries=5), "job-3"))
    assert r.states() == ["fatal"] and r.records[0][1]["code"] == "IDEMPOTENCY_MISMATCH"
    assert len(r.provider.keys) == 1 and len(r.seen.tries) == 1
    assert [m.message_id for m in r.broker.dead_letters] == ["job-3"]


def test_the_last_try_gives_up_with_the_real_reason(rigs: list[Rig]) -> None:
    r = rig(rigs, *[error(503, "UNAVAILABLE")] * 5)
    r.run(with_id(r.actor(max_retries=2), "job-4"))
    assert r.states() == ["retrying", "retrying", "failed"]  # 3 tries: the budget Retries counts
    last = r.records[-1][1]
    assert last["attempt"] == 3 and last["reason"] and "delay" not in last
    assert len(r.provider.keys) == 3 and [m.message_id for m in r.broker.dead_letters] == ["job-4"]


def test_an_unlimited_budget_never_gives_up_on_a_retryable_error(rigs: list[Rig]) -> None:
    r = rig(rigs, *[error(503, "UNAVAILABLE")] * 4)
    r.run(with_id(r.actor(max_retries=None), "job-5"))
    assert r.states() == ["retrying"] * 4 + ["sent"]


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 2000, "\udc80", 42, None])
def test_a_message_without_a_usable_id_is_dead_lettered_never_sent(
    rigs: list[Rig], bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig(rigs)
    with caplog.at_level(logging.WARNING, logger="idemsend.adapters.dramatiq"):
        r.run(with_id(r.actor(), bad))
    assert r.provider.keys == []
    assert len(r.broker.dead_letters) == 1
    assert r.states() == ["fatal"] and r.records[0][1]["code"] == "INVALID_JOB_ID"
    assert "dead-lettered, never sent" in caplog.text


@pytest.mark.parametrize(
    "options", [{"retries": "abc"}, {"retries": -1}, {"retries": True}, {"max_retries": "x"}, {"max_retries": 2.5}]
)
def test_a_message_whose_try_count_cannot_be_read_is_dead_lettered_never_sent(
    rigs: list[Rig], options: dict[str, Any]
) -> None:
    r = rig(rigs)
    r.run(with_id(r.actor(), "job-7").copy(options=options))
    assert r.provider.keys == [] and len(r.broker.dead_letters) == 1
    assert r.states() == ["fatal"] and r.records[0][1]["code"] == "INVALID_MESSAGE"


def test_data_that_is_not_a_mapping_is_fatal_and_sends_nothing(rigs: list[Rig]) -> None:
    r = rig(rigs)
    actor = r.actor()
    r.run(actor.message(["not", "a", "mapping"], BODY).copy(message_id="job-8"))
    assert r.provider.keys == [] and len(r.broker.dead_letters) == 1
    assert r.states() == ["fatal"], r.records


def test_a_broker_without_retries_is_refused(rigs: list[Rig]) -> None:
    with pytest.raises(ConfigError, match="no Retries middleware"):
        Rig(Provider(), middleware=[])
    r = rig(rigs)
    r.actor()
    r.broker.middleware[:] = [m for m in r.broker.middleware if not isinstance(m, Retries)]
    with pytest.raises(ConfigError, match="no Retries middleware"):
        Worker(r.broker, worker_timeout=20).start()


def test_an_actor_that_would_retry_a_given_up_send_is_refused_and_sends_nothing(rigs: list[Rig]) -> None:
    r = rig(rigs)

    @dramatiq.actor(broker=r.broker, queue_name="emails", max_retries=0)
    def plain(data: dict[str, Any], body: Any) -> None:
        r.idem.send(data, body)

    r.run(plain.message(DATA, BODY))
    assert r.provider.keys == [] and r.records == []
    assert len(r.broker.dead_letters) == 1
    refused, _ = actor_problems(plain)
    assert refused and "SendFailed" in refused[0]


def test_retry_when_on_retry_exhausted_and_a_short_time_limit_are_warned_about(
    rigs: list[Rig], caplog: pytest.LogCaptureFixture
) -> None:
    r = rig(rigs)
    actor = r.actor(time_limit=1000, retry_when=lambda retries, exc: retries < 3, on_retry_exhausted="elsewhere")
    with caplog.at_level(logging.WARNING, logger="idemsend.adapters.dramatiq"):
        r.idem.warm()
    assert "retry_when" in caplog.text and "time_limit=1000 ms" in caplog.text and "on_retry_exhausted" in caplog.text
    message = actor.message(DATA, BODY)
    assert max_attempts(message, actor, Retries()) is None  # retry_when decides, not max_retries


def test_send_outside_an_actor_is_a_config_error(rigs: list[Rig]) -> None:
    r = rig(rigs)
    with pytest.raises(ConfigError, match="inside a Dramatiq actor"):
        r.idem.send(DATA, BODY)


def test_the_adapter_checks_what_it_is_given() -> None:
    broker = StubBroker()
    try:
        with pytest.raises(ConfigError, match="not an Engine"):
            DramatiqAdapter(broker, Engine(URL, key=KEY, api_key="k-123456"))  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="Dramatiq broker"):
            DramatiqAdapter(object(), Provider().factory())
        with pytest.raises(ConfigError, match="on_outcome"):
            DramatiqAdapter(broker, Provider().factory(), on_outcome="log")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="max_retries"):
            DramatiqAdapter(broker, Provider().factory()).actor(max_retries=-1)
    finally:
        broker.close()


def test_an_outcome_hook_that_fails_retries_the_message_and_the_retry_replays(rigs: list[Rig]) -> None:
    r = rig(rigs)
    told = r.tell
    failures = [RuntimeError("outcome store down")]

    def flaky(message: Any, record: Mapping[str, Any]) -> None:
        told(message, record)
        if failures:
            raise failures.pop()

    r.idem.on_outcome = flaky
    r.run(with_id(r.actor(min_backoff=10, max_backoff=20), "job-6"))
    assert r.states() == ["sent", "sent"]
    assert r.records[1][1]["attempt"] == 2
    assert r.provider.keys == ["welcome:u1:job-6"] * 2  # the retry: the same key (the provider dedupes)


def test_retry_delay_ms() -> None:
    assert retry_delay_ms(0) == 0 and retry_delay_ms(-5) == 0
    assert retry_delay_ms(0.0001) == 1 and retry_delay_ms(1.5) == 1500
    assert retry_delay_ms(math.inf) == retry_delay_ms(math.nan) == retry_delay_ms(1e12) == 3_600_000


def test_job_id_problem() -> None:
    assert job_id_problem("job-1") is None
    for bad in ("", "a\x00", "x" * 2000, 7, None, b"bytes"):
        problem = job_id_problem(bad)
        assert problem is not None and problem.code == "INVALID_JOB_ID"


def test_max_attempts_reads_what_retries_reads() -> None:
    broker = StubBroker()
    try:
        @dramatiq.actor(broker=broker, max_retries=4)
        def four() -> None: ...

        @dramatiq.actor(broker=broker)
        def default() -> None: ...

        assert max_attempts(four.message(), four, Retries()) == 5
        assert max_attempts(four.message_with_options(max_retries=1), four, Retries()) == 2
        assert max_attempts(default.message(), default, Retries(max_retries=7)) == 8
        assert max_attempts(four.message_with_options(max_retries=None), four, Retries()) is None
        assert broker_problems(broker) == []
    finally:
        broker.close()


def test_send_failed_carries_code_and_reason() -> None:
    failed = SendFailed("payload changed", code="IDEMPOTENCY_MISMATCH", maybe_sent=True)
    assert str(failed) == "IDEMPOTENCY_MISMATCH: payload changed"
    assert failed.args == ("payload changed", "IDEMPOTENCY_MISMATCH", False, True) and failed.maybe_sent


def test_an_outcome_hook_that_fails_on_a_rejected_message_still_dead_letters_it(rigs: list[Rig]) -> None:
    r = rig(rigs)

    def broken(message: Any, record: Mapping[str, Any]) -> None:
        raise RuntimeError("outcome store down")

    r.idem.on_outcome = broken
    r.run(with_id(r.actor(), ""))
    assert r.provider.keys == [] and len(r.broker.dead_letters) == 1  # failed before the hook ran


def test_an_engine_that_does_not_start_retries_the_message_and_sends_once_it_does(rigs: list[Rig]) -> None:
    r = rig(rigs)
    working = r.provider.factory()
    starts: list[int] = []

    def flaky() -> Engine:
        starts.append(1)
        if len(starts) <= 2:  # the boot's warm-up start takes one of these, a try the other (or both)
            raise OSError("ledger unreachable")
        return working()

    r.idem.engines.factory = flaky
    r.run(with_id(r.actor(min_backoff=10, max_backoff=20), "job-9"))
    assert r.states() == ["sent"] and r.records[0][1]["attempt"] >= 2  # a failed try was retried, not lost
    assert r.provider.keys == ["welcome:u1:job-9"] and not r.broker.dead_letters
