"""Brokers the adapter must refuse at start, run under the real ``dramatiq`` CLI.

PROBE_MODE=no-retries: a broker made without the Retries middleware (refused when the
adapter is made, at import). PROBE_MODE=late: Retries removed after the adapter was made
(refused at worker boot, by the adapter's middleware)."""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Retries, TimeLimit

from idemsend.adapters import engine_from_env
from idemsend.adapters.dramatiq import DramatiqAdapter

MODE = os.environ["PROBE_MODE"]
URL = os.environ["DRAMATIQ_BROKER_URL"]
if MODE == "no-retries":
    broker = RedisBroker(url=URL, namespace=os.environ["DRAMATIQ_NAMESPACE"], middleware=[TimeLimit()])
else:
    broker = RedisBroker(url=URL, namespace=os.environ["DRAMATIQ_NAMESPACE"])
dramatiq.set_broker(broker)
idem = DramatiqAdapter(broker, engine_from_env)
if MODE == "late":
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, Retries)]


@idem.actor(queue_name=os.environ["DRAMATIQ_QUEUE"])
def send_email(data: dict[str, Any], body: Any) -> None:
    idem.send(data, body)
