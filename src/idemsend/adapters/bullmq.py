"""BullMQ adapter (``pip install 'idemsend[bullmq]'``), for the ``bullmq`` Python ``Worker``.

```python
from bullmq import Queue
from idemsend import Engine
from idemsend.adapters.bullmq import BullMQAdapter

idem = BullMQAdapter(lambda: Engine(URL, key="welcome:{user_id}:{job_id}", api_key=KEY), max_tries=10)

async def send_welcome(job, token):                      # an ordinary BullMQ processor
    return await idem.send(job, {"user_id": job.data["user_id"]},
                           {"to": [job.data["email"]], "template": "welcome"})

# the worker process: one Engine, shared by every job, until `stop` (an asyncio.Event) is set
await idem.serve("emails", send_welcome, {"connection": REDIS_URL, "concurrency": 50}, stop=stop)

await Queue("emails", {"connection": REDIS_URL}).add(     # the producer
    "welcome", {"user_id": "u1", "email": "ada@example.com"}, idem.job_options(jobId="welcome-u1"))
```

``idem.serve(...)`` (or ``async with idem.worker(...) as worker:``) starts the Engine,
checks the worker's options against it, runs a ``bullmq.Worker`` and, at the end, closes
the worker (it waits for the jobs in flight) and then the Engine; ``serve`` also raises
RuntimeError when Redis does not answer at start (``connect_timeout``, 10 s) or BullMQ's
worker loop ends by itself, so the process exits and is restarted. The job
id is ``job.id``; the try number is ``job.attemptsMade + 1``.

The adapter kit's outcomes in BullMQ's terms:

* ``Succeeded`` -> the processor returns ``result_dict`` (BullMQ stores it as the job's
  ``returnvalue``).
* ``RetryIn(delay)`` -> the processor raises :class:`BullMQRetry`. BullMQ's own retry path
  (``Job.moveToFailed``: one of the job's ``attempts`` used, ``attemptsMade`` + 1, the
  reason kept as ``failedReason``) asks the worker's backoff strategy for the delay, and
  the adapter's strategy (:meth:`BullMQAdapter.backoff_strategy`, installed by
  :meth:`BullMQAdapter.worker_options`) reads it off the error: the provider's
  ``Retry-After``, else the adapter's exponential ``backoff``. The job waits in BullMQ's
  delayed set until then (rounded up to the next millisecond, plus one, so BullMQ's
  millisecond clocks never run it early).
* ``GiveUp`` (a ``FatalError``, or a ``RetryableError`` on the job's last attempt) ->
  ``bullmq.UnrecoverableError`` with the real reason: the job goes to ``failed`` at once,
  with that reason as its ``failedReason`` (not "max attempts reached"), and is never retried.

Every outcome other than success is also written to the job's log (``job.log``, one JSON
row per try, which dashboards show): the adapter kit's ``outcome_record`` (``state``
``retrying``, ``failed`` or ``fatal``, the reason or code, ``detail``, ``message``,
``maybe_sent``, ``attempt``, and ``delay`` for a retry), plus ``"idemsend"`` (the state
again, the row's marker) and ``attempts`` (the job's attempt budget).

**Attempts.** A BullMQ job gets the ``attempts`` it was added with (``job_options()`` sets
``max_tries``); without ``attempts`` BullMQ gives it one try, so a ``RetryableError``
fails it (the adapter warns once). A run cut short by a dead worker (the stalled-job
check) does not count as an attempt; BullMQ bounds those with ``maxStalledCount``, which
:meth:`BullMQAdapter.worker_options` sets to ``max_tries`` (BullMQ's default of 1 fails a
job whose worker died twice, sent or not). Add jobs with a ``jobId`` of your own
(``job_options()`` makes a random one otherwise): BullMQ's own ids count 1, 2, 3… per
queue and start again at 1 when the queue's keys are deleted, so a new job could be
answered with an old job's send.

**Stalled jobs and long sends.** A worker holds a lock on each job it runs
(``lockDuration``, 30 s) and renews it every ``lockRenewTime`` (half of it) while the job
runs, however long the send takes. The lock lapses only when the worker dies or cannot
reach Redis (or its event loop is blocked) for about ``lockDuration - lockRenewTime``;
then BullMQ's stalled-job check (every ``stalledInterval``) moves the job back to ``wait``
and another worker runs it. That second run is safe: the key is the same, so the first
run's ledger claim (or the provider's IN_FLIGHT) makes it wait and then replay the one
send. With renewal switched off (``lockRenewTime: 0``) every send longer than
``lockDuration`` would be run twice, so :meth:`BullMQAdapter.start` then requires
``lockDuration`` above ``engine.worst_case_send_time()``; it also refuses a renewal
period that does not fit inside the lock. See ``docs/adapters-bullmq.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from .._classify import MAX_RETRY_AFTER
from .._engine import Engine
from .._errors import ConfigError, MissingExtraError, RetryableError
from .._keys import Job
from .._log import fields
from .._redact import safe_url
from ._common import DEFAULT_MAX_TRIES, EngineFactory, check_factory
from ._holder import StartedEngine
from ._kit import GiveUp, QueueBackoff, RetryIn, Succeeded, adapter_backoff, check_tries, outcome_record, run_job

try:
    from bullmq import UnrecoverableError, Worker
except ImportError as exc:
    raise MissingExtraError("bullmq", "bullmq") from exc

__all__ = [
    "BACKOFF_TYPE",
    "CONNECT_TIMEOUT",
    "BullMQAdapter",
    "BullMQRetry",
    "Processor",
    "backoff_ms",
    "check_worker_options",
    "job_options",
]

log = logging.getLogger("idemsend.adapters.bullmq")

#: The job option ``backoff: {"type": BACKOFF_TYPE}``: BullMQ asks the worker's custom
#: backoff strategy (the adapter's) for the delay before each retry.
BACKOFF_TYPE = "idemsend"

#: BullMQ's defaults (milliseconds), for the checks at start.
_LOCK_DURATION = 30_000
_STALLED_INTERVAL = 30_000

#: Seconds ``serve`` waits for the worker's Redis to answer at start before it raises.
CONNECT_TIMEOUT = 10.0

#: A BullMQ processor: ``async def process(job, token) -> result``.
Processor = Callable[..., Awaitable[Any]]


def backoff_ms(delay: float) -> int:
    """``delay`` seconds as the whole milliseconds a BullMQ backoff strategy returns, never
    short: rounded up, plus one millisecond, because BullMQ rounds both the time the job
    failed and the time it is promoted to the nearest millisecond. A non-finite or
    too-long delay becomes ``MAX_RETRY_AFTER``; at least 1 ms (0 would retry at once)."""
    if not math.isfinite(delay) or delay > MAX_RETRY_AFTER:
        delay = MAX_RETRY_AFTER
    return max(1, math.ceil(max(delay, 0.0) * 1000) + 1)


def job_options(*, max_tries: int = DEFAULT_MAX_TRIES, **opts: Any) -> dict[str, Any]:
    """The options to add a job with: ``attempts=max_tries`` and ``backoff: {"type":
    "idemsend"}`` (the adapter's strategy), then ``opts`` (``jobId``, ``removeOnComplete``,
    …). Without a ``jobId`` a random one is made: BullMQ's counter ids are not safe as
    idempotency keys (they start again at 1 when the queue's keys are deleted)."""
    check_tries("max_tries", max_tries)
    out: dict[str, Any] = {"attempts": max_tries, "backoff": {"type": BACKOFF_TYPE}}
    out.update(opts)
    if not out.get("jobId"):
        out["jobId"] = uuid.uuid4().hex
    return out


class BullMQRetry(Exception):
    """What the processor raises for ``RetryIn``: BullMQ fails this try and asks the backoff
    strategy when to run the next one; the strategy reads ``delay`` (seconds) from here.
    ``str()`` is the real reason (BullMQ stores it as the job's ``failedReason``)."""

    def __init__(self, delay: float, error: RetryableError) -> None:
        super().__init__(str(error))
        self.delay = delay
        self.error = error


def _ms(opts: Mapping[str, Any], name: str, default: int) -> int:
    value = opts.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"the BullMQ worker option {name} must be a number of milliseconds >= 0, got {value!r}")
    return int(value)


