"""The workflow of the Temporal worker project: one activity per job, or several at once.

Kept apart from the activity (``worker.py``) because Temporal runs workflow code in its
sandbox, which re-imports this module: only temporalio and the standard library here.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy


@workflow.defn(name="SendEmail")
class SendEmail:
    """Runs the ``send_email`` activity for ``job["data"]`` / ``job["body"]``.

    ``job["settings"]`` carries the activity options (the retry policy: ``maximum_attempts``
    lives here, in Temporal, not in idemsend). ``job["copies"]`` > 1 runs that many
    activities with the same ``job_id`` at once, as a timed-out attempt that keeps running
    beside its retry would."""

    @workflow.run
    async def run(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        settings = job["settings"]
        options: dict[str, Any] = {
            "start_to_close_timeout": timedelta(seconds=settings["start_to_close"]),
            "heartbeat_timeout": timedelta(seconds=settings["heartbeat"]),
            "retry_policy": RetryPolicy(
                initial_interval=timedelta(seconds=settings["retry_base"]),
                maximum_interval=timedelta(seconds=settings["retry_cap"]),
                backoff_coefficient=2.0,
                maximum_attempts=settings["max_tries"],
            ),
        }
        args = [job.get("job_id"), job["data"], job["body"]]
        runs = [
            workflow.execute_activity("send_email", args=args, **options) for _ in range(int(job.get("copies", 1)))
        ]
        return list(await asyncio.gather(*runs))
