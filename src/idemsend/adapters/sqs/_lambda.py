"""``SQSBatchHandler``: an SQS event of a Lambda function -> a partial batch response.

The sync form (``handler(event, context)``, the Lambda entry point) runs the async engine
on one event loop per container (``ProcessLocalEngine``), so the Engine and its pooled
connections live across invocations; ``await handler.handle(event, engine)`` is the async
form, with an Engine the caller started.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ..._engine import Engine
from ..._errors import ConfigError
from .._common import DEFAULT_MAX_TRIES, EngineFactory, check_factory
from .._kit import QueueBackoff, adapter_backoff, check_tries
from .._portal import ProcessLocalEngine
from ._message import (
    JOB_ID_ATTRIBUTE,
    Delete,
    GiveUpMode,
    Hide,
    OnOutcome,
    Parse,
    Reader,
    SQSMessage,
    default_parse,
    settle,
)

__all__ = ["BatchResponse", "SQSBatchHandler"]

log = logging.getLogger("idemsend.adapters.sqs")

#: ``{"batchItemFailures": [{"itemIdentifier": messageId}, ...]}``
BatchResponse = dict[str, list[dict[str, str]]]


class SQSBatchHandler:
    """Handles the SQS events of a Lambda function, one try per record, and answers with
    the records to retry (``ReportBatchItemFailures`` must be on in the event source mapping,
    or Lambda ignores the answer and deletes the whole batch).

    ```python
    handler = SQSBatchHandler(lambda: Engine(URL, key="welcome:{user_id}:{job_id}", api_key=KEY))

    def lambda_handler(event, context):          # one Engine per container, reused
        return handler(event, context)
    ```

    A record is reported as failed (so Lambda leaves it in the queue) when its try is
    ``RetryIn`` (it comes back after the queue's visibility timeout, or after the retry delay
    when ``client`` is given: a boto3 SQS client, or an aiobotocore one for the async form,
    which gets ``ChangeMessageVisibility``), when ``on_outcome`` or the engine raised, when
    the Lambda deadline came first (``deadline_margin`` seconds before the function's
    timeout, the records still running are cancelled), and when it gave up with
    ``give_up="redrive"`` (then the redrive policy moves it to the dead-letter queue).
    Everything else is a success: sent, or given up on (recorded, with ``give_up="delete"``).

    FIFO records (with ``MessageGroupId``) run one group at a time in order; after a
    group's first failure its later records are reported as failed without being tried, so
    the group keeps its order, and with ``client`` they are released (visibility 0), as the
    consumer does: SQS hands them out again behind the failed one instead of after the
    queue's visibility timeout. ``max_attempts`` (default 10) counts ``ApproximateReceiveCount``:
    keep it at or under the redrive policy's ``maxReceiveCount``. ``backoff`` (a
    ``QueueBackoff``, or the shorthand ``retry_base=``, its first delay) is the retry delay
    when the provider named none, as in the consumer.
    """

    def __init__(
        self,
        engine_factory: EngineFactory | None = None,
        *,
        max_attempts: int | None = DEFAULT_MAX_TRIES,
        backoff: QueueBackoff | None = None,
        retry_base: float | None = None,
        give_up: GiveUpMode = "delete",
        on_outcome: OnOutcome | None = None,
        parse: Parse = default_parse,
        job_id_attribute: str | None = JOB_ID_ATTRIBUTE,
        client: Any = None,
        deadline_margin: float = 2.0,
    ) -> None:
        if give_up not in ("delete", "redrive"):
            raise ConfigError(f'give_up must be "delete" or "redrive", got {give_up!r}')
        if on_outcome is not None and not callable(on_outcome):
            raise ConfigError(f"on_outcome must be an async callable, got {on_outcome!r}")
        if isinstance(deadline_margin, bool) or not isinstance(deadline_margin, int | float) or deadline_margin < 0:
            raise ConfigError(f"deadline_margin must be a number of seconds >= 0, got {deadline_margin!r}")
        self.max_attempts = None if max_attempts is None else check_tries("max_attempts", max_attempts)
        self.backoff = adapter_backoff(backoff, retry_base=retry_base)
        self.give_up: GiveUpMode = give_up
        self.on_outcome = on_outcome
        self.client = client
        self.deadline_margin = float(deadline_margin)
        self.reader = Reader(
            parse=parse, job_id_attribute=job_id_attribute, max_attempts=self.max_attempts, backoff=self.backoff,
        )
        self.engines = ProcessLocalEngine(check_factory(engine_factory)) if engine_factory is not None else None
        self._queue_urls: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<SQSBatchHandler give_up={self.give_up} max_attempts={self.max_attempts} engines={self.engines!r}>"

    def __call__(self, event: Mapping[str, Any], context: Any = None) -> BatchResponse:
        """The Lambda entry point: handle ``event`` on this container's Engine and loop."""
        if self.engines is None:
            raise ConfigError("the sync handler needs SQSBatchHandler(engine_factory); or await handler.handle()")
        timeout = self._time_left(context)
        return self.engines.call(lambda engine: self.handle(event, engine, timeout=timeout))

    def close(self) -> None:
        """Close the container's Engine and stop its loop (at exit, or by hand)."""
        if self.engines is not None:
            self.engines.close()

    def _time_left(self, context: Any) -> float | None:
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if not callable(remaining):
            return None
        return max(0.0, float(remaining()) / 1000.0 - self.deadline_margin)

    async def handle(
        self, event: Mapping[str, Any], engine: Engine, *, context: Any = None, timeout: float | None = None,
    ) -> BatchResponse:
        """The async form: one try per record of ``event`` with ``engine`` (started by the
        caller); returns the partial batch response. ``timeout`` (or the Lambda ``context``'s
        remaining time less ``deadline_margin``) bounds the whole batch."""
        if timeout is None and context is not None:
            timeout = self._time_left(context)
        records = event.get("Records") if isinstance(event, Mapping) else None
        messages: list[SQSMessage] = []
        failed: set[str] = set()
        for record in records if isinstance(records, Sequence) else ():
            try:
                messages.append(SQSMessage.from_lambda(record))
            except (KeyError, TypeError, AttributeError):
                log.error("not an SQS record (no messageId), skipped: %.200r", record)
        groups: dict[str | None, list[SQSMessage]] = {}
        for index, message in enumerate(messages):
            groups.setdefault(message.group_id if message.group_id is not None else f"\0{index}", []).append(message)
        hides: list[tuple[SQSMessage, int]] = []
        settled: set[str] = set()

        async def run_group(group: list[SQSMessage]) -> None:
            for message in group:
                ok, hide = await self._one(engine, message)
                settled.add(message.message_id)
                if hide is not None:
                    hides.append((message, hide))
                if not ok:
                    failed.add(message.message_id)
                    if message.group_id is not None:  # FIFO: the rest of the group waits behind it,
                        for later in group[group.index(message) + 1:]:  # released at once (with a client)
                            failed.add(later.message_id)
                            settled.add(later.message_id)
                            hides.append((later, 0))
                        return

        tasks = [asyncio.create_task(run_group(group)) for group in groups.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                late = [m.message_id for m in messages if m.message_id not in settled]
                log.warning("the Lambda deadline came first: %d record(s) cancelled and left for a retry", len(late))
                failed.update(late)
        if self.client is not None and hides:
            await asyncio.gather(*(self._hide(message, seconds) for message, seconds in hides))
        return {"batchItemFailures": [{"itemIdentifier": m.message_id} for m in messages if m.message_id in failed]}

    async def _one(self, engine: Engine, message: SQSMessage) -> tuple[bool, int | None]:
        """(success, the visibility to set when a client is given) for one record."""
        try:
            tried = await self.reader.run(engine, message)
        except Exception:  # not an outcome (a bug, an engine not started): Lambda retries it
            log.exception("SQS record %s: the send raised; left for a retry", message.message_id)
            return False, None
        settlement = settle(tried.outcome, give_up=self.give_up)
        if self.on_outcome is not None:
            try:
                await self.on_outcome(tried)
            except Exception:
                log.exception("SQS record %s: on_outcome failed; left for a retry", message.message_id)
                return False, None
        if isinstance(settlement, Delete):
            return True, None
        assert isinstance(settlement, Hide)
        return False, settlement.seconds

    async def _hide(self, message: SQSMessage, seconds: int) -> None:
        try:
            queue_url = await self._queue_url(message)
            await _maybe_await(self.client.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=seconds,
            ))
        except Exception as exc:  # the queue's visibility timeout applies instead
            log.warning("could not set the visibility of SQS record %s to %ss: %s", message.message_id, seconds, exc)

    async def _queue_url(self, message: SQSMessage) -> str:
        arn = message.source_arn or ""
        if arn not in self._queue_urls:
            parts = arn.split(":")
            if len(parts) != 6 or parts[2] != "sqs":
                raise ConfigError(f"record {message.message_id} has no SQS eventSourceARN: {arn!r}")
            answer = await _maybe_await(self.client.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4]))
            self._queue_urls[arn] = str(answer["QueueUrl"])
        return self._queue_urls[arn]


async def _maybe_await(value: Any) -> Any:
    """A boto3 client answers at once, an aiobotocore client with an awaitable."""
    return await value if inspect.isawaitable(value) else value
