"""RQ job functions that send through idemsend.

Run a worker in this folder: `rq worker --with-scheduler --worker-class rq.worker.SimpleWorker
--url $REDIS_URL emails` (the scheduler re-enqueues retries; SimpleWorker keeps one Engine
and its connections across jobs). Environment: see idemsend.adapters.engine_from_env,
plus RQ_MAX_RETRIES and RQ_RETRY_BASE (the first retry's delay when the provider named none).
"""

from __future__ import annotations

import os
from typing import Any

from idemsend.adapters import QueueBackoff, engine_from_env
from idemsend.adapters.rq import RQAdapter

idem = RQAdapter(
    engine_from_env,
    max_retries=int(os.environ.get("RQ_MAX_RETRIES", "9")),
    backoff=QueueBackoff(base=float(os.environ.get("RQ_RETRY_BASE", "1.0"))),
)


def send_email(data: dict[str, Any], body: dict[str, Any]) -> Any:
    """An ordinary sync RQ job: `data` fills the key template, `body` is what is sent."""
    return idem.send(data, body)
