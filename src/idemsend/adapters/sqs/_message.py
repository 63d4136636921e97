"""What the consumer and the Lambda handler share: one SQS message, how it becomes a job,
and what one try of it comes to in SQS's terms (delete it, or hide it for a while).

Nothing here talks to SQS; ``settle`` and ``visibility_seconds`` are pure, so the outcome
mapping is tested without a queue.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..._engine import Engine
from ..._errors import ConfigError, FatalError
from ..._keys import Job
from .._kit import GiveUp, JobOutcome, QueueBackoff, RetryIn, Succeeded, outcome_record, run_job
from .._messages import default_parse, reject_constant

__all__ = [
    "BAD_MESSAGE",
    "JOB_ID_ATTRIBUTE",
    "MAX_VISIBILITY",
    "BadMessageError",
    "Delete",
    "GiveUpMode",
    "Hide",
    "OnOutcome",
    "Parse",
    "SQSMessage",
    "SQSOutcome",
    "Settlement",
    "default_parse",
    "settle",
    "visibility_seconds",
]

log = logging.getLogger("idemsend.adapters.sqs")

#: SQS's longest visibility timeout, in seconds (12 h, counted from the message's receive).
MAX_VISIBILITY = 43_200
#: The message attribute a producer sets to give a job its own, stable id (else ``MessageId``).
JOB_ID_ATTRIBUTE = "idemsend-job-id"
#: The fatal code of a message that can never be read (not JSON, not the expected shape).
BAD_MESSAGE = "BAD_MESSAGE"
#: The longest job id accepted (a producer's attribute; a ``MessageId`` is 36 characters).
MAX_JOB_ID_LENGTH = 256

_VISIBLE_ASCII = re.compile(r"[!-~]+")

#: ``parse=``: the message body, parsed JSON -> (data for the key template, body to send).
Parse = Callable[[Any], tuple[Mapping[str, Any], Any]]
#: What a message that was given up on becomes: deleted (after its outcome was recorded),
#: or left to the queue's redrive policy, which moves it to the dead-letter queue.
GiveUpMode = Literal["delete", "redrive"]


class BadMessageError(FatalError):
    """The message can never be sent: its body is not JSON, or not ``{"data": {...},
    "body": ...}`` (or what ``parse=`` accepts), or its job id is not usable. Fatal: it is
    recorded (logged, ``on_outcome``) and never retried."""

    default_code = BAD_MESSAGE


@dataclass(frozen=True, slots=True)
class SQSMessage:
    """One received message, from ``ReceiveMessage`` (:meth:`from_api`) or a Lambda event
    record (:meth:`from_lambda`).

    ``receive_count`` is ``ApproximateReceiveCount`` (the try number: 1 on the first
    receive; None when SQS did not say); ``group_id`` is the FIFO ``MessageGroupId``;
    ``message_attributes`` holds the String and Number message attributes;
    ``received_at`` is this process's monotonic clock when the message arrived.
    """

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int | None = None
    group_id: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    message_attributes: Mapping[str, str] = field(default_factory=dict)
    source_arn: str | None = None
    received_at: float = field(default_factory=time.monotonic)

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> SQSMessage:
        """A message of a ``ReceiveMessage`` answer (``MessageId``, ``ReceiptHandle``, ...)."""
        attributes = {str(k): str(v) for k, v in (raw.get("Attributes") or {}).items()}
        values = {
            str(name): str(value["StringValue"])
            for name, value in (raw.get("MessageAttributes") or {}).items()
            if isinstance(value, Mapping) and "StringValue" in value
        }
        return cls(
            message_id=str(raw["MessageId"]), receipt_handle=str(raw["ReceiptHandle"]), body=str(raw.get("Body", "")),
            receive_count=_count(attributes.get("ApproximateReceiveCount")), group_id=attributes.get("MessageGroupId"),
            attributes=attributes, message_attributes=values,
        )

    @classmethod
    def from_lambda(cls, record: Mapping[str, Any]) -> SQSMessage:
        """A record of a Lambda SQS event (``messageId``, ``receiptHandle``, ``eventSourceARN``, ...)."""
        attributes = {str(k): str(v) for k, v in (record.get("attributes") or {}).items()}
        values = {
            str(name): str(value["stringValue"])
            for name, value in (record.get("messageAttributes") or {}).items()
            if isinstance(value, Mapping) and value.get("stringValue") is not None
        }
        return cls(
            message_id=str(record["messageId"]), receipt_handle=str(record.get("receiptHandle", "")),
            body=str(record.get("body", "")), receive_count=_count(attributes.get("ApproximateReceiveCount")),
            group_id=attributes.get("MessageGroupId"), attributes=attributes, message_attributes=values,
            source_arn=record.get("eventSourceARN"),
        )

    def elapsed(self) -> float:
        """Seconds since this process received the message."""
        return time.monotonic() - self.received_at


def _count(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None




# -- what a try comes to in SQS's terms -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delete:
    """``DeleteMessage``: the job is done (sent, or given up on and recorded)."""


@dataclass(frozen=True, slots=True)
class Hide:
    """``ChangeMessageVisibility(seconds)`` and no delete: the message comes back in
    ``seconds`` (a retry), or at once with 0 (released: to the redrive policy, or to
    another consumer at shutdown)."""

    seconds: int


#: What the adapter does with a message after one try.
Settlement = Delete | Hide


def visibility_seconds(delay: float, elapsed: float = 0.0) -> int:
    """The ``VisibilityTimeout`` for "run again in ``delay`` seconds": rounded up to whole
    seconds (SQS counts in seconds, and a retry must never come early), at least 0, and
    clamped to what is left of SQS's 12 h limit after the ``elapsed`` seconds the message
    has been held (SQS refuses a change past it). A non-finite delay is the limit."""
    room = max(0, MAX_VISIBILITY - math.ceil(max(elapsed, 0.0)))
    if not math.isfinite(delay):
        return room
    return min(room, max(0, math.ceil(delay)))


def settle(outcome: JobOutcome, *, give_up: GiveUpMode = "delete", elapsed: float = 0.0) -> Settlement:
    """The adapter kit's outcome in SQS's terms: ``Succeeded`` -> delete; ``RetryIn(delay)``
    -> hide it for ``visibility_seconds(delay)``; ``GiveUp`` -> delete (``give_up="delete"``),
    or release it (visibility 0) for the queue's redrive policy (``"redrive"``)."""
    match outcome:
        case Succeeded():
            return Delete()
        case RetryIn(delay):
            return Hide(visibility_seconds(delay, elapsed))
        case GiveUp():
            return Delete() if give_up == "delete" else Hide(0)
    raise TypeError(f"not a JobOutcome: {outcome!r}")


