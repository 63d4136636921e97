"""The Celery app the real-worker tests run (`celery -A probe worker`, in this folder).

Like ``adapters/celery_worker``, plus what the tests read back: each result says which
process ran the task, how many Engines that process made and which one it used, and every
process writes a file when its worker signals shut it down (``PROBE_DIR``), saying whether
its Engine was closed by then.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from celery import Celery, signals

from idemsend import Engine
from idemsend.adapters import engine_from_env
from idemsend.adapters.celery import CeleryAdapter

app = Celery("probe", broker=os.environ["CELERY_BROKER_URL"], backend=os.environ["CELERY_RESULT_BACKEND"])
app.conf.update(
    task_default_queue=os.environ["CELERY_QUEUE"],
    broker_transport_options=json.loads(os.environ.get("CELERY_BROKER_TRANSPORT_OPTIONS", "{}")),
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    result_extended=True,
)

#: Engines made, by process id.
MADE: Counter[int] = Counter()


def factory() -> Engine:
    """``engine_from_env``, counted per process."""
    MADE[os.getpid()] += 1
    return engine_from_env()


idem = CeleryAdapter(app, factory, retry_base=float(os.environ.get("CELERY_RETRY_BASE", "0.2")))


@idem.task(name="probe.send", max_retries=int(os.environ.get("CELERY_MAX_RETRIES", "3")))
def send(self: Any, data: dict[str, Any], body: Any) -> dict[str, Any]:
    """The runnable project's task, plus which process and Engine ran it."""
    result = idem.send(self, data, body)
    pid = os.getpid()
    return {**result, "pid": pid, "engines_made": MADE[pid], "engine": id(idem.engine()),
            "retries": self.request.retries, "task_id": self.request.id}


def _shut(**_: Any) -> None:
    # connected after the adapter's own receivers, so it runs after they closed the Engine
    folder = os.environ.get("PROBE_DIR")
    if folder:
        pid = os.getpid()
        state = {"pid": pid, "engines_made": MADE[pid], "engine": repr(idem.engines)}
        Path(folder, f"shutdown-{pid}.json").write_text(json.dumps(state))


signals.worker_process_shutdown.connect(_shut, weak=False)
signals.worker_shutdown.connect(_shut, weak=False)
