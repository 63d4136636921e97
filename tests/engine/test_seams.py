"""The engine driven through its seams, without sockets: a MockTransport answers each POST,
and a recording Hook hears every try, wait, ledger call and outcome."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from idemsend import (
    AiohttpTransport,
    ConfigError,
    Engine,
    InFlightWait,
    InvalidBodyError,
    Job,
    LedgerInfo,
    OutcomeInfo,
    RawResponse,
    RetryableError,
    RetryPolicy,
    SendInfo,
    TransportError,
    TransportRequest,
    TryInfo,
    WaitInfo,
)
from idemsend.ledger import MemoryLedger
from idemsend.testing import MockTransport

pytestmark = pytest.mark.anyio

URL = "https://api.example.com/api/v1/emails"
KEY = "welcome:{user_id}:{job_id}"
BODY = {"to": ["ada@example.com"]}


def job(n: int = 1) -> Job:
    return Job(f"job-{n}", {"user_id": "u1"})


def ok(request: TransportRequest) -> RawResponse:
    return RawResponse(200, {}, json.dumps({"id": "em_1", "key": request.headers["Idempotency-Key"]}).encode())


def script(*answers: RawResponse | TransportError) -> MockTransport:
    queue = list(answers)

    def handler(request: TransportRequest) -> RawResponse:
        answer = queue.pop(0) if queue else ok(request)
        if isinstance(answer, TransportError):
            raise answer
        return answer

    return MockTransport(handler)


def error(status: int, code: str, headers: dict[str, str] | None = None) -> RawResponse:
    return RawResponse(status, headers or {}, json.dumps({"error": {"code": code, "message": code.lower()}}).encode())


class Recorder:
    """A Hook that keeps everything it hears."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    @contextlib.contextmanager
    def send_scope(self, info: SendInfo) -> Iterator[Recorder]:
        self.events.append(info)
        yield self

    def on_try(self, info: TryInfo) -> None:
        self.events.append(info)

    def on_wait(self, info: WaitInfo) -> None:
        self.events.append(info)

    def on_ledger(self, info: LedgerInfo) -> None:
        self.events.append(info)

    def on_outcome(self, info: OutcomeInfo) -> None:
        self.events.append(info)

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


async def test_a_mock_transport_drives_the_whole_engine() -> None:
    transport = script(error(503, "UNAVAILABLE"), TransportError("reset", kind="network"))
    async with Engine(URL, key=KEY, api_key="k-123456", transport=transport, retry=RetryPolicy(backoff=0.001)) as e:
        result = await e.send(job(), BODY)
    assert result.id == "em_1" and result.attempts == 3
    assert [r.headers["Idempotency-Key"] for r in transport.requests] == ["welcome:u1:job-1"] * 3
    assert {r.body for r in transport.requests} == {b'{"to":["ada@example.com"]}'}
    assert transport.requests[0].headers["Authorization"] == "Bearer k-123456"


async def test_hooks_hear_tries_waits_ledger_calls_and_the_outcome() -> None:
    hook = Recorder()
    transport = script(error(409, "IDEMPOTENCY_IN_FLIGHT"), error(503, "UNAVAILABLE"))
    engine = Engine(
        URL, key=KEY, transport=transport, hooks=[hook], ledger=MemoryLedger(),
        retry=RetryPolicy(backoff=0.001), in_flight=InFlightWait(delay=0.01),
    )
    async with engine as e:
        await e.send(job(), BODY, attempt=2, queue="arq")
        await e.send(job(), BODY, queue="arq")  # answered from the ledger
    info = hook.events[0]
    assert isinstance(info, SendInfo)
    assert (info.key, info.job_id, info.attempt, info.queue, info.server_address) == (
        "welcome:u1:job-1", "job-1", 2, "arq", "api.example.com"
    )
    tries = [e for e in hook.events if isinstance(e, TryInfo)]
    expected = [(1, 409, "in_flight"), (2, 503, "retry"), (3, 200, "sent")]
    assert [(t.number, t.status, t.outcome) for t in tries] == expected
    assert [w.kind for w in hook.events if isinstance(w, WaitInfo)] == ["in_flight", "backoff"]
    ledger_ops = [(i.op, i.result) for i in hook.events if isinstance(i, LedgerInfo)]
    assert ledger_ops == [("claim", "claimed"), ("complete", "ok"), ("claim", "done")]  # start: at Engine.start
    outcomes = [o.outcome for o in hook.events if isinstance(o, OutcomeInfo)]
    assert outcomes == ["sent", "from_ledger"]