def check_worker_options(opts: Mapping[str, Any], engine: Engine | None = None) -> None:
    """Check BullMQ worker options for idemsend (ConfigError when they are unsafe):

    * ``settings.backoffStrategy`` is set (``worker_options`` installs the adapter's), or
      BullMQ cannot compute the delay of an idemsend retry;
    * ``lockRenewTime`` (default ``lockDuration / 2``) is shorter than ``lockDuration``, so
      a job's lock is renewed before it lapses, however long the send runs;
    * with renewal off (``lockRenewTime: 0``), ``lockDuration`` outlasts the longest send
      (``engine.worst_case_send_time()``): otherwise the stalled-job check would hand every
      long send to a second worker while it runs.
    """
    settings = opts.get("settings") or {}
    if not isinstance(settings, Mapping) or not callable(settings.get("backoffStrategy")):
        raise ConfigError(
            "the BullMQ worker has no settings.backoffStrategy: build its options with"
            " adapter.worker_options(...) so idemsend retries wait as long as they must"
        )
    lock = _ms(opts, "lockDuration", _LOCK_DURATION)
    if lock <= 0:
        raise ConfigError(f"the BullMQ worker option lockDuration must be > 0 ms, got {lock}")
    renew = _ms(opts, "lockRenewTime", lock // 2)
    if _ms(opts, "stalledInterval", _STALLED_INTERVAL) <= 0:
        raise ConfigError("the BullMQ worker option stalledInterval must be > 0 ms")
    if renew >= lock:
        raise ConfigError(
            f"lockRenewTime ({renew} ms) must be shorter than lockDuration ({lock} ms): BullMQ renews a job's"
            " lock up to lockRenewTime after the last renewal, so it would lapse in between and the stalled-job"
            " check would give the job to a second worker while its send runs"
        )
    if renew == 0 and engine is not None:
        worst = engine.worst_case_send_time()
        if lock / 1000 <= worst:
            raise ConfigError(
                f"lockRenewTime=0 switches BullMQ's lock renewal off, so a job's lock lapses after lockDuration"
                f" ({lock / 1000:g} s) even while its send runs, and the stalled-job check runs it again; this"
                f" engine's sends can take up to {worst:g} s (engine.worst_case_send_time()): renew the lock"
                f" (the default) or make lockDuration longer than that"
            )
    max_stalled = opts.get("maxStalledCount", 1)
    if isinstance(max_stalled, int) and max_stalled < 1:
        log.warning(
            "maxStalledCount=%s: a job whose worker dies mid-send is failed, not resumed; idemsend makes"
            " resuming it safe, so allow at least 1", max_stalled,
        )


def _attempts(job: Any) -> int:
    value = (getattr(job, "opts", None) or {}).get("attempts")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 1
    return max(1, int(value))


def _redis_location(connection: Any) -> str:
    """Where a BullMQ ``connection`` option points, without its credentials: a URL's
    userinfo and query dropped, a dict or a redis-py client read as ``redis://host:port/db``."""
    if connection is None:
        return "redis://localhost:6379"
    if isinstance(connection, str):
        return safe_url(connection)
    if isinstance(connection, Mapping):
        kwargs: Mapping[str, Any] = connection
    else:
        kwargs = getattr(getattr(connection, "connection_pool", None), "connection_kwargs", None) or {}
        if not kwargs:
            return f"<{type(connection).__name__}>"
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


async def _reach(worker: Any, queue: str, connection: Any, timeout: float, stop: asyncio.Event) -> bool:
    """Wait for the worker's Redis to answer (True), or for ``stop`` (False); RuntimeError
    naming where Redis was looked for when it does not answer within ``timeout``."""
    backend = getattr(worker, "backend", None)
    ready = getattr(backend, "waitUntilReady", None) or getattr(getattr(worker, "client", None), "ping", None)
    if ready is None:  # a bullmq without either: its loop says so by ending
        return True
    answer = asyncio.ensure_future(ready())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({answer, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not answer.done():
            answer.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await answer
    if answer.done() and not answer.cancelled() and answer.exception() is None:
        return True
    if stop.is_set():
        return False
    error = None if not answer.done() or answer.cancelled() else answer.exception()
    reason = f"no answer within {timeout:g}s" if error is None else f"{type(error).__name__}: {error}"[:300]
    raise RuntimeError(
        f"the BullMQ worker of queue {queue!r} cannot reach Redis at {_redis_location(connection)} ({reason})"
    ) from error


async def _close_connections(worker: Any) -> None:
    close = getattr(getattr(worker, "backend", None), "close", None)
    if close is not None:
        try:
            await close()
        except Exception as exc:
            log.debug("closing the BullMQ worker's connections: %r", exc)


def _fatal_reason(code: str, error: BaseException) -> str:
    message = str(error)
    return message if message.startswith(code) else f"{code}: {message}"


class BullMQAdapter:
    """One Engine per BullMQ worker process, shared by every job, and the processor-side
    translation of each try's outcome into BullMQ's terms (see the module docstring).

    ``engine_factory`` makes the process's Engine; ``max_tries`` the attempts jobs are added
    with (``job_options()``); ``backoff`` (a ``QueueBackoff``) the delay between tries when
    the provider named none, or the shorthand ``retry_base=`` (its first delay)."""

    def __init__(
        self, engine_factory: EngineFactory, *, max_tries: int = DEFAULT_MAX_TRIES,
        backoff: QueueBackoff | None = None, retry_base: float | None = None,
    ) -> None:
        self.engine_factory = check_factory(engine_factory)
        self.max_tries = check_tries("max_tries", max_tries)
        self.backoff = adapter_backoff(backoff, retry_base=retry_base)
        self.retry_base = self.backoff.base
        self._engines = StartedEngine(engine_factory)
        self._other_strategy: Callable[..., int] | None = None
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"<BullMQAdapter max_tries={self.max_tries} backoff={self.backoff!r}>"

    # -- producer and worker options --------------------------------------------------------

    def job_options(self, **opts: Any) -> dict[str, Any]:
        """``job_options(max_tries=self.max_tries, **opts)``: what to add jobs with."""
        return job_options(max_tries=self.max_tries, **opts)

    def worker_options(self, opts: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """BullMQ ``Worker`` options: ``opts`` plus the adapter's backoff strategy
        (``settings.backoffStrategy``; a strategy already in ``opts`` still serves other
        backoff types) and ``maxStalledCount=max_tries`` unless ``opts`` sets it."""
        out = dict(opts or {})
        settings = dict(out.get("settings") or {})
        other = settings.get("backoffStrategy")
        if other is not None and other != self.backoff_strategy:
            self._other_strategy = other
        settings["backoffStrategy"] = self.backoff_strategy
        out["settings"] = settings
        out.setdefault("maxStalledCount", self.max_tries)
        return out

    def backoff_strategy(self, attempts_made: int, backoff_type: str | None, err: BaseException, job: Any) -> int:
        """BullMQ's custom backoff strategy (``settings.backoffStrategy``): the milliseconds
        until the next try. For a :class:`BullMQRetry` the delay it carries; for any other
        error of a job of ours the adapter's exponential backoff; other backoff types go to
        the strategy ``opts`` had, if any."""
        if isinstance(err, BullMQRetry):
            return backoff_ms(err.delay)
        if backoff_type != BACKOFF_TYPE and self._other_strategy is not None:
            return int(self._other_strategy(attempts_made, backoff_type, err, job))
        return backoff_ms(self.backoff.step(max(attempts_made, 1)))

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, worker_options: Mapping[str, Any]) -> Engine:
        """Make and start this process's Engine (once) and check ``worker_options`` (the
        options the ``Worker`` runs with) against it; ConfigError when they are unsafe (an
        Engine started for options that are refused is closed again)."""
        started = self._engines.engine
        engine = await self._engines.start(check=lambda engine: check_worker_options(worker_options, engine))
        if started is not None:
            check_worker_options(worker_options, engine)
        return engine

    async def close(self) -> None:
        """Close this process's Engine (after the worker: it waits for the jobs in flight)."""
        await self._engines.close()

    @property
    def engine(self) -> Engine:
        """This process's Engine (ConfigError before ``start``)."""
        return self._engines.require(
            "the idemsend Engine was not started: run the worker in `async with adapter.worker(...)`"
            " (or await adapter.start(worker_options) before the Worker takes jobs)"
        )

    @contextlib.asynccontextmanager
    async def worker(
        self, queue: str, processor: Processor, opts: Mapping[str, Any] | None = None
    ) -> AsyncIterator[Any]:
        """``async with adapter.worker("emails", process, {"connection": url}) as worker:``
        start the Engine, check the options, run a ``bullmq.Worker`` with
        ``worker_options(opts)``; on exit close the worker (waiting for the jobs in flight),
        then the Engine."""
        options = self.worker_options(opts)
        await self.start(options)
        try:
            worker = Worker(queue, processor, options)
        except BaseException:
            await self.close()
            raise
        # BullMQ drops its worker events unless someone listens: say what matters
        worker.on("stalled", lambda job_id, *_: log.warning(
            "BullMQ job %s stalled (its worker died or lost the lock): running it again", job_id,
            extra=fields(job_id=str(job_id)),
        ))
        worker.on("error", lambda error, *_: log.warning("BullMQ worker error: %r", error))
        try:
            yield worker
        finally:
            try:
                await worker.close()
            finally:
                await self.close()

    async def serve(
        self, queue: str, processor: Processor, opts: Mapping[str, Any] | None = None, *, stop: asyncio.Event,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        """Run one worker (as ``worker`` does) until ``stop`` is set, then close it gracefully
        (the jobs in flight finish, then the Engine closes). If the worker's Redis does not
        answer within ``connect_timeout`` seconds at start, or BullMQ's worker loop ends by
        itself (a bug), raise RuntimeError, so the process exits and its supervisor starts a
        fresh one instead of idling with no loop (BullMQ itself retries a refused connection
        for minutes)."""
        if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, int | float) or not (
            math.isfinite(connect_timeout) and connect_timeout > 0
        ):
            raise ConfigError(f"connect_timeout must be a number of seconds > 0, got {connect_timeout!r}")
        options = {**(opts or {}), "autorun": False}
        worker: Any = None
        run: asyncio.Future[Any] | None = None
        try:
            async with self.worker(queue, processor, options) as worker:
                if not await _reach(worker, queue, options.get("connection"), connect_timeout, stop):
                    return  # stopped before Redis answered
                run = asyncio.ensure_future(worker.run())
                stopping = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                if run.done():
                    error = None if run.cancelled() else run.exception()
                    raise RuntimeError(f"the BullMQ worker loop of queue {queue!r} ended by itself") from error
        finally:
            if run is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await run  # closing the worker ends its loop
            if worker is not None:
                # a loop that began after close() (a stop at once) names its connections
                # then, which opens them again: close them once it has ended
                await _close_connections(worker)

    # -- the processor side ----------------------------------------------------------------

    async def send(self, job: Any, data: Mapping[str, Any], body: Any) -> dict[str, Any]:
        """Send ``body`` for this BullMQ ``job`` (``data`` fills the key template) and return
        the result for the processor to return; raises ``BullMQRetry`` or
        ``UnrecoverableError`` otherwise (see the module docstring)."""
        engine = self.engine
        job_id = str(job.id)
        attempt = int(getattr(job, "attemptsMade", 0) or 0) + 1
        attempts = _attempts(job)
        self._warn_once(job_id, attempts)
        outcome = await run_job(
            engine, Job(job_id, data), body, attempt=attempt, max_attempts=attempts, queue="bullmq",
            backoff=self.backoff,
        )
        if not isinstance(outcome, Succeeded):
            await self._note(job, {"idemsend": outcome.state, **outcome_record(outcome, attempt=attempt),
                                   "attempts": attempts})
        match outcome:
            case Succeeded(result):
                return result
            case RetryIn(delay, error):
                backoff = job.opts.get("backoff")
                if not (isinstance(backoff, Mapping) and backoff.get("type") == BACKOFF_TYPE):
                    # added without the adapter's backoff (or with a built-in one): this
                    # retry must still wait as long as the provider asked
                    job.opts["backoff"] = {"type": BACKOFF_TYPE}
                raise BullMQRetry(delay, error) from error
            case GiveUp(error, retryable=True):
                raise UnrecoverableError(str(error)) from error
            case GiveUp(error):
                raise UnrecoverableError(_fatal_reason(outcome.code, error)) from error

    def _warn_once(self, job_id: str, attempts: int) -> None:
        if attempts == 1 and "attempts" not in self._warned:
            self._warned.add("attempts")
            log.warning(
                "BullMQ job %s was added with attempts=1 (or none): a retryable error fails it for good;"
                " add jobs with adapter.job_options()", job_id, extra=fields(job_id=job_id),
            )
        if job_id.isdigit() and "counter" not in self._warned:
            self._warned.add("counter")
            log.warning(
                "BullMQ job %s has a counter id: BullMQ starts those again at 1 when the queue's keys are"
                " deleted, and a new job with an old id would be answered with the old send; add jobs with"
                " a jobId of your own (adapter.job_options() makes one)", job_id, extra=fields(job_id=job_id),
            )

    @staticmethod
    async def _note(job: Any, record: Mapping[str, Any]) -> None:
        """One row in the job's log (what dashboards show); a failure to write it is logged
        and does not change the outcome."""
        try:
            await job.log(json.dumps(record, separators=(",", ":"), default=str))
        except Exception as exc:
            log.debug("could not write the BullMQ job log of %s: %r", job.id, exc, extra=fields(job_id=str(job.id)))
