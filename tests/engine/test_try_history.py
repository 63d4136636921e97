"""One prepared send and its immutable try history (issue 19 items 1 and 2).

Every HTTP try ends as a frozen ``TryInfo`` (status or transport error kind, whether it
may have run, body size, the delay chosen next); the result and every error carry them,
and "maybe sent" is derived from them. A try whose request may have left is open until
its answer is in, so a cancellation mid-request never reads as "nothing was sent", while
one during a backoff after a 429 (which proves nothing ran) does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from idemsend import (
    Engine,
    FatalError,
    Job,
    RawResponse,
    RetryableError,
    RetryPolicy,
    TransportError,
    TransportRequest,
    TryInfo,
)
from idemsend._prepared import PreparedSend, TryHistory
from idemsend._transport import MockTransport
from idemsend.ledger import MemoryLedger

pytestmark = pytest.mark.anyio

URL = "http://provider.test/v1/emails"
OK = RawResponse(201, {"Content-Type": "application/json"}, b'{"id": "em_1"}')


def answers(*script: RawResponse | TransportError) -> Callable[[TransportRequest], RawResponse]:
    queue = list(script)

    def handler(request: TransportRequest) -> RawResponse:
        item = queue.pop(0)
        if isinstance(item, TransportError):
            raise item
        return item

    return handler


def status(code: int, body: object | None = None, **headers: str) -> RawResponse:
    raw = json.dumps(body).encode() if body is not None else b""
    return RawResponse(code, {"Content-Type": "application/json", **headers}, raw)


def engine(transport: MockTransport, **kw: object) -> Engine:
    kw.setdefault("retry", RetryPolicy(retries=3, backoff=0.001, max_backoff=0.001))
    return Engine(URL, key="w:{job_id}", transport=transport, **kw)  # type: ignore[arg-type]


async def test_a_result_carries_every_try_with_what_each_got_and_the_delay_chosen() -> None:
    transport = MockTransport(answers(status(503), TransportError("reset", kind="network"), OK))
    async with engine(transport) as e:
        result = await e.send(Job(id="j1"), {"to": "a"}, attempt=1)
    assert result.attempts == 3 and [t.number for t in result.tries] == [1, 2, 3]
    first, second, third = result.tries
    assert (first.status, first.outcome, first.may_have_run, first.error) == (503, "retry", True, None)
    assert (second.status, second.outcome, second.error) == (0, "error", "network")
    assert first.delay is not None and second.delay is not None and third.delay is None
    assert (third.status, third.outcome, third.body_size) == (201, "sent", len(OK.body))
    assert all(isinstance(t, TryInfo) for t in result.tries)


async def test_an_error_carries_its_tries_and_its_maybe_sent_follows_from_them() -> None:
    refused = TransportError("cannot connect", kind="connect")
    transport = MockTransport(answers(status(429, **{"Retry-After": "0"}), refused, status(422, {"message": "bad"})))
    async with engine(transport) as e:
        with pytest.raises(FatalError) as caught:
            await e.send(Job(id="j2"), {"to": "a"}, attempt=1)
    tries = caught.value.tries
    assert [(t.status, t.may_have_run) for t in tries] == [(429, False), (0, False), (422, False)]
    assert tries[1].error == "connect"
    assert caught.value.maybe_sent is False  # none of them ran, and the queue says it is the first delivery


async def test_a_retryable_error_after_one_try_that_may_have_run_says_so() -> None:
    transport = MockTransport(answers(TransportError("timeout after 10s", kind="timeout"), status(503), status(503)))
    async with engine(transport, retry=RetryPolicy(retries=2, backoff=0.001, max_backoff=0.001)) as e:
        with pytest.raises(RetryableError) as caught:
            await e.send(Job(id="j3"), {"to": "a"}, attempt=1)
    assert [t.may_have_run for t in caught.value.tries] == [True, True, True]
    assert caught.value.maybe_sent is True and "may have been sent" in str(caught.value)
    assert caught.value.tries[-1].delay is None


async def _cancel_while(handler_blocks: bool) -> MemoryLedger:
    """Cancel a ledgered send either mid-request (the handler never answers) or in the
    backoff after a 429; return the ledger to look at what was kept."""
    entered = asyncio.Event()

    async def handler(request: TransportRequest) -> RawResponse:
        entered.set()
        if handler_blocks:
            await asyncio.Event().wait()
        return status(429, **{"Retry-After": "30"})

    ledger = MemoryLedger()
    policy = RetryPolicy(retries=3, backoff=0.001, max_backoff=0.001, max_inline_delay=60)
    async with engine(MockTransport(handler), ledger=ledger, retry=policy) as e:
        task = asyncio.ensure_future(e.send(Job(id="jc"), {"to": "a"}, attempt=1))
        await asyncio.wait_for(entered.wait(), 30)
        await asyncio.sleep(0)  # let a 429's answer reach the backoff sleep
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return ledger


async def test_a_send_cancelled_mid_request_keeps_its_record() -> None:
    ledger = await _cancel_while(handler_blocks=True)
    record = await ledger.get("w:jc")
    assert record is not None and record.state == "in_flight"  # the request may have run: kept


async def test_a_send_cancelled_in_the_backoff_after_a_429_is_forgotten() -> None:
    ledger = await _cancel_while(handler_blocks=False)
    assert await ledger.get("w:jc") is None  # a 429 proves nothing ran: no stale clock starts


def test_the_history_is_append_only_and_numbers_its_tries() -> None:
    history = TryHistory(earlier=False)
    assert (history.count, history.maybe_sent, history.may_have_run, history.body_size) == (0, False, False, 0)
    history.open()
    assert history.count == 1 and history.maybe_sent  # under way: it may have run
    with pytest.raises(RuntimeError):
        history.open()
    history.close(TryInfo(1, 429, 0.01, "retry", "HTTP 429", may_have_run=False, body_size=5, delay=1.0))
    assert (history.count, history.maybe_sent, history.body_size) == (1, False, 5)
    with pytest.raises(RuntimeError):
        history.close(TryInfo(3, 201, 0.01, "sent"))
    history.close(TryInfo(2, 0, 0.0, "error", "rate limit", may_have_run=False, error="rate_limit"))
    assert [t.number for t in history.tries] == [1, 2] and not history.maybe_sent
    assert TryHistory(earlier=True).may_have_run


def test_a_prepared_send_is_frozen_and_takes_a_frozen_body_as_a_new_value() -> None:
    send = PreparedSend(Job(id="j"), "k", b"now", "fp-now", attempt=2, queue="arq")
    assert send.earlier_may_have_run and not PreparedSend(Job(id="j"), "k", b"", "f", attempt=1).earlier_may_have_run
    assert PreparedSend(Job(id="j"), "k", b"", "f").earlier_may_have_run  # the queue did not say
    assert send.with_body(b"now", "fp-now") is send
    resumed = send.with_body(b"first", "fp-first")
    assert (resumed.payload, resumed.fingerprint, resumed.key, resumed.attempt) == (b"first", "fp-first", "k", 2)
    assert send.payload == b"now"
    with pytest.raises(AttributeError):
        send.key = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("script", "reason", "detail"),
    [
        ((status(503), status(503)), "provider", "HTTP 503"),
        ((TransportError("timeout after 10s", kind="timeout"),) * 2, "transport", "timeout after 10s"),
    ],
    ids=["provider", "transport"],
)
async def test_a_give_up_names_its_reason_in_one_word_and_its_detail_in_words(
    script: tuple[RawResponse | TransportError, ...], reason: str, detail: str
) -> None:
    transport = MockTransport(answers(*script))
    async with engine(transport, retry=RetryPolicy(retries=1, backoff=0.001, max_backoff=0.001)) as e:
        with pytest.raises(RetryableError) as caught:
            await e.send(Job(id="j-reason"), {"to": "a"}, attempt=1)
    assert caught.value.reason == reason and caught.value.detail == detail
    assert "w:j-reason" not in caught.value.detail


async def test_a_local_rate_limit_refusal_is_a_try_that_did_not_run_and_says_rate_limit() -> None:
    from idemsend import Limits

    transport = MockTransport(answers(OK))
    policy = RetryPolicy(retries=3, backoff=0.001, max_backoff=0.001, max_inline_delay=0.01)
    async with engine(transport, limits=Limits(rate=0.1), retry=policy) as e:
        await e.send(Job(id="j-first"), {"to": "a"}, attempt=1)  # takes the one slot of the next 10 s
        with pytest.raises(RetryableError) as caught:
            await e.send(Job(id="j-second"), {"to": "a"}, attempt=1)
    assert caught.value.reason == "rate_limit" and caught.value.maybe_sent is False
    [refused] = caught.value.tries
    assert (refused.status, refused.error, refused.may_have_run) == (0, "rate_limit", False)
    assert len(transport.requests) == 1
