"""Temporal activity adapter (``pip install 'idemsend[temporal]'``).

```python
from temporalio import activity
from idemsend import Engine
from idemsend.adapters.temporal import TemporalAdapter

idem = TemporalAdapter(lambda: Engine(URL, key="welcome:{user_id}:{job_id}", api_key=KEY, retry=0))

@activity.defn
async def send_welcome(user_id: str, email: str) -> dict:
    return await idem.send({"user_id": user_id}, {"to": [email], "template": "welcome"})

# in the worker's main: one Engine per worker process, closed when the worker stops
async with idem, Worker(client, task_queue="emails", activities=[send_welcome], workflows=[...]):
    ...
```

A Temporal activity runs *at least once*: an attempt that timed out may still be running
when the next starts. The job id is the **workflow id + activity id** (``job_id_for``: the
run id is never in it, since it changes when a workflow is retried, reset or
continued-as-new; a standalone activity's is its activity id), the attempt is
``activity.info().attempt``. The kit's outcomes in Temporal's terms:

* ``Succeeded`` -> the activity returns ``result_dict`` (JSON-able).
* ``RetryIn`` -> ``ApplicationError(type=<reason>, next_retry_delay=...)``: the provider's
  ``Retry-After`` when it named one, else the retry policy's own interval (or the adapter's
  ``backoff=`` if given). ``maximum_attempts`` lives in Temporal's retry policy.
* ``GiveUp`` -> ``ApplicationError(type=<code>, non_retryable=True)`` with the real reason.
* Each error carries the outcome record (``outcome_record``) as its one detail.

While a send runs the activity heartbeats (a third of ``heartbeat_timeout``, at most every
``heartbeat_every`` seconds), so a lost worker is noticed at the heartbeat timeout and a
cancellation is delivered. A cancelled activity's send stops; a request that may have
reached the provider leaves its ledger record claimed as an unknown outcome (never
forgotten), and the next attempt resumes it with the first attempt's body under the same
key, so the provider answers it as a replay. At the first send of each activity type the
adapter warns (logger ``idemsend.adapters.temporal``) when its timeouts are shorter than
``engine.worst_case_send_time()`` or it has no heartbeat timeout. A key template naming a
run id is refused at start (``ConfigError``); a key that holds the run's id is never sent
(``ApplicationError(type="RUN_ID_IN_KEY", non_retryable=True)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

from ..._engine import Engine
from ..._errors import ConfigError, InvalidJobIdError, KeyDerivationError, MissingExtraError
from ..._keys import Job, Template
from .._common import EngineFactory, check_factory
from .._holder import StartedEngine
from .._kit import GiveUp, QueueBackoff, RetryIn, Succeeded, run_job

try:
    from temporalio import activity
    from temporalio.exceptions import ApplicationError
except ImportError as exc:
    raise MissingExtraError("temporal", "temporalio") from exc

from ._decide import (
    ActivityFacts,
    check_template_fields,
    heartbeat_every,
    job_id_for,
    retry_delay,
    run_id_in_key,
    timeout_warnings,
    to_application_error,
)

__all__ = ["DEFAULT_HEARTBEAT_EVERY", "TemporalAdapter", "activity_facts", "job_from_temporal", "job_id_for"]

log = logging.getLogger("idemsend.adapters.temporal")

#: The longest pause between two heartbeats while a send runs, seconds.
DEFAULT_HEARTBEAT_EVERY = 5.0


def job_from_temporal(data: Mapping[str, Any] | None = None, info: activity.Info | None = None) -> Job:
    """The ``Job`` of the running activity (or of ``info``): its id from the workflow id +
    activity id (``job_id_for``), ``data`` to fill the key template. The same key helper
    serves any code that calls ``Engine.send`` from an activity by hand."""
    info = activity.info() if info is None else info
    return Job(job_id_for(info.workflow_id, info.activity_id), data or {})


def activity_facts(info: activity.Info) -> ActivityFacts:
    """What the timeout check reads from ``info``."""
    policy = info.retry_policy
    return ActivityFacts(
        activity_type=info.activity_type,
        start_to_close=info.start_to_close_timeout,
        schedule_to_close=info.schedule_to_close_timeout,
        heartbeat=info.heartbeat_timeout,
        maximum_attempts=None if policy is None else policy.maximum_attempts,
        is_local=info.is_local,
    )


class TemporalAdapter:
    """One Engine per worker process for every activity that sends through it.

    ``engine_factory`` makes the worker's Engine (on :meth:`start`, or the first send);
    ``backoff`` (a ``QueueBackoff``), when given, sets every retry's ``next_retry_delay``
    (default: only a provider's ``Retry-After`` does; otherwise the retry policy spaces the
    tries); ``heartbeat_every``: the longest pause between heartbeats while a send runs."""

    def __init__(
        self, engine_factory: EngineFactory, *, backoff: QueueBackoff | None = None,
        heartbeat_every: float = DEFAULT_HEARTBEAT_EVERY,
    ) -> None:
        self.engine_factory = check_factory(engine_factory)
        if backoff is not None and not isinstance(backoff, QueueBackoff):
            raise ConfigError(f"backoff must be an idemsend.adapters.QueueBackoff, got {backoff!r}")
        if isinstance(heartbeat_every, bool) or not isinstance(heartbeat_every, int | float) or not (
            0 < heartbeat_every <= 3600
        ):
            raise ConfigError(f"heartbeat_every must be a number of seconds in (0, 3600], got {heartbeat_every!r}")
        self.backoff = backoff
        self.heartbeat_every = float(heartbeat_every)
        self._engines = StartedEngine(self.engine_factory)
        self._checked: set[str] = set()  # activity types whose timeouts were checked

    def __repr__(self) -> str:
        return f"<TemporalAdapter {self._engines!r}>"

    async def start(self) -> Engine:
        """Make and start this worker's Engine (once); ConfigError for a key template that
        names a run id."""
        return await self._engines.start(prepare=_refuse_run_id_template)

    async def close(self) -> None:
        """Close this worker's Engine (a later send makes a fresh one)."""
        await self._engines.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _warn_once(self, engine: Engine, info: activity.Info) -> None:
        if info.activity_type in self._checked:
            return
        self._checked.add(info.activity_type)
        for note in timeout_warnings(activity_facts(info), engine.worst_case_send_time()):
            log.warning("idemsend: %s", note, extra={"code": "temporal_timeouts"})

    async def send(self, data: Mapping[str, Any], body: Any, *, job_id: str | None = None) -> dict[str, Any]:
        """Send ``body`` for the running activity (call it from the activity's body);
        ``data`` fills the key template. ``job_id``: an id of your own instead of the
        workflow id + activity id, as stable as they are (an order id the workflow got as
        its input; never the run id). Returns ``result_dict``; raises ``ApplicationError``
        for a retry or a failure (see the module docstring)."""
        info = activity.info()
        engine = await self.start()
        self._warn_once(engine, info)
        try:
            job = job_from_temporal(data, info) if job_id is None else Job(job_id, data)
        except InvalidJobIdError as exc:  # an id no ledger can store: failed for good, never sent
            raise to_application_error(GiveUp(exc, retryable=False), attempt=info.attempt, next_delay=None) from exc
        _refuse_run_id_key(engine, job, info)
        beat = asyncio.ensure_future(self._heartbeat(info))
        try:
            outcome = await run_job(
                engine, job, body, attempt=info.attempt, max_attempts=None, queue="temporal",
            )
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        match outcome:
            case Succeeded(result):
                return result
            case RetryIn():
                delay = retry_delay(outcome, self.backoff, info.attempt)
                raise to_application_error(outcome, attempt=info.attempt, next_delay=delay) from outcome.error
            case GiveUp(error):
                raise to_application_error(outcome, attempt=info.attempt, next_delay=None) from error

    async def _heartbeat(self, info: activity.Info) -> None:
        """Heartbeat until cancelled (the send ended). A heartbeat that raises stops the
        beating, logged, and never the send: its outcome is what the activity reports."""
        every = heartbeat_every(info.heartbeat_timeout, self.heartbeat_every)
        while True:
            try:
                activity.heartbeat()
            except Exception as exc:
                log.warning("idemsend: activity %r could not heartbeat (%s: %s); the send goes on without",
                            info.activity_type, type(exc).__name__, exc, extra={"code": "temporal_heartbeat"})
                return
            await asyncio.sleep(every)


def _refuse_run_id_template(engine: Engine) -> None:
    deriver = engine.deriver
    if isinstance(deriver, Template):
        check_template_fields(deriver.fields)


def _refuse_run_id_key(engine: Engine, job: Job, info: activity.Info) -> None:
    """Raise a non-retryable ``ApplicationError`` when the key holds the run id (nothing sent)."""
    try:
        key = engine.derive_key(job)
    except KeyDerivationError:
        return  # the send itself reports it, as a fatal KEY_DERIVATION
    if run_id_in_key(key, (info.workflow_run_id, info.activity_run_id)) is not None:
        raise ApplicationError(
            f"the key derived for job {job.id!r} holds this run's id; a workflow retried, reset or"
            " continued-as-new gets a new run id, so the key would change and the send could happen"
            " twice. Nothing was sent: derive the key from {job_id} (workflow id + activity id) and"
            " the job's data",
            type="RUN_ID_IN_KEY", non_retryable=True,
        )
