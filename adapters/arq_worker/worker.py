"""An arq worker that sends through idemsend. Run: `arq worker.WorkerSettings` (in this folder).

Environment: REDIS_URL (the queue), IDEMSEND_URL, IDEMSEND_API_KEY, IDEMSEND_LEDGER_URL
(see idemsend.adapters.engine_from_env), ARQ_MAX_TRIES, ARQ_JOB_TIMEOUT, ARQ_RETRY_BASE.
"""

from __future__ import annotations

import os
from typing import Any

from arq.connections import RedisSettings

from idemsend.adapters import QueueBackoff, engine_from_env
from idemsend.adapters.arq import ArqAdapter

idem = ArqAdapter(
    engine_from_env,
    max_tries=int(os.environ.get("ARQ_MAX_TRIES", "10")),
    backoff=QueueBackoff(base=float(os.environ.get("ARQ_RETRY_BASE", "1.0"))),
)


async def send_email(ctx: dict[str, Any], data: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """An ordinary arq job: `data` fills the key template, `body` is what is sent."""
    return await idem.send(ctx, data, body)


class WorkerSettings:
    functions = [send_email]
    on_startup = idem.on_startup  # one Engine per worker process, shared by every job
    on_shutdown = idem.on_shutdown
    max_tries = idem.max_tries
    redis_settings = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    queue_name = os.environ.get("ARQ_QUEUE", "arq:queue")
    job_timeout = int(os.environ.get("ARQ_JOB_TIMEOUT", "60"))
    max_jobs = int(os.environ.get("ARQ_MAX_JOBS", "100"))
    poll_delay = 0.05
