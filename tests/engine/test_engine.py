"""Engine behaviour against the MockProvider over real HTTP (issue: core engine)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from idemsend import (
    ConfigError,
    Engine,
    FatalError,
    InFlightWait,
    InvalidBodyError,
    Job,
    KeyDerivationError,
    Limits,
    MismatchError,
    RetryableError,
    RetryPolicy,
    SendResult,
)
from idemsend.testing import Faults, MockProvider

pytestmark = pytest.mark.anyio

KEY = "welcome:{user_id}:{job_id}"
BODY = {"from": "welcome@example.com", "to": ["ada@example.com"], "template": "welcome"}


def job(n: int | str = 1, **data: object) -> Job:
    return Job(f"job-{n}", {"user_id": "u1", **data})


def engine(p: MockProvider, **kw: object) -> Engine:
    kw.setdefault("api_key", p.api_key)
    return Engine(p.emails_url, key=KEY, **kw)  # type: ignore[arg-type]


async def test_success(mock_provider: MockProvider) -> None:
    async with engine(mock_provider) as e:
        result = await e.send(job(), BODY)
    assert isinstance(result, SendResult)
    assert result.key == "welcome:u1:job-1"
    assert result.id is not None and result.id.startswith("em_")
    assert (result.status, result.replayed, result.attempts) == (200, False, 1)
    assert mock_provider.sends_for("welcome:u1:job-1") == 1


async def test_sequential_replay_sends_once(mock_provider: MockProvider) -> None:
    async with engine(mock_provider) as e:
        first = await e.send(job(), BODY)
        second = await e.send(job(), BODY)
    assert mock_provider.sends == 1
    assert second.replayed and not first.replayed
    assert second.id == first.id


async def test_single_flight_in_one_engine(mock_provider: MockProvider) -> None:
    mock_provider.processing_delay = 0.1
    async with engine(mock_provider) as e:
        results = await asyncio.gather(*(e.send(job(), BODY) for _ in range(50)))
    assert mock_provider.stats.requests == 1
    assert mock_provider.sends == 1
    assert len({r.id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1


async def test_single_flight_different_body_is_a_mismatch(mock_provider: MockProvider) -> None:
    mock_provider.processing_delay = 0.1
    async with engine(mock_provider) as e:
        first = asyncio.ensure_future(e.send(job(), BODY))
        await asyncio.sleep(0.02)
        with pytest.raises(MismatchError):
            await e.send(job(), {**BODY, "template": "other"})
        await first
    assert mock_provider.sends == 1


async def test_two_engines_same_job_one_send_loser_backs_off(mock_provider: MockProvider) -> None:
    mock_provider.processing_delay = 0.2
    async with engine(mock_provider) as a, engine(mock_provider) as b:

        async def timed(e: Engine, delay: float) -> tuple[SendResult, float]:
            await asyncio.sleep(delay)
            start = time.monotonic()
            r = await e.send(job(), BODY)
            return r, time.monotonic() - start

        (ra, _), (rb, tb) = await asyncio.gather(timed(a, 0), timed(b, 0.05))
    assert mock_provider.sends == 1
    assert mock_provider.stats.in_flight_409 >= 1
    assert ra.id == rb.id and rb.replayed and rb.attempts >= 2
    # one IN_FLIGHT back-off is 500 ms x jitter in [0.5, 1.5]
    assert tb >= 0.25


async def test_mismatch_is_fatal_and_not_retried(mock_provider: MockProvider) -> None:
    async with engine(mock_provider) as e:
        await e.send(job(), BODY)
        requests_before = mock_provider.stats.requests
        with pytest.raises(MismatchError) as info:
            await e.send(job(), {**BODY, "template": "changed"})
    assert info.value.code == "IDEMPOTENCY_MISMATCH"
    assert isinstance(info.value, FatalError)
    assert mock_provider.stats.requests == requests_before + 1
    assert mock_provider.sends == 1


async def test_5xx_then_success_sends_once(mock_provider: MockProvider) -> None:
    mock_provider.script("5xx", "5xx")
    async with engine(mock_provider, retry=RetryPolicy(backoff=0.01)) as e:
        result = await e.send(job(), BODY)
    assert result.attempts == 3
    assert mock_provider.sends == 1


async def test_lost_response_retried_with_same_key(mock_provider: MockProvider) -> None:
    mock_provider.script("lost")
    async with engine(mock_provider, retry=RetryPolicy(backoff=0.01)) as e:
        result = await e.send(job(), BODY)
    assert result.replayed and result.attempts == 2
    assert mock_provider.sends == 1
    assert mock_provider.sends_for("welcome:u1:job-1") == 1


async def test_429_honours_retry_after(mock_provider: MockProvider) -> None:
    mock_provider.faults.retry_after = 0.4
    mock_provider.script("429")
    async with engine(mock_provider) as e:
        start = time.monotonic()
        result = await e.send(job(), BODY)
        elapsed = time.monotonic() - start
    assert result.attempts == 2 and mock_provider.sends == 1
    assert elapsed >= 0.4


async def test_429_longer_than_inline_limit_goes_back_to_the_queue(mock_provider: MockProvider) -> None:
    mock_provider.faults.retry_after = 30
    mock_provider.script("429")
    async with engine(mock_provider, retry=RetryPolicy(max_inline_delay=5)) as e:
        with pytest.raises(RetryableError) as info:
            await e.send(job(), BODY)
    assert info.value.retry_after == 30
    assert mock_provider.sends == 0


async def test_timeout_is_retried_with_same_key() -> None:
    async with MockProvider(processing_delay=0.5) as p, engine(p, timeout=0.2, retry=RetryPolicy(backoff=0.01)) as e:
        result = await e.send(job(), BODY)
    # try 1 timed out while the provider was processing (an unknown outcome); the retry
    # used the same key, met IN_FLIGHT, waited, and got the stored response
    assert p.sends == 1
    assert result.replayed and result.attempts >= 2
    assert set(p.sends_by_key) == {"welcome:u1:job-1"}
    assert p.stats.requests == result.attempts


async def test_retry_budget_is_bounded(mock_provider: MockProvider) -> None:
    mock_provider.faults = Faults(rate_5xx=1.0)
    async with engine(mock_provider, retry=RetryPolicy(retries=2, backoff=0.01)) as e:
        with pytest.raises(RetryableError) as info:
            await e.send(job(), BODY)
    assert mock_provider.stats.requests == 3
    # no Retry-After from the provider: the queue's own backoff decides the delay
    assert info.value.retry_after is None and info.value.reason == "provider" and info.value.detail == "HTTP 503"
    assert mock_provider.sends == 0


async def test_in_flight_budget_is_bounded(mock_provider: MockProvider) -> None:
    mock_provider.faults = Faults(rate_in_flight=1.0)
    async with engine(mock_provider, in_flight=InFlightWait(delay=0.05, budget=0.3)) as e:
        with pytest.raises(RetryableError) as info:
            await e.send(job(), BODY)
    assert info.value.reason == "in_flight"
    assert 2 <= mock_provider.stats.requests <= 13


@pytest.mark.parametrize(
    ("template", "data", "needle"),
    [
        ("welcome:{user_id}:{job_id}", {}, "user_id"),
        ("x:{payload}:{job_id}", {"payload": "a" * 300}, "over the limit"),
        ("x:{name}:{job_id}", {"name": "Ada Lovelace"}, "visible ASCII"),
        ("x:{name}:{job_id}", {"name": "caf\u00e9"}, "visible ASCII"),
        ("x:{name}:{job_id}", {"name": "a\nb"}, "visible ASCII"),
    ],
)
async def test_bad_keys_fail_before_any_http(
    mock_provider: MockProvider, template: str, data: dict[str, object], needle: str
) -> None:
    async with Engine(mock_provider.emails_url, key=template, api_key=mock_provider.api_key) as e:
        with pytest.raises(KeyDerivationError, match=needle) as info:
            await e.send(Job("job-1", data), BODY)
    assert info.value.code == "KEY_DERIVATION"
    assert mock_provider.stats.requests == 0


async def test_unserialisable_body_is_fatal_before_http(mock_provider: MockProvider) -> None:
    async with engine(mock_provider) as e:
        with pytest.raises(InvalidBodyError, match="JSON"):
            await e.send(job(), {"when": object()})
        with pytest.raises(InvalidBodyError):
            await e.send(job(), {"x": float("nan")})
    assert mock_provider.stats.requests == 0


async def test_other_4xx_is_fatal_with_provider_code(mock_provider: MockProvider) -> None:
    async with Engine(mock_provider.emails_url, key=KEY, api_key="wrong-key") as e:
        with pytest.raises(FatalError) as info:
            await e.send(job(), BODY)
    assert info.value.code == "UNAUTHORIZED"
    assert mock_provider.sends == 0


async def test_send_many_per_item_results(mock_provider: MockProvider) -> None:
    pairs = [(job(i), {**BODY, "n": i}) for i in range(100)]
    # ten of them will be sent with a changed body after a first send: mismatch
    async with engine(mock_provider, retry=RetryPolicy(backoff=0.01)) as e:
        for i in range(10):
            await e.send(job(i), {**BODY, "n": -1})
        results = await e.send_many(pairs)
    assert len(results) == 100
    failed = [i for i, r in enumerate(results) if not isinstance(r, SendResult)]
    assert failed == list(range(10))
    assert all(isinstance(results[i], MismatchError) for i in failed)
    assert mock_provider.sends == 100
    assert len(mock_provider.sends_by_key) == 100
    assert not mock_provider.double_sends()


async def test_send_many_uses_one_key_per_message_not_the_batch_endpoint(mock_provider: MockProvider) -> None:
    async with engine(mock_provider) as e:
        results = await e.send_many([(job(i), BODY) for i in range(5)])
    assert all(isinstance(r, SendResult) for r in results)
    assert sorted(mock_provider.sends_by_key) == sorted(f"welcome:u1:job-{i}" for i in range(5))


async def test_max_in_flight_is_never_exceeded() -> None:
    async with MockProvider(processing_delay=0.02) as p, engine(p, limits=Limits(max_in_flight=7)) as e:
        results = await e.send_many([(job(i), BODY) for i in range(120)])
    assert all(isinstance(r, SendResult) for r in results)
    assert p.sends == 120
    assert 1 < p.stats.max_concurrency <= 7


async def test_rate_limit_spaces_requests(mock_provider: MockProvider) -> None:
    async with engine(mock_provider, limits=Limits(rate=50)) as e:
        start = time.monotonic()
        await e.send_many([(job(i), BODY) for i in range(11)])
        elapsed = time.monotonic() - start
    assert mock_provider.sends == 11
    assert elapsed >= 10 / 50 * 0.9


async def test_api_key_never_leaks(mock_provider: MockProvider, caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk_live_SECRET_4242"
    mock_provider.api_key = None  # accept any key, so the success path runs too
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    e = engine(mock_provider, api_key=secret, retry=RetryPolicy(retries=1, backoff=0.01))
    texts.append(repr(e))
    async with e:
        texts.append(repr(e))
        await e.send(job(1), BODY)
        mock_provider.faults = Faults(rate_5xx=1.0)
        with pytest.raises(RetryableError) as retry:
            await e.send(job(2), BODY)
        texts += [str(retry.value), repr(retry.value)]
        mock_provider.faults = Faults()
        with pytest.raises(MismatchError) as fatal:
            await e.send(job(1), {"other": 1})
        texts += [str(fatal.value), repr(fatal.value)]
    async with Engine("http://127.0.0.1:1/api", key=KEY, api_key=secret, retry=0) as dead:
        with pytest.raises(RetryableError) as net:
            await dead.send(job(3), BODY)
        texts += [str(net.value), repr(dead)]
    texts += [r.getMessage() for r in caplog.records]
    assert len(texts) > 8
    assert not [t for t in texts if secret in t]


async def test_send_before_start_is_a_config_error(mock_provider: MockProvider) -> None:
    e = engine(mock_provider)
    with pytest.raises(ConfigError, match="not started"):
        await e.send(job(), BODY)
    await e.aclose()
    with pytest.raises(ConfigError, match="closed"):
        await e.start()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"url": "ftp://x"}, "http"),
        ({"key": 42}, "derive"),
        ({"limits": {"max_in_flight": 0}}, "Limits"),
        ({"retry": "3"}, "RetryPolicy"),
        ({"provider": object()}, "Provider"),
        ({"ledger": object()}, "Ledger"),
        ({"key": "x:{attempt}"}, "changes on every retry"),
        ({"key": "x:{a.b}"}, "plain name"),
    ],
)
def test_config_errors(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"url": "http://127.0.0.1:1/x", "key": KEY, **kwargs}
    url = args.pop("url")
    with pytest.raises(ConfigError, match=needle):
        Engine(url, **args)  # type: ignore[arg-type]
