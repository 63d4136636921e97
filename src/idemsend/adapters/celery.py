"""Celery adapter (``pip install 'idemsend[celery]'``).

```python
from celery import Celery
from idemsend import Engine
from idemsend.adapters.celery import CeleryAdapter

app = Celery("emails", broker="amqp://guest:guest@127.0.0.1:5672//", backend="redis://127.0.0.1:6379/1")
idem = CeleryAdapter(app, lambda: Engine(URL, key="welcome:{user_id}:{job_id}", api_key=KEY))

@idem.task(max_retries=9)        # app.task(bind=True, acks_late=True, reject_on_worker_lost=True, ...)
def send_welcome(self, user_id: str, email: str) -> dict:
    return idem.send(self, {"user_id": user_id}, {"to": [email], "template": "welcome"})

send_welcome.delay("u1", "ada@example.com")
```

``idem.send(self, data, body)`` is the whole integration and works in any bound task
(``@app.task(bind=True, acks_late=True, ...)``); ``idem.task`` is ``app.task`` with the
settings that make a Celery task at-least-once (see ``docs/adapters-celery.md``).

**One Engine per worker process.** Celery tasks are sync; the adapter runs the async engine
on one event loop per process (``ProcessLocalEngine``: a plain asyncio loop in a thread),
started when the worker process starts and closed when it stops, so every task of that
process shares one Engine and its pooled connections:

* prefork (the default): one Engine per pool process, started on ``worker_process_init``
  and closed on ``worker_process_shutdown``; the parent process never makes one (a child
  forked from a parent with a running loop would inherit its sockets).
* threads: one Engine for the worker, started on ``worker_init``, shared by the pool's
  threads (``Engine.send`` is safe to call concurrently), closed on ``worker_shutdown``.
* solo: the same, with one task at a time on the worker's main thread.
* gevent, eventlet: not supported (a monkey-patched process cannot host the engine's
  loop thread); the worker logs an error at start and ``send`` raises ``ConfigError``.

The start runs in a short-lived thread, so a slow ledger never holds up a pool process's
start (Celery kills a child that is not up within ``worker_proc_alive_timeout``); a start
that fails is logged and tried again by the first task.

The job id is ``request.id``: the task id, which ``Task.retry`` keeps for the new message
and a broker redelivery keeps too. The try number is ``request.retries + 1``, and the retry
budget is the task's ``max_retries`` (``None``: unlimited). The adapter kit's outcomes in
Celery's terms:

* ``Succeeded`` -> the task returns ``result_dict`` (state ``SUCCESS``).
* ``RetryIn(delay)`` -> ``raise self.retry(countdown=delay, exc=error)``: the provider's
  ``Retry-After``, else the adapter's ``backoff`` (exponential, capped).
  Celery republishes the task with the same id and ``retries + 1``; the worker that takes it
  holds it until its ETA, so it never runs early. If that republish fails (the broker is
  unreachable through the publish retry policy) Celery would drop the job
  (``Reject(requeue=False)``); the adapter requeues the message instead.
* ``GiveUp`` (a ``FatalError``, or a ``RetryableError`` on the last retry) -> raises
  :class:`SendFailed` chained to the real error: state ``FAILURE`` with the real reason
  (``code``, message, and whether the tries ran out) in the result backend, the
  ``task_failure`` signal, and the message acked, never redelivered. ``idem.task`` adds
  ``SendFailed`` to ``dont_autoretry_for``, so a task's ``autoretry_for=(Exception,)``
  cannot retry it.

``Reject(requeue=False)`` was the alternative for ``GiveUp``; it is not used because
Celery before 5.7 records nothing for a rejected task (its result stays ``PENDING``), and
a raised error is what Celery's dashboards, ``AsyncResult.get()`` and error trackers read.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .._engine import Engine
from .._errors import ConfigError, IdemsendError, MissingExtraError
from .._keys import Job
from ._common import DEFAULT_MAX_TRIES, EngineFactory, check_factory
from ._kit import GiveUp, QueueBackoff, RetryIn, Succeeded, adapter_backoff, run_job
from ._portal import ProcessLocalEngine

try:
    from celery import Celery, signals
    from celery.concurrency import get_implementation
    from celery.exceptions import Reject
except ImportError as exc:
    raise MissingExtraError("celery", "celery") from exc

__all__ = [
    "QUEUE",
    "CeleryAdapter",
    "SendFailed",
    "broker_problems",
    "pool_kind",
    "task_problems",
]

log = logging.getLogger("idemsend.adapters.celery")

#: The queue name the engine's logs and hooks see.
QUEUE = "celery"

#: Pools whose tasks run in the worker's own process (not in forked children).
_IN_PROCESS = frozenset({"solo", "threads"})
#: Celery's pool names (``--pool``), by kind.
_POOL_NAMES = {
    "prefork": "prefork", "processes": "prefork", "threads": "threads", "solo": "solo",
    "gevent": "gevent", "eventlet": "eventlet",
}
#: Pools the adapter refuses.
_GREEN = frozenset({"gevent", "eventlet"})
#: Broker schemes that hide a delivered message for ``visibility_timeout`` seconds, and
#: kombu's default for each.
_VISIBILITY = {"redis": 3600.0, "rediss": 3600.0, "sentinel": 3600.0, "sqs": 1800.0}


class SendFailed(IdemsendError):
    """The task gave up on its send: what Celery stores as its ``FAILURE``.

    ``code`` is the fatal code (``IDEMPOTENCY_MISMATCH``, ``VALIDATION_ERROR``, …) or, when
    the task's retries ran out on a retryable error, its reason (``retryable`` is then
    True). ``maybe_sent`` is the real error's: True when a request for the job's key may
    have run at the provider, so a job given up on is not known to be unsent. The real
    error is ``__cause__`` in the worker (``task_failure`` receivers, ``on_failure``, error
    trackers see both).

    The arguments are ``(message, code, retryable, maybe_sent)``, plain strings and bools:
    Celery's JSON result serializer stores them, and ``AsyncResult.result`` rebuilds this
    error from them in a process that imported this module (Celery looks the class up in
    ``sys.modules`` and never imports one); elsewhere it is an exception Celery makes up
    with the same name and ``args``. With the pickle serializer any process gets this error.
    """

    def __init__(self, message: str, code: str = "FATAL", retryable: bool = False, maybe_sent: bool = False) -> None:
        super().__init__(message, maybe_sent=maybe_sent)
        self.args = (message, code, retryable, maybe_sent)
        self.code = code
        self.retryable = retryable

    def __str__(self) -> str:
        return self.message


def pool_kind(pool_cls: object) -> str:
    """The kind of a Celery pool (``--pool`` name or class): ``prefork``, ``threads``,
    ``solo``, ``gevent``, ``eventlet``, or ``custom``."""
    if pool_cls is None:
        return "prefork"
    if isinstance(pool_cls, str) and pool_cls in _POOL_NAMES:  # without importing gevent or eventlet
        return _POOL_NAMES[pool_cls]
    try:
        cls = get_implementation(pool_cls)
    except Exception:
        return "custom"
    kind = {
        "celery.concurrency.prefork": "prefork",
        "celery.concurrency.thread": "threads",
        "celery.concurrency.solo": "solo",
        "celery.concurrency.gevent": "gevent",
        "celery.concurrency.eventlet": "eventlet",
    }.get(str(getattr(cls, "__module__", "")))
    return kind or "custom"


def task_problems(task: Any) -> list[str]:
    """What in one task's settings breaks at-least-once delivery or the outcome mapping
    (empty when nothing does)."""
    name = getattr(task, "name", repr(task))
    problems = []
    if not getattr(task, "acks_late", False):
        problems.append(
            f"task {name} runs with acks_late off: the broker forgets its message when the task starts, "
            "so a worker lost mid-send loses the job (nothing redelivers it). Set acks_late=True "
            "(task_acks_late, or use idem.task)."
        )
    elif not getattr(task, "reject_on_worker_lost", False) and not getattr(task, "retry_on_worker_lost", False):
        problems.append(
            f"task {name} runs with reject_on_worker_lost off: when a prefork pool process dies mid-task "
            "(OOM killer, SIGKILL) Celery marks the task FAILED with WorkerLostError and acks its message, "
            "so the job is lost. Set task_reject_on_worker_lost=True (or use idem.task)."
        )
    autoretry = tuple(getattr(task, "autoretry_for", ()) or ())
    dont = tuple(getattr(task, "dont_autoretry_for", ()) or ())
    if autoretry and issubclass(SendFailed, autoretry) and not (dont and issubclass(SendFailed, dont)):
        problems.append(
            f"task {name} has autoretry_for={autoretry!r}, which would retry a send the adapter gave up on "
            "(a fatal error, or the last retry): add SendFailed to dont_autoretry_for (idem.task does)."
        )
    return problems


def broker_problems(app: Any, worst_send: float, longest_countdown: float) -> list[str]:
    """What in the app's broker settings makes a send run twice at once: a Redis (or SQS)
    broker redelivers a message that is not acked within ``visibility_timeout``, and a
    worker holds a message while the task runs and while a retry waits for its ETA."""
    url = str(app.conf.broker_url or "").split(";")[0]
    scheme = urlsplit(url).scheme.split("+")[0].lower() if url else ""
    if scheme not in _VISIBILITY:
        return []
    options = app.conf.broker_transport_options or {}
    visibility = float(options.get("visibility_timeout", _VISIBILITY[scheme]))
    needed = worst_send + longest_countdown
    if visibility >= needed:
        return []
    return [
        f"the {scheme} broker's visibility_timeout ({visibility:g} s) is shorter than the longest send "
        f"(engine.worst_case_send_time() = {worst_send:g} s) plus the longest retry countdown "
        f"({longest_countdown:g} s): a task still running (or waiting for its ETA) is then delivered to "
        f"another worker as well. idemsend keeps that to one send, but the job runs twice; set "
        f"broker_transport_options={{'visibility_timeout': {needed:.0f}}} or more."
    ]


class CeleryAdapter:
    """Runs ``Engine.send`` in Celery tasks, on one Engine per worker process.

    Creating the adapter connects it to ``app``'s worker signals (``worker_init``,
    ``worker_process_init``, ``worker_process_shutdown``, ``worker_shutdown``), which start
    and close the process's Engine; nothing of Celery is patched. ``engine_factory`` makes
    each process's Engine; ``backoff`` (a ``QueueBackoff``) is the delay between tries when
    the provider named none, or the shorthand ``retry_base=`` (its first delay) and
    ``retry_cap=`` (its longest).
    """

    def __init__(
        self, app: Celery, engine_factory: EngineFactory, *, backoff: QueueBackoff | None = None,
        retry_base: float | None = None, retry_cap: float | None = None,
    ) -> None:
        if not isinstance(app, Celery):
            raise ConfigError(f"CeleryAdapter needs the Celery app, got {app!r}")
        self.app = app
        self.engine_factory = check_factory(engine_factory)
        self.backoff = adapter_backoff(backoff, retry_base=retry_base, retry_cap=retry_cap)
        self.engines = ProcessLocalEngine(engine_factory)
        #: the worker's pool kind, once this process (or its parent) saw ``worker_init``
        self.pool: str | None = None
        self._in_worker = False
        self._task_names: set[str] = set()
        self._checked: set[str] = set()
        self._engine_checked: int | None = None
        self._connect()

    def __repr__(self) -> str:
        return f"<CeleryAdapter app={self.app.main!r} pool={self.pool} {self.engines!r}>"

    # -- the task side ---------------------------------------------------------------------

    def task(self, fun: Callable[..., Any] | None = None, /, *, max_retries: int | None = DEFAULT_MAX_TRIES - 1,
             **options: Any) -> Any:
        """``app.task`` with at-least-once settings: ``bind=True`` (the function takes the
        task as ``self``), ``acks_late=True``, ``reject_on_worker_lost=True``, ``max_retries``
        (9 by default: 10 tries), and :class:`SendFailed` in ``dont_autoretry_for``. Other
        ``options`` pass through to ``app.task``. Use as ``@idem.task`` or ``@idem.task(...)``.
        """
        if options.get("bind", True) is not True:
            raise ConfigError("idem.task makes bound tasks: the function takes the task as its first argument")
        if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int)
                                        or max_retries < 0):
            raise ConfigError(f"max_retries must be an integer >= 0 or None, got {max_retries!r}")
        options["bind"] = True
        options.setdefault("acks_late", True)
        options.setdefault("reject_on_worker_lost", True)
        options["dont_autoretry_for"] = (*tuple(options.get("dont_autoretry_for", ())), SendFailed)

        def decorate(function: Callable[..., Any]) -> Any:
            name = options.get("name") or self.app.gen_task_name(function.__name__, function.__module__)
            self._task_names.add(name)
            return self.app.task(max_retries=max_retries, **options)(function)

        return decorate(fun) if fun is not None else decorate

    def send(self, task: Any, data: Mapping[str, Any], body: Any) -> dict[str, Any]:
        """Send ``body`` for the running task (pass the bound task, ``self``); ``data`` fills
        the key template. Returns the result dict, or raises Celery's ``Retry`` (via
        ``task.retry``) or :class:`SendFailed`."""
        request = getattr(task, "request", None)
        job_id = getattr(request, "id", None)
        if request is None or not job_id or getattr(request, "called_directly", True):
            raise ConfigError(
                "CeleryAdapter.send must run inside a Celery task: make it bind=True and pass it self"
            )
        if self.pool in _GREEN:
            raise ConfigError(f"the Celery {self.pool} pool is not supported: use prefork, threads or solo")
        self._check_task(task)
        attempt = int(request.retries or 0) + 1
        max_retries = task.max_retries
        max_attempts = None if max_retries is None else int(max_retries) + 1
        outcome = self.engines.call(lambda engine: run_job(
            engine, Job(str(job_id), data), body,
            attempt=attempt, max_attempts=max_attempts, queue=QUEUE, backoff=self.backoff,
        ))
        self._check_engine()
        match outcome:
            case Succeeded(result):
                return result
            case RetryIn(delay, error):
                try:
                    raise task.retry(countdown=delay, exc=error)
                except Reject as rejected:
                    if rejected.requeue:
                        raise
                    # Task.retry could not publish the retry and would drop the job: put the
                    # message back instead (a broker redelivery of this same try).
                    log.warning(
                        "celery task %s[%s]: the retry could not be published (%r); the message is requeued",
                        task.name, job_id, rejected.reason,
                    )
                    raise Reject(rejected.reason, requeue=True) from error
            case GiveUp(error, retryable=retryable):
                raise SendFailed(
                    str(error), code=outcome.code, retryable=retryable, maybe_sent=outcome.maybe_sent
                ) from error
        raise AssertionError(f"unexpected outcome {outcome!r}")  # pragma: no cover

    def engine(self) -> Engine:
        """This process's Engine, started (made on first use)."""
        return self.engines.engine()

    def close(self) -> None:
        """Close this process's Engine and stop its loop thread (the shutdown signals do)."""
        self.engines.close()

    # -- the worker side -------------------------------------------------------------------

    def _connect(self) -> None:
        signals.worker_init.connect(self._on_worker_init, weak=False)
        signals.worker_process_init.connect(self._on_process_init, weak=False)
        signals.worker_process_shutdown.connect(self._on_process_shutdown, weak=False)
        signals.worker_shutdown.connect(self._on_worker_shutdown, weak=False)

    def _ours(self, worker: Any) -> bool:
        """Whether ``worker`` (a signal's sender) runs this adapter's app."""
        return getattr(worker, "app", None) is self.app

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if not self._ours(sender):
            return
        self._in_worker = True
        self.pool = pool_kind(getattr(sender, "pool_cls", None))
        if self.pool in _GREEN:
            log.error("idemsend: the Celery %s pool is not supported (use prefork, threads or solo); "
                      "every send will fail with ConfigError", self.pool)
            return
        for name in sorted(self._task_names):
            task = self.app.tasks.get(name)
            if task is not None:
                self._check_task(task)
        if self.pool in _IN_PROCESS:
            self._start()

    def _on_process_init(self, **_: Any) -> None:
        if self._in_worker and self.pool not in _GREEN:
            self._start()

    def _on_process_shutdown(self, **_: Any) -> None:
        if self._in_worker:
            self.close()

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        if self._ours(sender):
            self.close()

    def _start(self) -> None:
        """Start this process's Engine in a short-lived thread (see the module docstring)."""

        def start() -> None:
            try:
                self.engines.engine()
            except Exception:
                log.warning("idemsend: the Engine did not start with the Celery worker process; "
                            "the first task tries again", exc_info=True)
                return
            self._check_engine()

        threading.Thread(target=start, name="idemsend-celery-start", daemon=True).start()

    def _check_task(self, task: Any) -> None:
        name = getattr(task, "name", None) or repr(task)
        if name in self._checked:
            return
        self._checked.add(name)
        for problem in task_problems(task):
            log.warning("idemsend: %s", problem)

    def _check_engine(self) -> None:
        if self._engine_checked == os.getpid():
            return
        self._engine_checked = os.getpid()
        engine = self.engines.engine()
        for problem in broker_problems(self.app, engine.worst_case_send_time(), self.backoff.cap * 1.25):
            log.warning("idemsend: %s", problem)
