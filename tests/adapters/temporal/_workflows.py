"""A workflow for the real-server tests (its own module: Temporal's sandbox re-imports it)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType


@workflow.defn(name="OneSend")
class OneSend:
    """Runs ``send_welcome(user_id, email)`` once; a cancel waits for the activity to stop."""

    @workflow.run
    async def run(self, user_id: str, email: str) -> dict[str, Any]:
        result: dict[str, Any] = await workflow.execute_activity(
            "send_welcome", args=[user_id, email],
            start_to_close_timeout=timedelta(seconds=120), heartbeat_timeout=timedelta(seconds=1),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=0.2), maximum_attempts=5),
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        return result
