"""The Celery adapter's translation of each outcome, on a stand-in for a bound task and on a
real Celery app run eagerly (no broker, no worker: ``test_celery_workers.py`` runs real ones)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("celery", reason="Celery is not installed here: it is tested in its own environment, nox -s celery")

from celery import Celery, signals
from celery.exceptions import Reject, Retry

from idemsend import ConfigError, Engine, FatalError, RetryableError
from idemsend.adapters.celery import CeleryAdapter, SendFailed, broker_problems, pool_kind, task_problems

from .._scripted import Queues, error, scripted

DATA, BODY = {"user_id": "u1"}, {"to": ["ada@example.com"]}


class FakeRequest:
    def __init__(self, retries: int) -> None:
        self.id = "task-1"
        self.retries = retries
        self.called_directly = False


class FakeTask:
    """What the adapter reads on a bound Celery task, and its ``retry``."""

    name = "emails.send_welcome"
    acks_late = True
    reject_on_worker_lost = True
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()

    def __init__(self, retries: int = 0, max_retries: int | None = 3) -> None:
        self.request = FakeRequest(retries)
        self.max_retries = max_retries
        self.retried: list[tuple[float, BaseException]] = []
        self.publish_error: Exception | None = None

    def retry(self, *, countdown: float, exc: BaseException) -> Retry:
        if self.publish_error is not None:  # what Task.retry does when the republish fails
            raise Reject(self.publish_error, requeue=False)
        self.retried.append((countdown, exc))
        raise Retry(exc=exc, when=countdown)


@pytest.fixture
def app() -> Celery:
    return Celery("unit", broker="memory://", backend="cache+memory://", set_as_current=False)


@pytest.fixture
def adapters() -> Iterator[list[CeleryAdapter]]:
    made: list[CeleryAdapter] = []
    yield made
    for adapter in made:
        adapter._in_worker = False  # the worker signals other tests send are not for this one
        adapter.close()


def make(app: Celery, adapters: list[CeleryAdapter], factory: Any, **kwargs: Any) -> CeleryAdapter:
    adapter = CeleryAdapter(app, factory, **kwargs)
    adapters.append(adapter)
    return adapter


# -- the outcome mapping ---------------------------------------------------------------------


def test_a_send_returns_the_result_dict(app: Celery, adapters: list[CeleryAdapter]) -> None:
    hook = Queues()
    adapter = make(app, adapters, scripted(hook=hook))
    result = adapter.send(FakeTask(retries=2), DATA, BODY)
    assert result["state"] == "sent" and result["key"] == "welcome:u1:task-1" and result["job_id"] == "task-1"
    assert hook.seen == [("celery", 3)]  # the try number is request.retries + 1


def test_a_retryable_error_retries_after_the_providers_retry_after(app: Celery, adapters: list[CeleryAdapter]) -> None:
    adapter = make(app, adapters, scripted(error(429, "SLOW", {"Retry-After": "7"})))
    task = FakeTask()
    with pytest.raises(Retry):
        adapter.send(task, DATA, BODY)
    [(countdown, exc)] = task.retried
    assert countdown == 7.0 and isinstance(exc, RetryableError)


def test_without_retry_after_the_countdown_is_the_capped_backoff(app: Celery, adapters: list[CeleryAdapter]) -> None:
    adapter = make(app, adapters, scripted(*[error(503, "DOWN")] * 3), retry_base=0.5, retry_cap=3.0)
    delays = []
    for retries in (0, 2, 9):
        task = FakeTask(retries=retries, max_retries=20)
        with pytest.raises(Retry):
            adapter.send(task, DATA, BODY)
        delays.append(task.retried[0][0])
    assert 0.5 <= delays[0] <= 0.5 * 1.25
    assert 2.0 <= delays[1] <= 2.0 * 1.25
    assert 3.0 <= delays[2] <= 3.0 * 1.25  # the cap, plus the jitter that only lengthens


def test_the_last_retry_fails_with_the_real_reason(app: Celery, adapters: list[CeleryAdapter]) -> None:
    adapter = make(app, adapters, scripted(error(503, "UNAVAILABLE")))
    task = FakeTask(retries=3, max_retries=3)  # the fourth try of max_retries=3
    with pytest.raises(SendFailed) as caught:
        adapter.send(task, DATA, BODY)
    assert task.retried == []
    assert caught.value.retryable and "503" in str(caught.value)
    assert isinstance(caught.value.__cause__, RetryableError)
    assert caught.value.maybe_sent is True and caught.value.__cause__.maybe_sent  # a 503 may follow a run
    assert caught.value.args[3] is True  # stored by the result backend with the rest


def test_a_fatal_error_fails_at_once_and_is_never_retried(app: Celery, adapters: list[CeleryAdapter]) -> None:
    adapter = make(app, adapters, scripted(error(422, "VALIDATION_ERROR")))
    task = FakeTask()
    with pytest.raises(SendFailed) as caught:
        adapter.send(task, DATA, BODY)
    assert task.retried == []
    assert caught.value.code == "VALIDATION_ERROR" and not caught.value.retryable
    assert isinstance(caught.value.__cause__, FatalError)
    assert caught.value.maybe_sent is False  # a validation error: nothing ran


def test_unlimited_retries_never_give_up(app: Celery, adapters: list[CeleryAdapter]) -> None:
    adapter = make(app, adapters, scripted(error(503, "DOWN")))
    task = FakeTask(retries=500, max_retries=None)
    with pytest.raises(Retry):
        adapter.send(task, DATA, BODY)


def test_a_retry_that_cannot_be_published_requeues_the_message(
    app: Celery, adapters: list[CeleryAdapter], caplog: pytest.LogCaptureFixture
) -> None:
    adapter = make(app, adapters, scripted(error(503, "DOWN")))
    task = FakeTask()
    task.publish_error = ConnectionError("broker down")
    with pytest.raises(Reject) as caught:
        adapter.send(task, DATA, BODY)
    assert caught.value.requeue is True  # Celery's own Reject(requeue=False) would drop the job
    assert "requeued" in caplog.text


def test_send_failed_survives_celerys_json_result_backend(app: Celery) -> None:
    backend = app.backend
    error = SendFailed("IDEMPOTENCY_MISMATCH: x", "IDEMPOTENCY_MISMATCH", False, True)
    stored = json.loads(json.dumps(backend.prepare_exception(error)))
    assert stored["exc_type"] == "SendFailed" and stored["exc_message"] == ["IDEMPOTENCY_MISMATCH: x",
                                                                          "IDEMPOTENCY_MISMATCH", False, True]
    back = backend.exception_to_python(stored)
    assert isinstance(back, SendFailed) and back.code == "IDEMPOTENCY_MISMATCH" and not back.retryable
    assert back.maybe_sent is True
    old = backend.exception_to_python({**stored, "exc_message": stored["exc_message"][:3]})  # stored by 0.2
    assert isinstance(old, SendFailed) and old.maybe_sent is False
    assert str(back) == "IDEMPOTENCY_MISMATCH: x"


def test_tasks_share_one_engine_per_process(app: Celery, adapters: list[CeleryAdapter]) -> None:
    made: list[Engine] = []
    factory = scripted()

    def counting() -> Engine:
        made.append(engine := factory())
        return engine

    adapter = make(app, adapters, counting)
    for retries in range(3):
        adapter.send(FakeTask(retries=retries), DATA, BODY)
    assert len(made) == 1 and adapter.engine() is made[0]


def test_outside_a_task_it_says_so(app: Celery, adapters: list[CeleryAdapter]) -> None:
    adapter = make(app, adapters, scripted())
    task = FakeTask()
    task.request.called_directly = True
    with pytest.raises(ConfigError, match="inside a Celery task"):
        adapter.send(task, DATA, BODY)


def test_green_pools_are_refused(app: Celery, adapters: list[CeleryAdapter]) -> None:
    adapter = make(app, adapters, scripted())
    adapter.pool = "gevent"
    with pytest.raises(ConfigError, match="gevent pool is not supported"):
        adapter.send(FakeTask(), DATA, BODY)


def test_the_adapter_needs_the_app() -> None:
    with pytest.raises(ConfigError, match="needs the Celery app"):
        CeleryAdapter("emails", scripted())  # type: ignore[arg-type]


# -- on a real Celery app, run eagerly -----------------------------------------------------------


def test_idem_task_makes_an_at_least_once_bound_task(app: Celery, adapters: list[CeleryAdapter]) -> None:
    adapter = make(app, adapters, scripted())

    @adapter.task(max_retries=4, autoretry_for=(Exception,), shared=False)
    def send_welcome(self: Any, user_id: str) -> dict[str, Any]:
        return adapter.send(self, {"user_id": user_id}, BODY)

    assert send_welcome.acks_late is True and send_welcome.reject_on_worker_lost is True
    assert send_welcome.max_retries == 4 and SendFailed in send_welcome.dont_autoretry_for
    assert task_problems(send_welcome) == []
    result = send_welcome.apply(("u7",), task_id="t-7")
    assert result.successful() and result.result["key"] == "welcome:u7:t-7"


def test_eager_retries_run_until_sent(app: Celery, adapters: list[CeleryAdapter]) -> None:
    hook = Queues()
    adapter = make(app, adapters, scripted(error(503, "DOWN"), error(503, "DOWN"), hook=hook))

    @adapter.task(shared=False)
    def send_welcome(self: Any) -> dict[str, Any]:
        return adapter.send(self, DATA, BODY)

    result = send_welcome.apply(task_id="t-retry")
    assert result.successful() and result.result["job_id"] == "t-retry"  # the id survives self.retry
    assert hook.seen == [("celery", 1), ("celery", 2), ("celery", 3)]


def test_autoretry_for_exception_cannot_retry_a_fatal(app: Celery, adapters: list[CeleryAdapter]) -> None:
    hook = Queues()
    adapter = make(app, adapters, scripted(*[error(422, "VALIDATION_ERROR")] * 5, hook=hook))

    @adapter.task(autoretry_for=(Exception,), max_retries=5, shared=False)
    def send_welcome(self: Any) -> dict[str, Any]:
        return adapter.send(self, DATA, BODY)

    result = send_welcome.apply(task_id="t-fatal")
    assert result.failed() and isinstance(result.result, SendFailed)
    assert result.result.code == "VALIDATION_ERROR"
    assert hook.seen == [("celery", 1)]  # tried once: no autoretry, no Celery retry


# -- the checks ----------------------------------------------------------------------------------


def test_task_problems_name_each_unsafe_setting() -> None:
    task = FakeTask()
    assert task_problems(task) == []
    task.acks_late = False
    assert "acks_late off" in task_problems(task)[0]
    task.acks_late, task.reject_on_worker_lost = True, False
    assert "reject_on_worker_lost off" in task_problems(task)[0]
    task.reject_on_worker_lost, task.autoretry_for = True, (Exception,)
    assert "dont_autoretry_for" in task_problems(task)[0]
    task.dont_autoretry_for = (SendFailed,)
    assert task_problems(task) == []


def test_broker_problems_compare_the_visibility_timeout_with_the_longest_send() -> None:
    redis = Celery("b", broker="redis://127.0.0.1:6379/0", set_as_current=False)
    assert broker_problems(redis, worst_send=100, longest_countdown=375) == []  # 3600 s by default
    redis.conf.broker_transport_options = {"visibility_timeout": 60}
    [problem] = broker_problems(redis, worst_send=100, longest_countdown=375)
    assert "visibility_timeout (60 s)" in problem and "'visibility_timeout': 475" in problem
    rabbit = Celery("b", broker="amqp://guest:guest@127.0.0.1:5672//", set_as_current=False)
    assert broker_problems(rabbit, worst_send=1e6, longest_countdown=1e6) == []


def test_pool_kinds() -> None:
    assert [pool_kind(p) for p in (None, "prefork", "threads", "solo", "gevent", "eventlet")] == [
        "prefork", "prefork", "threads", "solo", "gevent", "eventlet"]
    assert pool_kind("celery.concurrency.thread:TaskPool") == "threads"
    assert pool_kind("no.such:Pool") == "custom"


class FakeWorker:
    """What the ``worker_init`` / ``worker_shutdown`` receivers read off the WorkController."""

    def __init__(self, app: Celery, pool_cls: str) -> None:
        self.app, self.pool_cls = app, pool_cls


def wait_until_running(adapter: CeleryAdapter, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while "running" not in repr(adapter.engines):
        assert time.monotonic() < deadline, "the engine did not start"
        time.sleep(0.01)


def test_worker_start_checks_the_tasks_and_starts_the_engine_for_in_process_pools(
    app: Celery, adapters: list[CeleryAdapter], caplog: pytest.LogCaptureFixture
) -> None:
    adapter = make(app, adapters, scripted())

    @adapter.task(acks_late=False, shared=False)
    def unsafe(self: Any) -> None: ...

    worker = FakeWorker(app, "threads")
    with caplog.at_level(logging.WARNING, "idemsend.adapters.celery"):
        signals.worker_init.send(sender=worker)
    assert adapter.pool == "threads"
    assert "acks_late off" in caplog.text and unsafe.name in caplog.text
    wait_until_running(adapter)  # started at worker start, before any task
    signals.worker_shutdown.send(sender=worker)
    assert "idle" in repr(adapter.engines)


def test_a_prefork_parent_never_starts_an_engine_its_pool_processes_do(
    app: Celery, adapters: list[CeleryAdapter]
) -> None:
    adapter = make(app, adapters, scripted())
    other = make(Celery("other", set_as_current=False), adapters, scripted())
    signals.worker_init.send(sender=FakeWorker(app, "prefork"))
    time.sleep(0.2)
    assert "idle" in repr(adapter.engines)
    assert not any(t.name == "idemsend-celery-start" for t in threading.enumerate())
    signals.worker_process_init.send(sender="host")  # what each pool process sends at its start
    wait_until_running(adapter)
    assert "idle" in repr(other.engines)  # another app's adapter is not this worker's
    signals.worker_process_shutdown.send(sender="host", pid=0, exitcode=0)
    assert "idle" in repr(adapter.engines)


def test_a_green_pool_is_logged_as_unsupported_at_worker_start(
    app: Celery, adapters: list[CeleryAdapter], caplog: pytest.LogCaptureFixture
) -> None:
    adapter = make(app, adapters, scripted())
    with caplog.at_level(logging.ERROR, "idemsend.adapters.celery"):
        signals.worker_init.send(sender=FakeWorker(app, "gevent"))
    assert "gevent pool is not supported" in caplog.text
    assert "idle" in repr(adapter.engines)


def test_a_short_visibility_timeout_is_warned_about_once_per_process(
    adapters: list[CeleryAdapter], caplog: pytest.LogCaptureFixture
) -> None:
    app = Celery("short", broker="redis://127.0.0.1:6379/0", set_as_current=False)
    app.conf.broker_transport_options = {"visibility_timeout": 5}
    adapter = make(app, adapters, scripted(), retry_cap=10)
    with caplog.at_level(logging.WARNING, "idemsend.adapters.celery"):
        adapter.send(FakeTask(), DATA, BODY)
        adapter.send(FakeTask(), DATA, BODY)
    assert caplog.text.count("visibility_timeout (5 s)") == 1
