"""A Celery app whose task sends through idemsend, configured to be at-least-once.

Run a worker in this folder (RabbitMQ as broker, Redis for results, by default):

    celery -A tasks worker --pool prefork --concurrency 4 --prefetch-multiplier 1 -Q emails

Environment: idemsend.adapters.engine_from_env's IDEMSEND_* settings, and
CELERY_BROKER_URL (default amqp://guest:guest@127.0.0.1:5672//; redis://… for Redis as broker),
CELERY_RESULT_BACKEND (default redis://127.0.0.1:6379/1), CELERY_QUEUE (default emails),
CELERY_MAX_RETRIES (9), CELERY_RETRY_BASE (1.0 s), CELERY_RETRY_CAP (300 s),
CELERY_VISIBILITY_TIMEOUT (Redis broker only, default 3600 s) and
CELERY_BROKER_TRANSPORT_OPTIONS (JSON, merged last: global_keyprefix, unacked_restore_interval, …).
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery

from idemsend.adapters import QueueBackoff, engine_from_env
from idemsend.adapters.celery import CeleryAdapter

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/1")
QUEUE = os.environ.get("CELERY_QUEUE", "emails")

transport_options: dict[str, Any] = {}
if BROKER_URL.startswith(("redis://", "rediss://", "sentinel://")):
    # A delivered message comes back to the queue if it is not acked within this: longer
    # than the longest send plus the longest retry countdown (the adapter warns otherwise).
    transport_options["visibility_timeout"] = float(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "3600"))
transport_options.update(json.loads(os.environ.get("CELERY_BROKER_TRANSPORT_OPTIONS", "{}")))

app = Celery("idemsend_emails", broker=BROKER_URL, backend=RESULT_BACKEND)
app.conf.update(
    # at-least-once: ack after the task, and requeue a task whose pool process died
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # a dead worker's reserved messages wait for redelivery: reserve one at a time
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    broker_transport_options=transport_options,
    broker_connection_retry_on_startup=True,
    # a retry's republish and the result write ride out a short broker or Redis outage
    task_publish_retry_policy={"max_retries": 30, "interval_start": 0, "interval_step": 0.5, "interval_max": 2},
    result_backend_always_retry=True,
    result_backend_max_retries=60,
    result_extended=True,
)

idem = CeleryAdapter(
    app,
    engine_from_env,
    backoff=QueueBackoff(
        base=float(os.environ.get("CELERY_RETRY_BASE", "1.0")), cap=float(os.environ.get("CELERY_RETRY_CAP", "300")),
    ),
)


@idem.task(name="send_email", max_retries=int(os.environ.get("CELERY_MAX_RETRIES", "9")))
def send_email(self: Any, data: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """An ordinary Celery task: `data` fills the key template, `body` is what is sent."""
    return idem.send(self, data, body)
