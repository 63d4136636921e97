"""``JetStreamConsumer``: an asyncio pull consumer on one durable JetStream consumer.

One poller fetches while there is room (``concurrency`` messages held at most); every
message it hands out gets a heartbeat (``in_progress()``) while its send runs, then one try
through the adapter kit and one settling call. See the package docstring for the mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

from ..._engine import Engine
from ..._errors import ConfigError
from .._common import DEFAULT_MAX_TRIES, EngineFactory, check_factory
from .._holder import StartedEngine
from .._kit import GiveUp, QueueBackoff, adapter_backoff, check_tries, run_job
from ._held import ConsumerStats, Held, MessageCalls
from ._message import (
    BAD_MESSAGE,
    BadMessageError,
    JetStreamMessage,
    Nak,
    NatsOutcome,
    OnOutcome,
    Parse,
    Settlement,
    default_parse,
    read_message,
    settle,
)
from ._plan import ConsumerPlan, ConsumerSettings, plan_consumer
from ._shutdown import drain

try:
    import nats
    import nats.errors
    import nats.js.errors
except ImportError as exc:  # pragma: no cover - the package __init__ checks first
    from ..._errors import MissingExtraError

    raise MissingExtraError("nats", "nats-py") from exc

__all__ = ["JetStreamConsumer"]

log = logging.getLogger("idemsend.adapters.nats")


class JetStreamConsumer:
    """Pulls from one durable JetStream consumer and sends each message's job through one Engine.

    ```python
    consumer = JetStreamConsumer(lambda: Engine(URL, key="welcome:{user_id}:{job_id}", api_key=KEY),
                                 stream="EMAILS", durable="welcome", concurrency=20)
    await consumer.run()            # until consumer.stop() (a SIGTERM handler), then drains
    ```

    Arguments (keyword-only but the first):

    * ``engine_factory``: makes the one Engine of this consumer (started and closed by ``run``).
    * ``stream``, ``durable``: the stream and its durable pull consumer (it must exist, or
      pass ``create=`` a nats-py ``ConsumerConfig`` to add it when missing).
    * ``servers``: the NATS URL(s) (ignored with ``nc=``, a connected client not closed here).
    * ``concurrency``: messages held at once; ``fetch_wait``: seconds one fetch waits (0.1-30).
    * ``heartbeat``: seconds between ``in_progress()`` beats while a send runs (default a
      third of ``ack_wait``; 0: none, then ``ack_wait`` must cover
      ``engine.worst_case_send_time()``, checked at start).
    * ``max_tries``: deliveries (``num_delivered``) after which a retryable error gives up
      (default 10, or the consumer's ``max_deliver`` when smaller).
    * ``backoff`` (a ``QueueBackoff``) or the shorthand ``retry_base``: the delay of ``nak``
      when the provider named none.
    * ``shutdown_timeout``: seconds ``run`` lets running sends finish after ``stop()``.
    * ``on_outcome``: ``async (NatsOutcome) -> None``, told every try before the message is
      settled; if it raises, the message is nak'ed after the backoff and runs again.
    * ``parse``, ``require_msg_id``: how a message becomes a job (see the package docs).

    After start, ``ready`` is set and ``plan`` holds what the consumer and options came to.
    """

    def __init__(
        self, engine_factory: EngineFactory, *, stream: str, durable: str,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        concurrency: int = 10, fetch_wait: float = 5.0, heartbeat: float | None = None,
        max_tries: int = DEFAULT_MAX_TRIES, backoff: QueueBackoff | None = None, retry_base: float | None = None,
        shutdown_timeout: float = 25.0, on_outcome: OnOutcome | None = None, parse: Parse = default_parse,
        require_msg_id: bool = False, create: Any = None, nc: Any = None,
    ) -> None:
        for name, value in (("stream", stream), ("durable", durable)):
            if not isinstance(value, str) or not value or any(c in value for c in " .*>\t\r\n"):
                raise ConfigError(f"{name} must be a JetStream name (no spaces, '.', '*' or '>'), got {value!r}")
        if not _seconds(fetch_wait) or not 0.1 <= fetch_wait <= 30:
            raise ConfigError(f"fetch_wait must be seconds from 0.1 to 30, got {fetch_wait!r}")
        if heartbeat is not None and not _seconds(heartbeat, zero=True):
            raise ConfigError(f"heartbeat must be a number of seconds >= 0, got {heartbeat!r}")
        if not _seconds(shutdown_timeout, zero=True):
            raise ConfigError(f"shutdown_timeout must be a number of seconds >= 0, got {shutdown_timeout!r}")
        if on_outcome is not None and not callable(on_outcome):
            raise ConfigError(f"on_outcome must be an async callable, got {on_outcome!r}")
        if not callable(parse):
            raise ConfigError(f"parse must be a callable, got {parse!r}")
        self.engine_factory = check_factory(engine_factory)
        self.stream, self.durable, self.servers = stream, durable, servers
        self.concurrency = check_tries("concurrency", concurrency)
        self.fetch_wait = float(fetch_wait)
        self.heartbeat = heartbeat
        self.max_tries = check_tries("max_tries", max_tries)
        self.backoff = adapter_backoff(backoff, retry_base=retry_base)
        self.shutdown_timeout = float(shutdown_timeout)
        self.on_outcome, self.parse, self.require_msg_id, self.create = on_outcome, parse, require_msg_id, create
        self.stats = ConsumerStats()
        #: set once the consumer has checked its durable consumer and started fetching
        self.ready = asyncio.Event()
        self.plan: ConsumerPlan | None = None
        #: the stream's creation time (unix microseconds), part of a job id without a header
        self.stream_created: int | None = None
        self._nc = nc
        self._engines = StartedEngine(engine_factory)
        self._stopping, self._hurry, self._room = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._held = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._holding: set[Held] = set()  # handed to a run, until the run ends
        self._ran = False

    def __repr__(self) -> str:
        state = "stopping" if self._stopping.is_set() else "running" if self.ready.is_set() else "idle"
        return (
            f"<JetStreamConsumer {self.stream}/{self.durable} concurrency={self.concurrency}"
            f" held={self._held} {state}>"
        )

    @property
    def engine(self) -> Engine:
        """The running consumer's Engine (ConfigError before ``run`` starts it)."""
        return self._engines.require("the JetStreamConsumer is not running: await consumer.run()")

    def stop(self) -> None:
        """Ask ``run`` to shut down: fetch no more, let the sends under way finish (for
        ``shutdown_timeout`` seconds), then release what is left (``nak()``). A second call
        does not wait. Call it on the consumer's loop (``loop.add_signal_handler``)."""
        if self._stopping.is_set():
            self._hurry.set()
        self._stopping.set()
        self._room.set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, start the Engine, check the durable consumer, consume until ``stop()``,
        then drain and close. ConfigError when the consumer's settings break delivery."""
        if self._ran:
            raise ConfigError("a JetStreamConsumer runs once: make a new one")
        self._ran = True
        async with contextlib.AsyncExitStack() as stack:
            nc = self._nc
            if nc is None:
                nc = await nats.connect(self.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                        name=f"idemsend-{self.durable}")
                stack.push_async_callback(_close, nc)
            engine = await self._engines.start()
            stack.push_async_callback(self._engines.close)
            js = nc.jetstream()
            self.plan = plan = await self._plan(js, engine)
            sub = await js.pull_subscribe_bind(self.durable, stream=self.stream)
            stack.push_async_callback(_quietly, sub.unsubscribe)
            calls = MessageCalls(self.stats, heartbeat_every=plan.heartbeat_every, heartbeat_span=plan.heartbeat_span)
            poller = asyncio.create_task(self._poll(sub, calls))
            self.ready.set()
            await self._stopping.wait()
            await drain(poller, self._tasks, hurry=self._hurry, timeout=self.shutdown_timeout,
                        fetch_wait=self.fetch_wait)
            # a run cancelled before its first step never ran its own release: release it here
            for held in list(self._holding):
                await calls.settle(held, Nak(0))
            if not poller.cancelled() and poller.exception() is not None:
                raise poller.exception()  # type: ignore[misc]

    async def _plan(self, js: Any, engine: Engine) -> ConsumerPlan:
        try:
            created = (await js.stream_info(self.stream)).created
        except nats.js.errors.NotFoundError:
            raise ConfigError(f"JetStream has no stream {self.stream!r}: add it first") from None
        self.stream_created = None if created is None else round(created.timestamp() * 1_000_000)
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            if self.create is None:
                raise ConfigError(
                    f"JetStream has no consumer {self.durable!r} on stream {self.stream!r}:"
                    " create the durable pull consumer first, or pass create=ConsumerConfig(...)"
                ) from None
            config = self.create
            config.durable_name = config.name = self.durable
            info = await js.add_consumer(self.stream, config=config)
        if getattr(info.config, "deliver_subject", None):
            raise ConfigError(f"JetStream consumer {self.durable!r} is a push consumer: use a pull consumer")
        plan = plan_consumer(
            ConsumerSettings.from_config(self.durable, info.config), heartbeat=self.heartbeat,
            max_tries=self.max_tries, concurrency=self.concurrency, worst_send=engine.worst_case_send_time(),
        )
        for warning in plan.warnings:
            log.warning("%s", warning)
        return plan

    async def _poll(self, sub: Any, calls: MessageCalls) -> None:
        """Fetch while there is room, until ``stop()``; every message gets its own run."""
        while not self._stopping.is_set():
            if self._held >= self.concurrency:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                msgs = await sub.fetch(self.concurrency - self._held, timeout=self.fetch_wait)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except Exception as exc:  # disconnected, reconnecting, a server error: wait, then fetch again
                log.warning("JetStream fetch failed (%s: %s); fetching again", type(exc).__name__, str(exc)[:200])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 0.5)
                continue
            for msg in msgs:
                self.stats.received += 1
                try:
                    message = JetStreamMessage.from_msg(msg, stream_created=self.stream_created)
                except Exception as exc:  # not a JetStream message (no ack subject): nothing to settle
                    log.error("skipping a message that is not from JetStream (%s)", exc)
                    continue
                held = calls.hold(msg, message)
                if self._stopping.is_set():  # fetched after stop(): give it back at once
                    await calls.settle(held, Nak(0))
                    continue
                self._held += 1
                self._holding.add(held)
                task = asyncio.create_task(self._run(calls, held))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, calls: MessageCalls, held: Held) -> None:
        try:
            settlement = await self._try(held.message)
            await calls.settle(held, settlement)
        except asyncio.CancelledError:  # shutdown: release it, so another worker takes it at once
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(calls.settle(held, Nak(0)))
            raise
        finally:
            self._holding.discard(held)
            self._held -= 1
            self._room.set()

    async def _try(self, message: JetStreamMessage) -> Settlement:
        """One try of ``message`` and the call that settles it."""
        attempt = message.num_delivered
        retry_later = Nak(self.backoff.step(attempt))
        try:
            job, body = read_message(message, parse=self.parse, require_msg_id=self.require_msg_id)
        except BadMessageError as exc:
            log.error("JetStream message %s can never be sent, terminating it: %s", message.label, exc,
                      extra={"idemsend_outcome": "fatal", "idemsend_code": BAD_MESSAGE})
            tried = NatsOutcome(message, None, GiveUp(exc, retryable=False))
        else:
            assert self.plan is not None
            try:
                outcome = await run_job(self.engine, job, body, attempt=attempt, max_attempts=self.plan.max_attempts,
                                        queue="nats", backoff=self.backoff)
            except Exception:  # not an outcome (ConfigError, a bug): try again after the backoff
                log.exception("JetStream message %s: the send raised; nak'ed for a retry", message.label)
                return retry_later
            if isinstance(outcome, GiveUp):
                log.warning("JetStream message %s (job %s, delivery %d) gave up, terminating it: %s", message.label,
                            job.id, attempt, outcome.error,
                            extra={"idemsend_job_id": job.id, "idemsend_attempt": attempt,
                                   "idemsend_outcome": outcome.state, "idemsend_code": outcome.code})
            tried = NatsOutcome(message, job.id, outcome)
        if self.on_outcome is not None:
            try:
                await self.on_outcome(tried)
            except Exception:
                log.exception("JetStream message %s: on_outcome failed; nak'ed to run again", message.label)
                return retry_later
        return settle(tried.outcome)


async def _close(nc: Any) -> None:
    """Flush what is buffered (the last acks) and close the connection."""
    with contextlib.suppress(Exception):
        await nc.drain()
    if not nc.is_closed:
        await _quietly(nc.close)


async def _quietly(call: Any) -> None:
    with contextlib.suppress(Exception):
        await call()


def _seconds(value: object, *, zero: bool = False) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        and (value >= 0 if zero else value > 0)
    )
