"""A Dramatiq broker and actor that send through idemsend (RabbitMQ or Redis as broker).

Run a worker in this folder:

    dramatiq tasks --processes 1 --threads 8 --queues emails

Environment: idemsend.adapters.engine_from_env's IDEMSEND_* settings, and
DRAMATIQ_BROKER_URL (default amqp://guest:guest@127.0.0.1:5672; redis://… for the Redis broker),
DRAMATIQ_NAMESPACE (Redis broker key prefix, default dramatiq), DRAMATIQ_HEARTBEAT_TIMEOUT
(Redis broker: ms without a heartbeat before a dead worker's messages are requeued, default
60000), DRAMATIQ_QUEUE (default emails), DRAMATIQ_MAX_RETRIES (9), DRAMATIQ_RETRY_BASE
(1.0 s) and DRAMATIQ_RETRY_CAP (300 s); IDEMSEND_OUTCOMES_URL (a Redis URL: every try's
outcome record is kept in the hash IDEMSEND_OUTCOMES_KEY, field = the message id).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import dramatiq

from idemsend.adapters import QueueBackoff, engine_from_env
from idemsend.adapters.dramatiq import DramatiqAdapter

BROKER_URL = os.environ.get("DRAMATIQ_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672")
QUEUE = os.environ.get("DRAMATIQ_QUEUE", "emails")

broker: dramatiq.Broker
if BROKER_URL.startswith(("redis://", "rediss://", "unix://")):
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(
        url=BROKER_URL, namespace=os.environ.get("DRAMATIQ_NAMESPACE", "dramatiq"),
        heartbeat_timeout=int(os.environ.get("DRAMATIQ_HEARTBEAT_TIMEOUT", "60000")),
        # out of a million fetches: how often a worker requeues dead workers' messages
        maintenance_chance=int(os.environ.get("DRAMATIQ_MAINTENANCE_CHANCE", "1000")),
    )
else:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    # confirm_delivery: a retry's publish is confirmed by RabbitMQ before the try is acked
    broker = RabbitmqBroker(url=BROKER_URL, confirm_delivery=True)
dramatiq.set_broker(broker)

OUTCOMES_URL = os.environ.get("IDEMSEND_OUTCOMES_URL")
OUTCOMES_KEY = os.environ.get("IDEMSEND_OUTCOMES_KEY", "idemsend-dramatiq-outcomes")
_outcomes: Any = None


def keep_outcome(message: Any, record: Mapping[str, Any]) -> None:
    """Keep a try's outcome record where the producer reads it, riding out a short Redis restart
    (if it still fails, the error goes to Dramatiq: the message is retried, and replayed)."""
    global _outcomes
    if OUTCOMES_URL is None:
        return
    if _outcomes is None:
        from redis import Redis

        _outcomes = Redis.from_url(OUTCOMES_URL, socket_timeout=5)
    for pause in (0.1, 0.2, 0.5, 1, 1, 2, 2, 5, 5, 5, 5, 0):
        try:
            _outcomes.hset(OUTCOMES_KEY, message.message_id, json.dumps(dict(record)))
            return
        except Exception:
            if not pause:
                raise
            time.sleep(pause)


idem = DramatiqAdapter(
    broker, engine_from_env, on_outcome=keep_outcome,
    backoff=QueueBackoff(base=float(os.environ.get("DRAMATIQ_RETRY_BASE", "1.0")),
                         cap=float(os.environ.get("DRAMATIQ_RETRY_CAP", "300"))),
)


@idem.actor(queue_name=QUEUE, max_retries=int(os.environ.get("DRAMATIQ_MAX_RETRIES", "9")))
def send_email(data: dict[str, Any], body: dict[str, Any]) -> None:
    """`data` fills the key template, `body` is what is sent."""
    idem.send(data, body)
