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
from dataclasses import dataclass
from typing import Any

from ..._engine import Engine
from ..._errors import ConfigError
from .._common import DEFAULT_MAX_TRIES, EngineFactory, check_factory
from .._holder import StartedEngine
from .._kit import QueueBackoff, adapter_backoff, check_tries
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

try:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError as exc:  # pragma: no cover - the package __init__ checks first
    from ..._errors import MissingExtraError

    raise MissingExtraError("sqs", "aiobotocore") from exc

__all__ = ["ConsumerStats", "SQSConsumer"]

log = logging.getLogger("idemsend.adapters.sqs")

#: SQS's longest long poll, seconds.
MAX_WAIT_TIME = 20
#: The shortest visibility timeout a heartbeat can keep ahead of (it beats every third of it).
MIN_HEARTBEAT_VISIBILITY = 3
# SQS counts the 12 h limit from its own receive, a little before this process saw the
# message: extensions stop this much short of it.
_LIMIT_MARGIN = 30.0
_SQS_ERRORS = (BotoCoreError, ClientError)
# How long past its wait a long poll may take to answer (the clocks, the network).
_POLL_MARGIN = 5.0


@dataclass
class ConsumerStats:
    """Counters of one consumer's calls to SQS (for logs, dashboards and tests)."""

    received: int = 0
    deleted: int = 0
    retried: int = 0  # hidden for a retry delay (ChangeMessageVisibility > 0)
    released: int = 0  # visibility 0: redrive, a FIFO group's tail, shutdown
    extended: int = 0  # heartbeat extensions
    failed_calls: int = 0  # SQS calls that failed (each logged)


