"""RQ adapter (``pip install 'idemsend[rq]'``).

```python
from idemsend import Engine
from idemsend.adapters.rq import RQAdapter

idem = RQAdapter(lambda: Engine(URL, key="welcome:{user_id}:{job_id}", api_key=KEY), max_retries=9)

def send_welcome(user_id: str, email: str) -> dict:       # an ordinary, sync RQ job
    return idem.send({"user_id": user_id}, {"to": [email], "template": "welcome"})

queue.enqueue(send_welcome, "u1", "ada@example.com", retry=idem.retry())
```

RQ job functions are sync; the adapter runs the async engine on **one event loop per
worker process** (an anyio blocking portal in a thread), so with ``SimpleWorker`` every
job shares one Engine and its pooled connections. The default forking ``Worker`` runs
each job in a fresh child process: still correct, one Engine per job.

The job id is ``job.id``. ``RetryableError`` returns ``rq.Retry(max, interval=…)`` with the
provider's ``Retry-After``, else exponential backoff from ``retry_base`` (the default 9
retries, 10 tries, ride out an outage of about 8.5 minutes: ``retry_span(10)``). RQ
re-enqueues it through its scheduler: run ``rq worker
--with-scheduler``). RQ scores a scheduled job in whole seconds and drops the fraction
(``calendar.timegm(dt.utctimetuple())``), so the interval is rounded up past the next whole
second (see :func:`rq_interval`): the retry never runs before the provider said it may. On the last
retry the error is raised, so the FailedJobRegistry holds the real reason. ``FatalError``
goes to the FailedJobRegistry with retries switched off for the job. The outcome is also
written to ``job.meta["idemsend"]`` for dashboards and tests.

Enqueue with ``retry=idem.retry()``: RQ only re-runs a job whose worker died (an
abandoned job) when the job has retries left.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from .._classify import MAX_RETRY_AFTER
from .._engine import Engine
from .._errors import ConfigError, FatalError, MissingExtraError, RetryableError
from .._keys import Job
from ._common import (
    DEFAULT_MAX_TRIES,
    DEFAULT_RETRY_BASE,
    EngineFactory,
    build_engine,
    default_retry_delay,
    result_dict,
)

try:
    import anyio.from_thread
    from anyio.from_thread import BlockingPortal
    from rq import Retry, get_current_job
except ImportError as exc:
    raise MissingExtraError("rq", "rq") from exc

__all__ = ["RQAdapter", "rq_interval"]


def rq_interval(delay: float, now: float | None = None) -> int:
    """The ``Retry(interval=)`` that makes RQ run a retry no earlier than ``delay`` from ``now``.

    RQ schedules at ``now + interval`` and stores that time with the fraction of a second
    dropped, so a plain ``ceil(delay)`` can come back up to a second early. Adding the
    current fraction before rounding up keeps the stored second at or after ``now + delay``.
    """
    if not math.isfinite(delay):
        delay = MAX_RETRY_AFTER
    if delay <= 0:
        return 0
    delay = min(delay, MAX_RETRY_AFTER)
    now = time.time() if now is None else now
    return math.ceil(delay + (now - math.floor(now)))


class RQAdapter:
    """Runs ``Engine.send`` for sync RQ jobs on one event loop per worker process."""

    def __init__(
        self, engine_factory: EngineFactory, *, max_retries: int = DEFAULT_MAX_TRIES - 1,
        retry_base: float = DEFAULT_RETRY_BASE,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 1:
            raise ConfigError(f"max_retries must be an integer >= 1, got {max_retries!r}")
        if not (isinstance(retry_base, int | float) and math.isfinite(retry_base) and 0 < retry_base <= 3600):
            raise ConfigError(f"retry_base must be a number of seconds in (0, 3600], got {retry_base!r}")
        self.engine_factory = engine_factory
        self.max_retries = max_retries
        self.retry_base = retry_base
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._engine: Engine | None = None

    def retry(self) -> Retry:
        """The ``retry=`` to enqueue jobs with (it lets RQ re-run an abandoned job)."""
        return Retry(max=self.max_retries, interval=1)

    def _runtime(self) -> tuple[BlockingPortal, Engine]:
        with self._lock:
            if self._pid != os.getpid() or self._portal is None or self._engine is None:
                # First use in this process (a forked work-horse inherits a dead portal
                # thread from its parent, so the pid decides).
                self._portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
                self._portal = self._portal_cm.__enter__()
                self._engine = self._portal.call(build_engine(self.engine_factory).start)
                self._pid = os.getpid()
                atexit.register(self.close)
            return self._portal, self._engine

    def close(self) -> None:
        """Close the engine and stop the loop thread (at exit, or by hand)."""
        with self._lock:
            portal, engine, cm = self._portal, self._engine, self._portal_cm
            self._portal = self._engine = self._portal_cm = None
            if self._pid != os.getpid():
                return
            if portal is not None and engine is not None:
                portal.call(engine.aclose)
            if cm is not None:
                cm.__exit__(None, None, None)

    def send(self, data: Mapping[str, Any], body: Any) -> Any:
        """Send ``body`` for the current RQ job; ``data`` fills the key template."""
        job = get_current_job()
        if job is None:
            raise ConfigError("RQAdapter.send must run inside an RQ job")
        portal, engine = self._runtime()
        attempt = int(job.number_of_retries or 0) + 1
        try:
            result = portal.call(lambda: engine.send(Job(str(job.id), data), body, attempt=attempt))
        except RetryableError as exc:
            self._meta(job, {"state": "retrying", "reason": exc.reason, "message": str(exc), "attempt": attempt})
            if attempt > self.max_retries:
                job.retries_left = 0
                raise  # the last try: the FailedJobRegistry keeps this reason
            delay = rq_interval(default_retry_delay(exc, attempt, base=self.retry_base))
            return Retry(max=self.max_retries, interval=delay)
        except FatalError as exc:
            self._meta(job, {"state": "fatal", "code": exc.code, "message": str(exc), "attempt": attempt})
            job.retries_left = 0  # a fatal job must not be retried, whatever it was enqueued with
            raise
        outcome = result_dict(result)
        self._meta(job, {**outcome, "attempt": attempt})
        return outcome

    @staticmethod
    def _meta(job: Any, value: dict[str, Any]) -> None:
        job.meta["idemsend"] = value
        job.save_meta()
