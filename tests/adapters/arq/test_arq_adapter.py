"""The arq adapter's translation of each outcome, on arq's ctx (no worker: the conformance
suite runs real ones)."""

from __future__ import annotations

from typing import Any

import pytest
from arq import Retry

from idemsend import ConfigError, FatalError, RetryableError
from idemsend.adapters.arq import CTX_ENGINE, ArqAdapter

from .._scripted import Queues, error, scripted

pytestmark = pytest.mark.anyio

DATA, BODY = {"user_id": "u1"}, {"to": ["ada@example.com"]}


async def started(adapter: ArqAdapter, job_try: int = 1) -> dict[str, Any]:
    ctx: dict[str, Any] = {"job_id": "job-1", "job_try": job_try}
    await adapter.on_startup(ctx)
    return ctx


async def test_a_send_returns_the_result_and_names_the_queue_and_try() -> None:
    hook = Queues()
    adapter = ArqAdapter(scripted(hook=hook))
    ctx = await started(adapter, job_try=2)
    try:
        result = await adapter.send(ctx, DATA, BODY)
    finally:
        await adapter.on_shutdown(ctx)
    assert result["state"] == "sent" and result["key"] == "welcome:u1:job-1"
    assert hook.seen == [("arq", 2)]
    assert CTX_ENGINE not in ctx


async def test_a_retryable_error_is_an_arq_retry_deferred_by_the_backoff() -> None:
    adapter = ArqAdapter(scripted(error(503, "UNAVAILABLE"), error(429, "SLOW", {"Retry-After": "30"})), retry_base=2)
    ctx = await started(adapter, job_try=2)
    with pytest.raises(Retry) as backoff:
        await adapter.send(ctx, DATA, BODY)
    with pytest.raises(Retry) as named:
        await adapter.send(ctx, DATA, BODY)
    await adapter.on_shutdown(ctx)
    assert 4000 <= backoff.value.defer_score <= 5000  # 2 s * 2**(2-1), up to 25% more, in ms
    assert isinstance(backoff.value.__cause__, RetryableError)
    assert named.value.defer_score == 30_000


async def test_the_last_try_raises_the_real_reason() -> None:
    adapter = ArqAdapter(scripted(error(503, "UNAVAILABLE")), max_tries=3)
    ctx = await started(adapter, job_try=3)
    with pytest.raises(RetryableError, match="503"):
        await adapter.send(ctx, DATA, BODY)
    await adapter.on_shutdown(ctx)


async def test_a_fatal_error_is_raised_for_arq_to_store() -> None:
    adapter = ArqAdapter(scripted(error(400, "VALIDATION_ERROR")))
    ctx = await started(adapter)
    with pytest.raises(FatalError) as fatal:
        await adapter.send(ctx, DATA, BODY)
    await adapter.on_shutdown(ctx)
    assert fatal.value.code == "VALIDATION_ERROR"


async def test_without_on_startup_the_error_says_what_to_set() -> None:
    with pytest.raises(ConfigError, match="on_startup"):
        await ArqAdapter(scripted()).send({"job_id": "j"}, DATA, BODY)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_tries": 0}, "max_tries must be an integer >= 1"),
    ({"max_tries": True}, "max_tries"),
    ({"retry_base": 0}, r"retry_base must be a number of seconds in \(0, 3600\]"),
    ({"retry_base": 4000}, "retry_base"),
])
def test_knobs_are_checked(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ArqAdapter(scripted(), **kwargs)