class _Held:
    """A message this consumer holds, from its receive until it is settled."""

    __slots__ = ("counted", "heartbeat", "message", "settled", "stop")

    def __init__(self, message: SQSMessage) -> None:
        self.message = message
        self.settled = False
        self.counted = True  # it takes a slot until ``_done``
        self.stop = asyncio.Event()
        self.heartbeat: asyncio.Task[None] | None = None


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
        self._heartbeat_span = math.inf
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
                await self._prepare(client, engine)
                await self._consume(client)
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

    async def _prepare(self, client: Any, engine: Engine) -> None:
        answer = await client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["All"])
        attributes: Mapping[str, str] = answer.get("Attributes", {})
        self.fifo = attributes.get("FifoQueue") == "true" or self.queue_url.endswith(".fifo")
        self.visibility = self.visibility_timeout or int(attributes.get("VisibilityTimeout", "30"))
        worst = engine.worst_case_send_time()
        every = self.visibility / 3 if self.heartbeat is None else float(self.heartbeat)
        if every > 0:
            if self.visibility < MIN_HEARTBEAT_VISIBILITY:
                raise ConfigError(
                    f"a visibility timeout of {self.visibility}s is too short to keep ahead of: use at least"
                    f" {MIN_HEARTBEAT_VISIBILITY}s"
                )
            if every > self.visibility / 2:
                raise ConfigError(
                    f"heartbeat={every:g}s cannot keep a message hidden {self.visibility}s at a time: beat at most"
                    f" every {self.visibility / 2:g}s (the default is a third of the visibility timeout)"
                )
            # a send ends within worst_case_send_time (its ledger calls aside): a message
            # held much longer belongs to a wedged send, and is let go back to the queue
            self._heartbeat_span = worst + 2 * self.visibility + 60
        elif self.visibility < worst:
            raise ConfigError(
                f"without a heartbeat the visibility timeout ({self.visibility}s) must cover the longest send"
                f" (engine.worst_case_send_time() = {worst:.0f}s), or the message reappears mid-send: raise the"
                f" queue's VisibilityTimeout, pass visibility_timeout=, or leave the heartbeat on"
            )
        self.heartbeat_every = every
        self.redrive_policy = _redrive_policy(attributes.get("RedrivePolicy"))
        self.max_attempts = self._resolve_max_attempts()
        self.reader.max_attempts = self.max_attempts
        operation = client.meta.service_model.operation_model("ReceiveMessage")
        if "MessageSystemAttributeNames" not in operation.input_shape.members:  # an older botocore
            self._system_names = "AttributeNames"
        log.debug(
            "consuming %s: fifo=%s visibility=%ss heartbeat=%.1fs max_attempts=%s give_up=%s worst send %.0fs",
            self.queue_url, self.fifo, self.visibility, every, self.max_attempts, self.give_up, worst,
        )

    def _resolve_max_attempts(self) -> int:
        requested = self.requested_max_attempts
        limit = None if self.redrive_policy is None else int(self.redrive_policy["maxReceiveCount"])
        if self.give_up == "redrive":
            if limit is None:
                raise ConfigError(
                    'give_up="redrive" leaves given-up messages to the queue\'s redrive policy, and this queue has'
                    ' none: set a RedrivePolicy (deadLetterTargetArn, maxReceiveCount) or use give_up="delete"'
                )
            requested = limit if requested is None else requested
        elif requested is None:
            requested = DEFAULT_MAX_TRIES if limit is None else min(DEFAULT_MAX_TRIES, limit)
        if limit is not None and requested > limit:
            raise ConfigError(
                f"max_attempts={requested} is more receives than the queue's redrive policy allows"
                f" (maxReceiveCount={limit}): the message would go to the dead-letter queue before its last try"
            )
        return requested

    async def _consume(self, client: Any) -> None:
        poller = asyncio.create_task(self._poll(client))
        stopper = asyncio.create_task(self._stopping.wait())
        self.ready.set()
        try:
            await asyncio.wait({poller, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stopping.set()
            stopper.cancel()
            await self._drain(poller)
        error = None if poller.cancelled() else poller.exception()
        if error is not None:
            raise error

    async def _drain(self, poller: asyncio.Task[None]) -> None:
        """Until ``shutdown_timeout`` (or a second ``stop()``): the long poll under way
        finishes (what it brings is released at once) and running sends finish. Then what
        is left is cancelled, and every message not settled is released (visibility 0)."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + self.shutdown_timeout
        hurry = asyncio.create_task(self._hurry.wait())
        try:
            while not self._hurry.is_set():
                waiting = {task for task in (poller, *self._tasks) if not task.done()}
                left = deadline - loop.time()
                if not waiting or left <= 0:
                    break
                await asyncio.wait({*waiting, hurry}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()
            await self._cut_off(poller, began)

    async def _cut_off(self, poller: asyncio.Task[None], began: float) -> None:
        """Cancel the runs still going (each releases its messages), then end the poll.

        A long poll abandoned client-side stays open at SQS until its wait ends, and SQS
        hands it what is released meanwhile, in flight for a whole visibility timeout with
        no consumer left. So the poll is not cancelled while the released messages could
        reach it: it is let end on its own (it brings them back at once, and they are
        released again), and cancelled only past the end of its wait."""
        loop = asyncio.get_running_loop()
        runs = {task for task in self._tasks if not task.done()}
        for task in runs:
            task.cancel()
        if runs:
            log.warning("shutdown: %d message run(s) still going after %.1fs: cancelled, their messages released",
                        len(runs), loop.time() - began)
            await asyncio.wait(runs)
            if not poller.done():
                await asyncio.wait({poller}, timeout=max(0.0, self._poll_ends - loop.time()) + _POLL_MARGIN)
        if not poller.done():
            poller.cancel()
            await asyncio.wait({poller})

    # -- receiving ---------------------------------------------------------------------------

    async def _poll(self, client: Any) -> None:
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
            except _SQS_ERRORS as exc:
                failures += 1
                self.stats.failed_calls += 1
                pause = min(30.0, 2.0 ** min(failures, 5) / 4) * (1 + random.random() / 4)
                log.warning("SQS ReceiveMessage failed (%s); polling again in %.1fs", _brief(exc), pause)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
                continue
            failures = 0
            messages = [SQSMessage.from_api(raw) for raw in answer.get("Messages", [])]
            if messages and self._stopping.is_set():  # the poll outlived stop(): hand them back
                self.stats.received += len(messages)
                await self._release(client, [_Held(message) for message in messages])
            elif messages:
                self._dispatch(client, messages)
            elif self.wait_time == 0:  # short polling an empty queue: do not spin
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)

    def _dispatch(self, client: Any, messages: list[SQSMessage]) -> None:
        self.stats.received += len(messages)
        held = [_Held(message) for message in messages]
        self._held += len(held)
        for one in held:
            if self.heartbeat_every > 0:
                one.heartbeat = asyncio.create_task(self._beat(client, one))
        if self.fifo:  # one task per message group: its messages in order, one at a time
            groups: dict[str | None, list[_Held]] = {}
            for one in held:
                groups.setdefault(one.message.group_id, []).append(one)
            runs = list(groups.values())
        else:
            runs = [[one] for one in held]
        for run in runs:
            task = asyncio.create_task(self._run(client, run))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SQS message task failed", exc_info=task.exception())

    def _done(self, held: _Held) -> None:
        if held.counted:
            held.counted = False
            self._held -= 1
            self._room.set()

    # -- one run: a message, or a FIFO group's messages in order -----------------------------

    async def _run(self, client: Any, run: list[_Held]) -> None:
        try:
            for index, held in enumerate(run):
                if index and self._stopping.is_set():
                    break  # shutting down: a FIFO group's later messages are released, not started
                settlement = await self._try(client, held)
                self._done(held)
                if not isinstance(settlement, Delete):
                    # FIFO: the head comes back later (a retry, or the redrive policy), and the
                    # rest of its group must not run before it: release them behind it
                    break
        except asyncio.CancelledError:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._release(client, run))
            raise
        else:
            await self._release(client, run)
        finally:
            for held in run:
                self._done(held)

    async def _release(self, client: Any, run: list[_Held]) -> None:
        await asyncio.gather(*(self._settle(client, held, Hide(0)) for held in run if not held.settled))

    async def _try(self, client: Any, held: _Held) -> Settlement:
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
        await self._settle(client, held, settlement)
        return settlement

    async def _settle(self, client: Any, held: _Held, settlement: Settlement) -> None:
        await self._stop_heartbeat(held)
        message = held.message
        try:
            if isinstance(settlement, Delete):
                await client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message.receipt_handle)
                self.stats.deleted += 1
            else:
                await client.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=message.receipt_handle,
                    VisibilityTimeout=settlement.seconds,
                )
                if settlement.seconds:
                    self.stats.retried += 1
                else:
                    self.stats.released += 1
        except _SQS_ERRORS as exc:
            self.stats.failed_calls += 1
            what = "delete" if isinstance(settlement, Delete) else f"set the visibility ({settlement.seconds}s) of"
            log.warning(
                "could not %s SQS message %s (%s): it comes back after its visibility timeout, and runs again"
                " (the ledger or the provider answers it)", what, message.message_id, _brief(exc),
            )
        finally:
            held.settled = True

    # -- the heartbeat -----------------------------------------------------------------------

    async def _beat(self, client: Any, held: _Held) -> None:
        """Keep ``held`` hidden while this consumer holds it: every ``heartbeat_every``
        seconds, hide it ``visibility`` seconds more from now."""
        message = held.message
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(held.stop.wait(), self.heartbeat_every)
                return
            elapsed = message.elapsed()
            seconds = min(self.visibility, visibility_seconds(self.visibility, elapsed + _LIMIT_MARGIN))
            if elapsed > self._heartbeat_span or seconds <= 0:
                log.error(
                    "SQS message %s held %.0fs, past the longest send (%.0fs) or SQS's 12 h limit: no longer"
                    " extending its visibility, so it goes back to the queue", message.message_id, elapsed,
                    self._heartbeat_span,
                )
                return
            try:
                await client.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=seconds,
                )
                self.stats.extended += 1
            except _SQS_ERRORS as exc:
                self.stats.failed_calls += 1
                log.warning("could not extend the visibility of SQS message %s (%s)", message.message_id,
                            _brief(exc))

    async def _stop_heartbeat(self, held: _Held) -> None:
        """Stop ``held``'s heartbeat, letting an extension under way finish first, so the
        settling call that follows is the message's last word."""
        held.stop.set()
        task, held.heartbeat = held.heartbeat, None
        if task is not None and not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                task.cancel()
                raise


def _seconds(value: object, *, zero: bool = False) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        and (value >= 0 if zero else value > 0)
    )


def _redrive_policy(raw: str | None) -> Mapping[str, Any] | None:
    if not raw:
        return None
    import json

    try:
        policy = json.loads(raw)
        int(policy["maxReceiveCount"])
    except (ValueError, TypeError, KeyError):
        log.warning("ignoring the queue's RedrivePolicy, which cannot be read: %r", raw[:200])
        return None
    return dict(policy)


def _brief(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]
