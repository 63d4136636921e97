"""``SQSConsumer``: an asyncio long-poll consumer on aiobotocore, for standard and FIFO queues.

One poller long-polls while there is room (``concurrency`` messages held at most); every
message it hands out gets a heartbeat that keeps it hidden while its send runs, then one try
through the adapter kit and one settling call (delete, or a visibility change). See the
package docstring for the outcome mapping, FIFO groups and shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Mapping
from typing import Any

from ..._engine import Engine
from ..._errors import ConfigError
from .._common import DEFAULT_MAX_TRIES, EngineFactory, check_factory
from .._holder import StartedEngine
from .._kit import QueueBackoff, adapter_backoff, check_tries
from ._held import SQS_ERRORS, ConsumerStats, Held, MessageCalls, brief
from ._message import (
    JOB_ID_ATTRIBUTE,
    MAX_VISIBILITY,
    Delete,
    GiveUpMode,
    Hide,
    OnOutcome,
    Parse,
    Reader,
    Settlement,
    SQSMessage,
    default_parse,
    settle,
    visibility_seconds,
)
from ._plan import MIN_HEARTBEAT_VISIBILITY, plan_queue
from ._shutdown import drain

try:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session
except ImportError as exc:  # pragma: no cover - the package __init__ checks first
    from ..._errors import MissingExtraError

    raise MissingExtraError("sqs", "aiobotocore") from exc

__all__ = ["MIN_HEARTBEAT_VISIBILITY", "ConsumerStats", "SQSConsumer"]

log = logging.getLogger("idemsend.adapters.sqs")

#: SQS's longest long poll, seconds.
MAX_WAIT_TIME = 20


class SQSConsumer:
    """Long-polls one SQS queue and sends each message's job through one Engine.

    ```python
    consumer = SQSConsumer(lambda: Engine(URL, key="welcome:{user_id}:{job_id}", api_key=KEY),
                           queue_url=QUEUE_URL, concurrency=20)
    await consumer.run()            # until consumer.stop() (a SIGTERM handler), then drains
    ```

    Arguments (keyword-only but the first two):

    * ``engine_factory``: makes the one Engine of this consumer (started and closed by ``run``).
    * ``queue_url``: the queue (standard or FIFO: read from its ``FifoQueue`` attribute).
    * ``concurrency``: messages held at once (running, or waiting behind their FIFO group's head).
    * ``wait_time``: the long poll, seconds (0 to 20).
    * ``visibility_timeout``: seconds a received message stays hidden, and each heartbeat's
      extension (default: the queue's ``VisibilityTimeout``).
    * ``heartbeat``: seconds between visibility extensions while a message is held (default:
      a third of the visibility timeout; 0: none, then the visibility timeout must cover
      ``engine.worst_case_send_time()``, checked at start).
    * ``max_attempts``: receives (``ApproximateReceiveCount``) after which a retryable error
      gives up (default 10, or the redrive policy's ``maxReceiveCount`` when smaller).
    * ``backoff``: the delay between tries when the provider named none (a ``QueueBackoff``),
      or the shorthand ``retry_base``: its first delay.
    * ``give_up``: ``"delete"`` (record, then delete) or ``"redrive"`` (release it, so the
      queue's redrive policy moves it to the dead-letter queue; the queue must have one).
    * ``shutdown_timeout``: seconds ``run`` lets running sends finish after ``stop()``;
      what is still running then is cancelled and released (visibility 0).
    * ``on_outcome``: ``async (SQSOutcome) -> None``, told every try before the message is
      settled (a results store, metrics); if it raises, the message is retried later.
    * ``parse``, ``job_id_attribute``: how a message becomes a job (see the package docs).
    * ``client``: an aiobotocore SQS client to use (not closed here); else one is made from
      ``region_name``, ``endpoint_url`` and the usual AWS environment.

    After start, ``ready`` is set and ``visibility``, ``heartbeat_every``, ``fifo`` and
    ``max_attempts`` hold what the queue and the options came to; ``stats`` counts calls.
    """

    def __init__(
        self,
        engine_factory: EngineFactory,
        queue_url: str,
        *,
        concurrency: int = 10,
        wait_time: int = MAX_WAIT_TIME,
        visibility_timeout: int | None = None,
        heartbeat: float | None = None,
        max_attempts: int | None = None,
        backoff: QueueBackoff | None = None,
        retry_base: float | None = None,
        give_up: GiveUpMode = "delete",
        shutdown_timeout: float = 25.0,
        on_outcome: OnOutcome | None = None,
        parse: Parse = default_parse,
        job_id_attribute: str | None = JOB_ID_ATTRIBUTE,
        client: Any = None,
        region_name: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        _check_options(queue_url, wait_time, visibility_timeout, heartbeat, shutdown_timeout, give_up, on_outcome)
        self.engine_factory = check_factory(engine_factory)
        self.queue_url = queue_url
        self.concurrency = check_tries("concurrency", concurrency)
        self.wait_time = wait_time
        self.visibility_timeout = visibility_timeout
        self.heartbeat = heartbeat
        self.requested_max_attempts = None if max_attempts is None else check_tries("max_attempts", max_attempts)
        self.backoff = adapter_backoff(backoff, retry_base=retry_base)
        self.give_up: GiveUpMode = give_up
        self.shutdown_timeout = float(shutdown_timeout)
        self.on_outcome = on_outcome
        self.region_name = region_name
        self.endpoint_url = endpoint_url
        self.reader = Reader(
            parse=parse, job_id_attribute=job_id_attribute, max_attempts=DEFAULT_MAX_TRIES, backoff=self.backoff,
        )
        self.stats = ConsumerStats()
        #: set once the consumer has checked the queue and started polling
        self.ready = asyncio.Event()
        # what start() resolves
        self.visibility = 0
        self.heartbeat_every = 0.0
        self.fifo = queue_url.endswith(".fifo")
        self.max_attempts = DEFAULT_MAX_TRIES
        self.redrive_policy: Mapping[str, Any] | None = None
        self._client = client
        self._engines = StartedEngine(engine_factory)
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._room = asyncio.Event()
        self._held = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._calls: MessageCalls | None = None
        self._poll_ends = 0.0  # loop.time() by which the long poll under way ends at SQS
        self._system_names = "MessageSystemAttributeNames"
        self._running = False
        self._ran = False

    def __repr__(self) -> str:
        return (
            f"<SQSConsumer {self.queue_url} concurrency={self.concurrency} held={self._held}"
            f" {'stopping' if self._stopping.is_set() else 'running' if self._running else 'idle'}>"
        )

    @property
    def engine(self) -> Engine:
        """The running consumer's Engine (ConfigError before ``run`` starts it)."""
        return self._engines.require("the SQSConsumer is not running: await consumer.run()")

    def job_id(self, message: SQSMessage) -> str:
        """The job id of ``message``: its ``job_id_attribute``, else its ``MessageId``."""
        return self.reader.job_id(message)

    def stop(self) -> None:
        """Ask ``run`` to shut down: poll no more, let the poll and the sends under way
        finish (for ``shutdown_timeout`` seconds), then release what is left. A second call
        does not wait: what runs is cancelled and released at once. Call it on the consumer's
        loop (a ``loop.add_signal_handler`` callback), or through ``loop.call_soon_threadsafe``."""
        if self._stopping.is_set():
            self._hurry.set()
        self._stopping.set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Start the Engine (and the client), check the queue, consume until ``stop()``,
        then drain and close. Raises ConfigError when the queue and the options disagree."""
        if self._ran:
            raise ConfigError("an SQSConsumer runs once: make a new one")
        self._ran = self._running = True
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self._client is None:
                    client = await stack.enter_async_context(self._make_client())
                else:
                    client = self._client
                engine = await self._engines.start()
                stack.push_async_callback(self._engines.close)
                calls = await self._prepare(client, engine)
                await self._consume(calls)
        finally:
            self._running = False

    def _make_client(self) -> Any:
        config = AioConfig(
            max_pool_connections=self.concurrency + 4, connect_timeout=10, read_timeout=self.wait_time + 15,
            retries={"mode": "standard", "max_attempts": 3},
        )
        return get_session().create_client(
            "sqs", region_name=self.region_name, endpoint_url=self.endpoint_url, config=config
        )

    async def _prepare(self, client: Any, engine: Engine) -> MessageCalls:
        answer = await client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["All"])
        worst = engine.worst_case_send_time()
        plan = plan_queue(
            self.queue_url, answer.get("Attributes", {}), visibility_timeout=self.visibility_timeout,
            heartbeat=self.heartbeat, give_up=self.give_up, max_attempts=self.requested_max_attempts,
            worst_send=worst,
        )
        self.fifo, self.visibility, self.heartbeat_every = plan.fifo, plan.visibility, plan.heartbeat_every
        self.redrive_policy, self.max_attempts = plan.redrive_policy, plan.max_attempts
        self.reader.max_attempts = self.max_attempts
        operation = client.meta.service_model.operation_model("ReceiveMessage")
        if "MessageSystemAttributeNames" not in operation.input_shape.members:  # an older botocore
            self._system_names = "AttributeNames"
        log.debug(
            "consuming %s: fifo=%s visibility=%ss heartbeat=%.1fs max_attempts=%s give_up=%s worst send %.0fs",
            self.queue_url, self.fifo, self.visibility, self.heartbeat_every, self.max_attempts, self.give_up, worst,
        )
        self._calls = MessageCalls(
            client, self.queue_url, self.stats, visibility=plan.visibility, heartbeat_every=plan.heartbeat_every,
            heartbeat_span=plan.heartbeat_span,
        )
        return self._calls

    async def _consume(self, calls: MessageCalls) -> None:
        poller = asyncio.create_task(self._poll(calls))
        stopper = asyncio.create_task(self._stopping.wait())
        self.ready.set()
        try:
            await asyncio.wait({poller, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stopping.set()
            stopper.cancel()
            await drain(poller, self._tasks, hurry=self._hurry, timeout=self.shutdown_timeout,
                        poll_ends=lambda: self._poll_ends)
        error = None if poller.cancelled() else poller.exception()
        if error is not None:
            raise error

    # -- receiving ---------------------------------------------------------------------------

    async def _poll(self, calls: MessageCalls) -> None:
        client = calls.client
        failures = 0
        while not self._stopping.is_set():
            room = self.concurrency - self._held
            if room <= 0:
                self._room.clear()
                waiter = asyncio.create_task(self._room.wait())
                stopper = asyncio.create_task(self._stopping.wait())
                try:
                    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    stopper.cancel()
                continue
            self._poll_ends = asyncio.get_running_loop().time() + self.wait_time
            try:
                answer = await client.receive_message(**{
                    "QueueUrl": self.queue_url, "MaxNumberOfMessages": min(10, room),
                    "WaitTimeSeconds": self.wait_time, "VisibilityTimeout": self.visibility,
                    self._system_names: ["All"], "MessageAttributeNames": ["All"],
                })
            except SQS_ERRORS as exc:
                failures += 1
                self.stats.failed_calls += 1
                pause = min(30.0, 2.0 ** min(failures, 5) / 4) * (1 + random.random() / 4)
                log.warning("SQS ReceiveMessage failed (%s); polling again in %.1fs", brief(exc), pause)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
                continue
            failures = 0
            messages = [SQSMessage.from_api(raw) for raw in answer.get("Messages", [])]
            if messages and self._stopping.is_set():  # the poll outlived stop(): hand them back
                self.stats.received += len(messages)
                await calls.release([Held(message) for message in messages])
            elif messages:
                self._dispatch(calls, messages)
            elif self.wait_time == 0:  # short polling an empty queue: do not spin
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)

    def _dispatch(self, calls: MessageCalls, messages: list[SQSMessage]) -> None:
        self.stats.received += len(messages)
        held = [calls.hold(message) for message in messages]  # each one's heartbeat starts now
        self._held += len(held)
        if self.fifo:  # one task per message group: its messages in order, one at a time
            groups: dict[str | None, list[Held]] = {}
            for one in held:
                groups.setdefault(one.message.group_id, []).append(one)
            runs = list(groups.values())
        else:
            runs = [[one] for one in held]
        for run in runs:
            task = asyncio.create_task(self._run(calls, run))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SQS message task failed", exc_info=task.exception())

    def _done(self, held: Held) -> None:
        if held.counted:
            held.counted = False
            self._held -= 1
            self._room.set()

    # -- one run: a message, or a FIFO group's messages in order -----------------------------

    async def _run(self, calls: MessageCalls, run: list[Held]) -> None:
        try:
            for index, held in enumerate(run):
                if index and self._stopping.is_set():
                    break  # shutting down: a FIFO group's later messages are released, not started
                settlement = await self._try(calls, held)
                self._done(held)
                if not isinstance(settlement, Delete):
                    # FIFO: the head comes back later (a retry, or the redrive policy), and the
                    # rest of its group must not run before it: release them behind it
                    break
        except asyncio.CancelledError:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(calls.release(run))
            raise
        else:
            await calls.release(run)
        finally:
            for held in run:
                self._done(held)

    async def _try(self, calls: MessageCalls, held: Held) -> Settlement:
        message = held.message
        try:
            tried = await self.reader.run(self.engine, message)
        except Exception:  # not an outcome (ConfigError, a bug): the queue's own retry applies
            log.exception("SQS message %s: the send raised; it comes back after the backoff", message.message_id)
            settlement: Settlement = Hide(visibility_seconds(self.backoff.step(message.receive_count or 1)))
        else:
            settlement = settle(tried.outcome, give_up=self.give_up, elapsed=message.elapsed())
            if self.on_outcome is not None:
                try:
                    await self.on_outcome(tried)
                except Exception:
                    log.exception(
                        "SQS message %s: on_outcome failed; the message is kept and runs again after the backoff",
                        message.message_id,
                    )
                    settlement = Hide(visibility_seconds(self.backoff.step(message.receive_count or 1)))
        await calls.settle(held, settlement)
        return settlement


def _check_options(
    queue_url: object, wait_time: object, visibility_timeout: object, heartbeat: object, shutdown_timeout: object,
    give_up: object, on_outcome: object,
) -> None:
    """``ConfigError`` naming the first of ``SQSConsumer``'s options that is out of range."""
    if not isinstance(queue_url, str) or not queue_url:
        raise ConfigError(f"queue_url must be the queue's URL, got {queue_url!r}")
    if isinstance(wait_time, bool) or not isinstance(wait_time, int) or not 0 <= wait_time <= MAX_WAIT_TIME:
        raise ConfigError(f"wait_time must be whole seconds from 0 to {MAX_WAIT_TIME}, got {wait_time!r}")
    if visibility_timeout is not None and (
        isinstance(visibility_timeout, bool) or not isinstance(visibility_timeout, int)
        or not 1 <= visibility_timeout <= MAX_VISIBILITY
    ):
        raise ConfigError(
            f"visibility_timeout must be whole seconds from 1 to {MAX_VISIBILITY}, got {visibility_timeout!r}"
        )
    if heartbeat is not None and not _seconds(heartbeat, zero=True):
        raise ConfigError(f"heartbeat must be a number of seconds >= 0, got {heartbeat!r}")
    if not _seconds(shutdown_timeout, zero=True):
        raise ConfigError(f"shutdown_timeout must be a number of seconds >= 0, got {shutdown_timeout!r}")
    if give_up not in ("delete", "redrive"):
        raise ConfigError(f'give_up must be "delete" or "redrive", got {give_up!r}')
    if on_outcome is not None and not callable(on_outcome):
        raise ConfigError(f"on_outcome must be an async callable, got {on_outcome!r}")


def _seconds(value: object, *, zero: bool = False) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        and (value >= 0 if zero else value > 0)
    )
