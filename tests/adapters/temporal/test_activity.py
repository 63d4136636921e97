"""The Temporal adapter inside real activities (``temporalio.testing.ActivityEnvironment``):
real HTTP to the MockProvider, a real ledger (MemoryLedger; RedisLedger where Redis runs),
attempts, heartbeats, cancellation and worker shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

pytest.importorskip("temporalio", reason="needs temporalio: pip install -e '.[temporal]' (nox -s temporal)")

from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from idemsend import ConfigError, Engine
from idemsend.adapters.temporal import TemporalAdapter, job_from_temporal
from idemsend.ledger import Ledger, MemoryLedger, ledger_from_url
from idemsend.testing import MockProvider

pytestmark = pytest.mark.anyio

TEMPLATE = "welcome:{user_id}:{job_id}"


@pytest.fixture
async def provider() -> AsyncIterator[MockProvider]:
    async with MockProvider(api_key="temporal-key") as p:
        yield p


def adapter_for(
    provider: MockProvider, ledger: Ledger | None = None, key: str = TEMPLATE, **options: Any
) -> TemporalAdapter:
    ledger = MemoryLedger() if ledger is None else ledger
    return TemporalAdapter(
        lambda: Engine(provider.emails_url, key=key, api_key=provider.api_key, ledger=ledger, retry=0, timeout=10),
        **options,
    )


def env_for(
    workflow_id: str | None = "wf-1", activity_id: str = "1", attempt: int = 1, **changes: Any
) -> ActivityEnvironment:
    env = ActivityEnvironment()
    info = dataclasses.replace(
        env.info, workflow_id=workflow_id, activity_id=activity_id, attempt=attempt, activity_type="send_welcome",
        start_to_close_timeout=timedelta(minutes=10), schedule_to_close_timeout=None,
        heartbeat_timeout=timedelta(seconds=30), workflow_run_id=str(uuid.uuid4()) if workflow_id else None,
        activity_run_id=None if workflow_id else str(uuid.uuid4()),
    )
    env.info = dataclasses.replace(info, **changes)
    return env


def tag() -> str:
    return uuid.uuid4().hex[:8]


async def run(env: ActivityEnvironment, idem: TemporalAdapter, data: dict[str, Any], body: Any) -> dict[str, Any]:
    async def send_welcome() -> dict[str, Any]:
        return await idem.send(data, body)

    result: dict[str, Any] = await env.run(send_welcome)
    return result


async def test_a_send_returns_the_result_under_the_workflow_and_activity_id(provider: MockProvider) -> None:
    idem = adapter_for(provider)
    beats: list[tuple[Any, ...]] = []
    env = env_for("orders-42", "7", attempt=2)
    env.on_heartbeat = lambda *details: beats.append(details)
    async with idem:
        result = await run(env, idem, {"user_id": "u1"}, {"to": ["ada@example.com"]})
    assert result["state"] == "sent" and result["job_id"] == "orders-42/7"
    assert result["key"] == "welcome:u1:orders-42/7" and not result["replayed"]
    assert provider.sends_for("welcome:u1:orders-42/7") == 1
    assert beats and all(details == () for details in beats)  # heartbeats carry no key, no body


async def test_a_retried_workflow_run_reuses_the_key_and_replays(provider: MockProvider) -> None:
    # the run id changes (a workflow retry, a reset, continue-as-new); the activity id does not
    idem = adapter_for(provider)
    async with idem:
        first = await run(env_for("wf-r", "1"), idem, {"user_id": "u1"}, {"to": ["a@example.com"]})
        again = await run(env_for("wf-r", "1", attempt=1), idem, {"user_id": "u1"}, {"to": ["a@example.com"]})
    assert first["key"] == again["key"] and again["replayed"] and again["from_ledger"]
    assert provider.sends_for(first["key"]) == 1


async def test_a_standalone_activity_is_keyed_by_its_activity_id(provider: MockProvider) -> None:
    idem = adapter_for(provider)
    async with idem:
        result = await run(env_for(None, "nightly/2026-12-08"), idem, {"user_id": "u1"}, {"to": ["a@example.com"]})
    assert result["job_id"] == "nightly%2F2026-12-08"


async def test_a_503_is_retried_by_temporal_and_the_next_attempt_sends_once(provider: MockProvider) -> None:
    key = f"welcome:u-{(t := tag())}:wf-{t}/1"
    provider.script("5xx", key=key)
    idem = adapter_for(provider)
    async with idem:
        with pytest.raises(ApplicationError) as retry:
            await run(env_for(f"wf-{t}", "1", attempt=1), idem, {"user_id": f"u-{t}"}, {"to": ["a@example.com"]})
        result = await run(env_for(f"wf-{t}", "1", attempt=2), idem, {"user_id": f"u-{t}"}, {"to": ["a@example.com"]})
    err = retry.value
    assert not err.non_retryable and err.type == "provider" and err.next_retry_delay is None
    assert err.details[0]["state"] == "retrying" and err.details[0]["attempt"] == 1
    assert result["state"] == "sent" and provider.sends_for(key) == 1 and len(provider.arrivals[key]) == 2


async def test_a_429_retry_after_becomes_next_retry_delay(provider: MockProvider) -> None:
    key = f"welcome:u-{(t := tag())}:wf-{t}/1"
    provider.faults.retry_after = 7
    provider.script("429", key=key)
    idem = adapter_for(provider)
    async with idem:
        with pytest.raises(ApplicationError) as retry:
            await run(env_for(f"wf-{t}", "1"), idem, {"user_id": f"u-{t}"}, {"to": ["a@example.com"]})
    assert retry.value.type == "provider" and retry.value.next_retry_delay == timedelta(seconds=7)


async def test_a_mismatch_is_non_retryable_with_its_code(provider: MockProvider) -> None:
    t = tag()
    key = f"welcome:u1:wf-{t}/1"
    # the key was used at the provider before with another body
    headers = {"Authorization": f"Bearer {provider.api_key}", "Idempotency-Key": key}
    async with aiohttp.ClientSession() as s, s.post(provider.emails_url, json={"other": 1}, headers=headers) as r:
        assert r.status == 200
    idem = adapter_for(provider)
    async with idem:
        with pytest.raises(ApplicationError) as fatal:
            await run(env_for(f"wf-{t}", "1"), idem, {"user_id": "u1"}, {"to": ["a@example.com"]})
    assert fatal.value.non_retryable and fatal.value.type == "IDEMPOTENCY_MISMATCH"
    assert "different body" in fatal.value.message and fatal.value.details[0]["state"] == "fatal"
    assert provider.sends_for(key) == 1  # the earlier one only


async def test_a_ledger_that_is_down_sends_nothing_and_retries(provider: MockProvider) -> None:
    idem = adapter_for(provider, ledger=ledger_from_url("redis://127.0.0.1:1/0", prefix=f"t-{tag()}"))
    async with idem:
        with pytest.raises(ApplicationError) as retry:
            await run(env_for(), idem, {"user_id": "u1"}, {"to": ["a@example.com"]})
    assert retry.value.type == "ledger" and not retry.value.non_retryable
    # (maybe_sent reads True here: the engine's pre-send ledger start check does not pass the
    # queue's attempt on; conservative, and outside this adapter)
    assert retry.value.details[0]["state"] == "retrying" and provider.stats.requests == 0


async def test_heartbeats_keep_coming_while_a_slow_send_runs(provider: MockProvider) -> None:
    t = tag()
    provider.delay(f"welcome:u1:wf-{t}/1", 2.0)
    beats: list[float] = []
    env = env_for(f"wf-{t}", "1", heartbeat_timeout=timedelta(seconds=0.3))
    env.on_heartbeat = lambda *details: beats.append(asyncio.get_running_loop().time())
    idem = adapter_for(provider)
    async with idem:
        result = await run(env, idem, {"user_id": "u1"}, {"to": ["a@example.com"]})
    assert result["state"] == "sent"
    # one every 0.1 s for 2 s: 20 on an idle machine; a loaded one still manages a few
    assert len(beats) >= 3


async def cancel_mid_send(provider: MockProvider, idem: TemporalAdapter, t: str) -> tuple[str, Ledger]:
    key = f"welcome:u1:wf-{t}/1"
    provider.delay(key, 3.0)
    env = env_for(f"wf-{t}", "1")
    task = asyncio.ensure_future(run(env, idem, {"user_id": "u1"}, {"to": ["a@example.com"]}))
    while not provider.arrivals.get(key):
        await asyncio.sleep(0.01)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    engine = await idem.start()
    assert engine.ledger is not None
    return key, engine.ledger


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_cancelled_activity_leaves_the_key_claimed_and_the_retry_replays(
    provider: MockProvider, store: str, request: pytest.FixtureRequest
) -> None:
    ledger: Ledger
    if store == "redis":
        ledger = ledger_from_url(request.getfixturevalue("redis_url"), prefix=f"temporal-test-{tag()}")
    else:
        ledger = MemoryLedger()
    idem = adapter_for(provider, ledger=ledger)
    t = tag()
    async with idem:
        key, kept = await cancel_mid_send(provider, idem, t)
        record = await kept.get(key)
        assert record is not None and record.state == "in_flight"  # an unknown outcome, not forgotten
        retried = await run(env_for(f"wf-{t}", "1", attempt=2), idem, {"user_id": "u1"}, {"to": ["a@example.com"]})
        if store == "redis":
            await kept.clear(key, force=True)
    assert retried["state"] == "sent" and retried["replayed"]
    assert provider.sends_for(key) == 1 and len(provider.arrivals[key]) >= 2


async def test_a_cancelled_retry_with_another_body_still_sends_the_first(provider: MockProvider) -> None:
    idem = adapter_for(provider)
    t = tag()
    async with idem:
        key, _ = await cancel_mid_send(provider, idem, t)
        # the resumed claim sends the frozen first body, so the provider replays (no mismatch, no second email)
        retried = await run(env_for(f"wf-{t}", "1", attempt=2), idem, {"user_id": "u1"}, {"to": ["b@example.com"]})
    assert retried["replayed"] and provider.sends_for(key) == 1


async def test_worker_shutdown_mid_send_lets_the_send_finish(provider: MockProvider) -> None:
    t = tag()
    key = f"welcome:u1:wf-{t}/1"
    provider.delay(key, 1.0)
    env = env_for(f"wf-{t}", "1")
    idem = adapter_for(provider)
    async with idem:
        task = asyncio.ensure_future(run(env, idem, {"user_id": "u1"}, {"to": ["a@example.com"]}))
        while not provider.arrivals.get(key):
            await asyncio.sleep(0.01)
        env.worker_shutdown()
        result = await task
    assert result["state"] == "sent" and provider.sends_for(key) == 1


async def test_short_timeouts_are_warned_about_once_per_activity_type(
    provider: MockProvider, caplog: pytest.LogCaptureFixture
) -> None:
    idem = adapter_for(provider)
    caplog.set_level(logging.WARNING, logger="idemsend.adapters.temporal")
    async with idem:
        for n in range(2):
            env = env_for(f"wf-{tag()}", "1", start_to_close_timeout=timedelta(seconds=5), heartbeat_timeout=None)
            await run(env, idem, {"user_id": f"u{n}"}, {"to": ["a@example.com"]})
    notes = [r.getMessage() for r in caplog.records if r.name == "idemsend.adapters.temporal"]
    assert len(notes) == 2, notes
    assert "start_to_close_timeout is 5s" in notes[0] and "worst_case_send_time" in notes[0]
    assert "no heartbeat_timeout" in notes[1]


async def test_a_template_with_the_run_id_is_refused_at_start(provider: MockProvider) -> None:
    idem = adapter_for(provider, key="welcome:{user_id}:{workflow_run_id}")
    with pytest.raises(ConfigError, match="workflow_run_id"):
        await idem.start()
    with pytest.raises(ConfigError, match="workflow_run_id"):
        await run(env_for(), idem, {"user_id": "u1", "workflow_run_id": "x"}, {"to": ["a@example.com"]})
    assert provider.stats.requests == 0


async def test_a_key_holding_the_run_id_is_never_sent(provider: MockProvider) -> None:
    idem = adapter_for(provider, key="welcome:{user_id}:{run}")
    env = env_for()
    async with idem:
        with pytest.raises(ApplicationError) as refused:
            await run(env, idem, {"user_id": "u1", "run": env.info.workflow_run_id}, {"to": ["a@example.com"]})
    assert refused.value.non_retryable and refused.value.type == "RUN_ID_IN_KEY"
    assert provider.stats.requests == 0


async def test_an_activity_id_no_ledger_can_store_fails_for_good_unsent(provider: MockProvider) -> None:
    idem = adapter_for(provider)
    async with idem:
        with pytest.raises(ApplicationError) as refused:
            await run(env_for("wf-" + "é" * 600, "1"), idem, {"user_id": "u1"}, {"to": ["a@example.com"]})
    assert refused.value.non_retryable and refused.value.type == "INVALID_JOB_ID"
    assert provider.stats.requests == 0


async def test_a_heartbeat_that_raises_does_not_fail_the_send(
    provider: MockProvider, caplog: pytest.LogCaptureFixture
) -> None:
    env = env_for(f"wf-{tag()}", "1")

    def broken(*details: Any) -> None:
        raise RuntimeError("heartbeat pipe closed")

    env.on_heartbeat = broken
    idem = adapter_for(provider)
    async with idem:
        result = await run(env, idem, {"user_id": "u1"}, {"to": ["a@example.com"]})
    assert result["state"] == "sent" and provider.sends_for(result["key"]) == 1
    assert any("could not heartbeat" in r.getMessage() for r in caplog.records)


async def test_a_job_id_of_the_workflows_own_is_used_and_checked(provider: MockProvider) -> None:
    idem = adapter_for(provider)
    env = env_for()
    async with idem:
        result = await run_with_id(env, idem, "order-77")
        with pytest.raises(ApplicationError) as refused:
            await run_with_id(env, idem, env.info.workflow_run_id or "")  # the run id as the job id
        with pytest.raises(ApplicationError) as empty:
            await run_with_id(env_for(), idem, "")
    assert result["job_id"] == "order-77" and result["key"] == "welcome:u1:order-77"
    assert refused.value.type == "RUN_ID_IN_KEY" and refused.value.non_retryable
    assert empty.value.type == "INVALID_JOB_ID" and empty.value.non_retryable
    assert provider.stats.requests == 1


async def run_with_id(env: ActivityEnvironment, idem: TemporalAdapter, job_id: str) -> dict[str, Any]:
    async def send_welcome() -> dict[str, Any]:
        return await idem.send({"user_id": "u1"}, {"to": ["a@example.com"]}, job_id=job_id)

    result: dict[str, Any] = await env.run(send_welcome)
    return result


async def test_job_from_temporal_reads_the_running_activity() -> None:
    env = env_for("wf-9", "4")

    async def body() -> str:
        return job_from_temporal({"user_id": "u1"}).id

    assert await env.run(body) == "wf-9/4"
    assert job_from_temporal(info=env.info).id == "wf-9/4"  # outside an activity, from its info


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="engine factory"):
        TemporalAdapter(Engine("http://127.0.0.1:1/x", key=TEMPLATE))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="heartbeat_every"):
        TemporalAdapter(lambda: Engine("http://127.0.0.1:1/x", key=TEMPLATE), heartbeat_every=0)
    with pytest.raises(ConfigError, match="backoff"):
        TemporalAdapter(lambda: Engine("http://127.0.0.1:1/x", key=TEMPLATE), backoff=2)  # type: ignore[arg-type]