@dataclass(frozen=True, slots=True)
class SQSOutcome:
    """One try of one message, as ``on_outcome`` is told it: the ``message``, its ``job_id``
    (None when the message could not be read) and the kit's ``outcome``."""

    message: SQSMessage
    job_id: str | None
    outcome: JobOutcome

    @property
    def final(self) -> bool:
        """True unless the job runs again (``RetryIn``)."""
        return not isinstance(self.outcome, RetryIn)

    def record(self) -> dict[str, Any]:
        """A plain, JSON-able account of the try (what a results store keeps): the adapter
        kit's ``outcome_record`` (``state`` ``sent``, ``retrying``, ``failed`` (the tries ran
        out on a retryable error) or ``fatal``, the ``reason`` or ``code``, ``detail``,
        ``message``, ``maybe_sent`` (every state but ``sent``: True when a request for the
        job's key may have run at the provider, so a job given up on is then not known to be
        unsent) and ``attempt``, the receive count), with ``message_id`` and ``job_id``."""
        return {
            **outcome_record(self.outcome, attempt=self.message.receive_count),
            "message_id": self.message.message_id, "job_id": self.job_id,
        }


#: ``on_outcome=``: told every try's outcome before the message is settled; if it raises,
#: the message is not deleted (it comes back after the backoff and runs again).
OnOutcome = Callable[[SQSOutcome], Awaitable[None]]


class Reader:
    """Turns messages into jobs and runs one try (shared by the consumer and the Lambda
    handler): the job id, the JSON body, ``parse=``, then ``run_job``."""

    def __init__(
        self, *, parse: Parse, job_id_attribute: str | None, max_attempts: int | None, backoff: QueueBackoff,
    ) -> None:
        if not callable(parse):
            raise ConfigError(f"parse must be a callable, got {parse!r}")
        if job_id_attribute is not None and not isinstance(job_id_attribute, str):
            raise ConfigError(f"job_id_attribute must be a message attribute name or None, got {job_id_attribute!r}")
        self.parse = parse
        self.job_id_attribute = job_id_attribute
        self.max_attempts = max_attempts
        self.backoff = backoff

    def job_id(self, message: SQSMessage) -> str:
        """The producer's ``job_id_attribute`` when it set one, else the ``MessageId``."""
        if self.job_id_attribute is not None and self.job_id_attribute in message.message_attributes:
            return message.message_attributes[self.job_id_attribute]
        return message.message_id

    def read(self, message: SQSMessage) -> tuple[Job, Any]:
        """The job and the body to send; ``BadMessageError`` when there can never be one."""
        job_id = self.job_id(message)
        if not job_id or len(job_id) > MAX_JOB_ID_LENGTH or _VISIBLE_ASCII.fullmatch(job_id) is None:
            raise BadMessageError(
                f"message {message.message_id}: the job id must be 1 to {MAX_JOB_ID_LENGTH} visible ASCII"
                f" characters, got {job_id[:80].encode('ascii', 'backslashreplace').decode()!r}"
            )
        try:
            payload = json.loads(message.body, parse_constant=reject_constant)
        except RecursionError:
            raise BadMessageError(f"message {message.message_id}: the body is nested too deeply") from None
        except ValueError as exc:
            raise BadMessageError(f"message {message.message_id}: the body is not JSON: {exc}") from None
        try:
            data, body = self.parse(payload)
        except Exception as exc:  # a message parse= refuses: never readable, so fatal
            raise BadMessageError(f"message {message.message_id}: {type(exc).__name__}: {exc}") from None
        if not isinstance(data, Mapping):
            raise BadMessageError(f"message {message.message_id}: parse= returned data that is not a mapping")
        return Job(job_id, data), body

    async def run(self, engine: Engine, message: SQSMessage) -> SQSOutcome:
        """One try of ``message``."""
        try:
            job, body = self.read(message)
        except BadMessageError as exc:
            log.error(
                "SQS message %s can never be sent, giving up: %s", message.message_id, exc,
                extra={"idemsend_job_id": message.message_id, "idemsend_outcome": "fatal",
                       "idemsend_code": BAD_MESSAGE},
            )
            return SQSOutcome(message, None, GiveUp(exc, retryable=False))
        outcome = await run_job(
            engine, job, body, attempt=message.receive_count, max_attempts=self.max_attempts, queue="sqs",
            backoff=self.backoff,
        )
        if isinstance(outcome, GiveUp):
            log.warning(
                "SQS message %s (job %s, receive %s) gave up: %s", message.message_id, job.id, message.receive_count,
                outcome.error,
                extra={"idemsend_job_id": job.id, "idemsend_attempt": message.receive_count,
                       "idemsend_outcome": outcome.state, "idemsend_code": outcome.code},
            )
        return SQSOutcome(message, job.id, outcome)