async def test_hooks_hear_a_retryable_outcome_with_its_reason() -> None:
    hook = Recorder()
    async with Engine(URL, key=KEY, transport=script(error(503, "X")), hooks=hook, retry=0) as e:
        with pytest.raises(RetryableError):
            await e.send(job(), BODY)
    [outcome] = [o for o in hook.events if isinstance(o, OutcomeInfo)]
    assert outcome.outcome == "retryable" and outcome.code == "provider" and outcome.error is not None
    assert isinstance(outcome.error, RetryableError) and outcome.error.detail == "HTTP 503" and outcome.tries == 1


async def test_an_in_flight_answer_keeps_the_record_even_when_a_429_follows() -> None:
    # IN_FLIGHT proves the key is live at the provider (another worker's request may be
    # running after the ledger lost its record): this claim must not forget the record.
    ledger = MemoryLedger()
    transport = script(error(409, "IDEMPOTENCY_IN_FLIGHT"), error(429, "RATE_LIMITED"))
    engine = Engine(URL, key=KEY, transport=transport, ledger=ledger, retry=0, in_flight=InFlightWait(delay=0.01))
    async with engine as e:
        with pytest.raises(RetryableError):
            await e.send(job(), BODY)
    record = await ledger.get("welcome:u1:job-1")
    assert record is not None and record.state == "in_flight"


async def test_a_refused_connection_and_a_429_on_a_fresh_claim_leave_no_record() -> None:
    ledger = MemoryLedger()
    transport = script(TransportError("refused", kind="connect"), error(429, "RATE_LIMITED"))
    async with Engine(URL, key=KEY, transport=transport, ledger=ledger, retry=RetryPolicy(1, backoff=0.001)) as e:
        with pytest.raises(RetryableError):
            await e.send(job(), BODY)
    assert await ledger.get("welcome:u1:job-1") is None  # nothing reached the provider: the stale clock did not start


async def test_a_body_with_a_lone_surrogate_is_an_invalid_body() -> None:
    transport = script()
    async with Engine(URL, key=KEY, transport=transport) as e:
        with pytest.raises(InvalidBodyError, match="surrogate"):
            await e.send(job(), {"name": "\ud800"})
    assert transport.requests == []


def test_a_ledger_that_forgets_before_the_provider_is_refused() -> None:
    with pytest.raises(ConfigError, match="less than the provider window"):
        Engine(URL, key=KEY, ledger=MemoryLedger(retention=3600))


def test_the_worst_case_send_time_covers_every_budget() -> None:
    e = Engine(URL, key=KEY, timeout=10, retry=RetryPolicy(retries=3, max_backoff=2), in_flight=InFlightWait(0.5, 10))
    with_ledger = Engine(URL, key=KEY, timeout=10, ledger=MemoryLedger())
    # 4 quick tries and up to 41 IN_FLIGHT tries at 10 s each, 10 s of IN_FLIGHT waits, 6 s of backoff
    assert e.worst_case_send_time() == (4 + 41) * 10 + 10 + 6
    assert with_ledger.worst_case_send_time() == e.worst_case_send_time() + 10  # the wait on a busy lease


def test_the_worst_case_send_time_follows_the_transports_own_timeout() -> None:
    """Issue 18 item 5: a transport's timeout is the one in force, so the budget (and the
    SQS heartbeat, the BullMQ lock check, the Celery visibility advice sized from it)
    follows it: 60 s per try gives about 2,716 s, not the 466 s of the default 10 s."""
    default = Engine(URL, key=KEY)
    slow = Engine(URL, key=KEY, transport=AiohttpTransport(timeout=60))
    assert slow.timeout == 60 and default.timeout == 10
    tries = default.retry.retries + 1 + default.in_flight.budgeted().max_tries()
    assert slow.worst_case_send_time() == default.worst_case_send_time() + tries * 50
    assert 2700 < slow.worst_case_send_time() < 2730
    # the same timeout given twice is fine; two different ones cannot both be in force
    assert Engine(URL, key=KEY, timeout=60, transport=AiohttpTransport(timeout=60)).timeout == 60
    with pytest.raises(ConfigError, match=r"timeout=5 .* own timeout \(60s\)"):
        Engine(URL, key=KEY, timeout=5, transport=AiohttpTransport(timeout=60))
    # a transport without a timeout attribute is bounded by the engine's timeout=
    assert Engine(URL, key=KEY, timeout=7, transport=MockTransport(_never_called)).timeout == 7


async def _never_called(request: TransportRequest) -> RawResponse:
    raise AssertionError("not sent")
