"""A ledger outage longer than a few seconds must not fail jobs for good (issue 8, item 14).

Before: every "ledger unreachable" error carried retry_after=1.0 and the adapters used it,
so with arq's max_tries=5 a 6-second Redis outage failed jobs permanently, each tried at
0, 1, 2, 3 and 4 s. Now the queue's own exponential backoff spreads the tries (1, 2, 4, 8 s
and up to 25% more), so the same five tries span 15 s.
"""

from __future__ import annotations

import asyncio

import pytest

from idemsend.adapters import retry_span
from idemsend.testing import MockProvider, RedisServer

from .conformance.drivers import ArqDriver

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

OUTAGE = 6.0
JOBS = 40


async def test_a_six_second_ledger_outage_fails_no_arq_job(redis_url: str) -> None:
    assert retry_span(5) > 2 * OUTAGE  # the budget the test relies on, with margin
    with RedisServer(appendonly=True) as ledger:
        async with MockProvider() as provider:
            driver = ArqDriver(provider, redis_url)
            driver.env.update({
                "IDEMSEND_LEDGER_URL": ledger.url,  # the ledger on its own server, the queue stays up
                "ARQ_MAX_TRIES": "5", "ARQ_RETRY_BASE": "1.0", "ARQ_MAX_JOBS": "50",
            })
            await driver.start()
            try:
                ledger.stop()
                jobs = [f"outage-{i}" for i in range(JOBS)]
                for job_id in jobs:
                    await driver.enqueue(job_id, {"user_id": job_id}, {"to": [f"{job_id}@example.com"]})
                await asyncio.sleep(OUTAGE)
                ledger.start()
                terminals = await asyncio.gather(*(driver.terminal(j, timeout=60) for j in jobs))
            finally:
                await driver.stop()
    failed = [t for t in terminals if t.state != "sent"]
    assert not failed, (failed[:3], driver.tail()[-2000:])
    assert provider.sends == JOBS and not provider.double_sends()
