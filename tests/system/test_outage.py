"""A ledger outage longer than a few seconds must not fail jobs for good (issue 8, item 14).

Before: every "ledger unreachable" error carried retry_after=1.0 and the adapters used it,
so with arq's max_tries=5 a 6-second Redis outage failed jobs permanently, each tried at
0, 1, 2, 3 and 4 s. Now the queue's own exponential backoff spreads the tries (1, 2, 4, 8 s
and up to 25% more), so the same five tries span 15 s.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from harness.queues import CONFORMANCE, QueueJob, RunDir, driver
from idemsend.adapters import QueueBackoff
from idemsend.testing import MockProvider, RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.processes]

OUTAGE = 6.0
JOBS = 40


async def test_a_six_second_ledger_outage_fails_no_arq_job(redis_url: str) -> None:
    assert QueueBackoff().span(5) > 2 * OUTAGE  # the budget the test relies on, with margin
    profile = replace(CONFORMANCE, max_tries=5, retry_base=1.0, jobs_per_worker=50)
    with RunDir("outage") as logs, RedisServer(appendonly=True) as ledger:
        async with MockProvider() as provider:
            # the ledger on its own server; the queue stays up
            arq = driver("arq")(provider, redis_url, profile=profile, run_dir=logs, ledger_url=ledger.url)
            async with arq:
                ledger.stop()
                jobs = [QueueJob(f"outage-{i}", {"user_id": f"outage-{i}"}, {"to": [f"outage-{i}@example.com"]})
                        for i in range(JOBS)]
                for job in jobs:
                    assert await arq.deliver(job)
                await asyncio.sleep(OUTAGE)
                ledger.start()
                terminals = await asyncio.gather(*(arq.wait(job.id, timeout=60) for job in jobs))
        failed = [t for t in terminals if t.state != "sent"]
        assert not failed, (failed[:3], arq.tail()[-2000:])
        assert provider.sends == JOBS and not provider.double_sends()
