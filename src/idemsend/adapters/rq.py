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
worker process** (``ProcessLocalEngine``: a plain asyncio loop in a thread), so with
``SimpleWorker`` every job shares one Engine and its pooled connections. The default
forking ``Worker`` runs each job in a fresh child process: still correct, one Engine per job.

The job id is ``job.id``. The adapter kit's outcomes in RQ's terms: ``Succeeded`` -> the
job returns ``result_dict``; ``RetryIn`` -> ``rq.Retry(max, interval=…)`` with the
provider's ``Retry-After``, else the adapter's exponential ``backoff`` (the default 9
retries, 10 tries, ride out an outage of about 8.5 minutes: ``QueueBackoff().span(10)``). RQ
re-enqueues it through its scheduler: run ``rq worker --with-scheduler``. RQ scores a
scheduled job in whole seconds and drops the fraction (``calendar.timegm(dt.utctimetuple())``),
so the interval is rounded up past the next whole second (see :func:`rq_interval`): the
retry never runs before the provider said it may. ``GiveUp`` (a ``FatalError``, or the
last retry's ``RetryableError``) is raised with retries switched off for the job, so the
FailedJobRegistry holds the real reason. Every try's outcome record (the adapter kit's
``outcome_record``: ``state`` ``sent``, ``retrying``, ``failed`` or ``fatal``, with the
reason or code, ``detail``, ``message``, ``maybe_sent`` and ``attempt``) is also written to
``job.meta["idemsend"]`` for dashboards and tests.

Enqueue with ``retry=idem.retry()``: RQ only re-runs a job whose worker died (an
abandoned job) when the job has retries left.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from .._classify import MAX_RETRY_AFTER
from .._errors import ConfigError, MissingExtraError
from .._keys import Job
from ._common import DEFAULT_MAX_TRIES, EngineFactory, check_factory
from ._kit import GiveUp, QueueBackoff, RetryIn, Succeeded, adapter_backoff, check_tries, outcome_record, run_job
from ._portal import ProcessLocalEngine

try:
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
    """Runs ``Engine.send`` for sync RQ jobs on one event loop per worker process.

    ``engine_factory`` makes each process's Engine; ``max_retries`` is RQ's retry budget
    (``retry=idem.retry()``); ``backoff`` (a ``QueueBackoff``) the delay between tries when
    the provider named none, or the shorthand ``retry_base=`` (its first delay)."""

    def __init__(
        self, engine_factory: EngineFactory, *, max_retries: int = DEFAULT_MAX_TRIES - 1,
        backoff: QueueBackoff | None = None, retry_base: float | None = None,
    ) -> None:
        self.engine_factory = check_factory(engine_factory)
        self.max_retries = check_tries("max_retries", max_retries)
        self.backoff = adapter_backoff(backoff, retry_base=retry_base)
        self.retry_base = self.backoff.base
        self.engines = ProcessLocalEngine(engine_factory)

    def retry(self) -> Retry:
        """The ``retry=`` to enqueue jobs with (it lets RQ re-run an abandoned job)."""
        return Retry(max=self.max_retries, interval=1)

    def close(self) -> None:
        """Close the engine and stop the loop thread (at exit, or by hand)."""
        self.engines.close()

    def send(self, data: Mapping[str, Any], body: Any) -> Any:
        """Send ``body`` for the current RQ job; ``data`` fills the key template."""
        job = get_current_job()
        if job is None:
            raise ConfigError("RQAdapter.send must run inside an RQ job")
        attempt = int(job.number_of_retries or 0) + 1
        outcome = self.engines.call(lambda engine: run_job(
            engine, Job(str(job.id), data), body,
            attempt=attempt, max_attempts=self.max_retries + 1, queue="rq", backoff=self.backoff,
        ))
        self._meta(job, outcome_record(outcome, attempt=attempt))
        match outcome:
            case Succeeded(result):
                return result
            case RetryIn(delay):
                return Retry(max=self.max_retries, interval=rq_interval(delay))
            case GiveUp(error):
                # the last try, or a fatal job: RQ must not retry it, whatever it was enqueued
                # with, so the FailedJobRegistry keeps this reason
                job.retries_left = 0
                raise error

    @staticmethod
    def _meta(job: Any, record: Mapping[str, Any]) -> None:
        job.meta["idemsend"] = dict(record)
        job.save_meta()
