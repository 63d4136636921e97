"""One JetStream message as the consumer reads it, how it becomes a job, and what one try
of it comes to in JetStream's terms (ack, nak with a delay, term).

Nothing here talks to NATS: ``read_message`` and ``settle`` are pure, so the job id rule and
the outcome mapping are tested without a server.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..._errors import FatalError
from ..._keys import Job
from .._kit import GiveUp, JobOutcome, RetryIn, Succeeded, outcome_record
from .._messages import default_parse, reject_constant

__all__ = [
    "BAD_MESSAGE",
    "MAX_JOB_ID_LENGTH",
    "MSG_ID_HEADER",
    "Ack",
    "BadMessageError",
    "JetStreamMessage",
    "Nak",
    "NatsOutcome",
    "OnOutcome",
    "Parse",
    "Settlement",
    "Term",
    "default_parse",
    "job_id_of",
    "read_message",
    "settle",
]

#: The header a producer sets to give a message its job id (JetStream's own de-duplication
#: header: ``js.publish(subject, payload, headers={"Nats-Msg-Id": job_id})``).
MSG_ID_HEADER = "Nats-Msg-Id"
#: The fatal code of a message that can never be sent (no usable job id, not JSON, not the shape).
BAD_MESSAGE = "BAD_MESSAGE"
#: The longest job id accepted from a ``Nats-Msg-Id`` header.
MAX_JOB_ID_LENGTH = 256

_VISIBLE_ASCII = re.compile(r"[!-~]+")

#: ``parse=``: the message's payload, parsed JSON -> (data for the key template, body to send).
Parse = Callable[[Any], tuple[Mapping[str, Any], Any]]


class BadMessageError(FatalError):
    """The message can never be sent: its job id is not usable, or its payload is not JSON
    ``{"data": {...}, "body": ...}`` (or what ``parse=`` accepts). Fatal: it is recorded
    (logged, ``on_outcome``) and terminated (``term()``), never retried, never sent."""

    default_code = BAD_MESSAGE


@dataclass(frozen=True, slots=True)
class JetStreamMessage:
    """What the consumer reads off one delivered message (``from_msg``): the ``stream`` and
    its ``stream_seq`` (the message's place in the stream, the same on every redelivery),
    ``num_delivered`` (1 on the first delivery: the try number), the ``headers`` and the raw
    ``data``; ``stream_created`` the stream's creation time in unix microseconds (None:
    unknown); ``received_at`` is this process's monotonic clock when it arrived."""

    stream: str
    consumer: str
    stream_seq: int
    num_delivered: int
    subject: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    stream_created: int | None = None
    received_at: float = field(default_factory=time.monotonic)

    @classmethod
    def from_msg(cls, msg: Any, *, stream_created: int | None = None) -> JetStreamMessage:
        """The fields of a nats-py JetStream ``Msg`` (its ack subject carries the metadata)."""
        meta = msg.metadata
        return cls(
            stream=str(meta.stream), consumer=str(meta.consumer), stream_seq=int(meta.sequence.stream),
            num_delivered=int(meta.num_delivered), subject=str(msg.subject), data=bytes(msg.data or b""),
            headers={str(k): str(v) for k, v in (msg.headers or {}).items()}, stream_created=stream_created,
        )

    @property
    def label(self) -> str:
        """``stream#seq``: how logs name the message."""
        return f"{self.stream}#{self.stream_seq}"

    def elapsed(self) -> float:
        """Seconds since this process received the message."""
        return time.monotonic() - self.received_at


def job_id_of(message: JetStreamMessage, *, require_msg_id: bool = False) -> str:
    """The job id: the ``Nats-Msg-Id`` header when the producer set one, else
    ``"<stream>:<stream created, unix µs>:<stream sequence>"`` (stable across redeliveries of
    this one message, but a republish of the same job is a new message with a new sequence,
    so only the header makes two publishes one job; the creation time keeps a stream deleted
    and made again, whose sequences start over at 1, from reusing an old job's key).
    ``BadMessageError`` for a header that is not 1 to ``MAX_JOB_ID_LENGTH`` visible ASCII
    characters, or (``require_msg_id``) no header."""
    raw = _header(message.headers, MSG_ID_HEADER)
    if raw is None:
        if require_msg_id:
            raise BadMessageError(
                f"message {message.label} has no {MSG_ID_HEADER} header, and the consumer requires one"
                " (require_msg_id=True): publish with headers={\"Nats-Msg-Id\": <the job id>}"
            )
        if message.stream_created is None:
            return f"{message.stream}:{message.stream_seq}"
        return f"{message.stream}:{message.stream_created}:{message.stream_seq}"
    if not raw or len(raw) > MAX_JOB_ID_LENGTH or _VISIBLE_ASCII.fullmatch(raw) is None:
        raise BadMessageError(
            f"message {message.label}: the {MSG_ID_HEADER} header must be 1 to {MAX_JOB_ID_LENGTH} visible ASCII"
            f" characters to be a job id, got {raw[:80].encode('ascii', 'backslashreplace').decode()!r}"
        )
    return raw


def _header(headers: Mapping[str, str], name: str) -> str | None:
    if name in headers:
        return headers[name]
    lowered = name.lower()
    for key, value in headers.items():  # NATS headers are case-insensitive
        if key.lower() == lowered:
            return value
    return None


def read_message(
    message: JetStreamMessage, *, parse: Parse = default_parse, require_msg_id: bool = False,
) -> tuple[Job, Any]:
    """The job and the body to send; ``BadMessageError`` when there can never be one."""
    job_id = job_id_of(message, require_msg_id=require_msg_id)
    try:
        payload = json.loads(message.data, parse_constant=reject_constant)
    except RecursionError:
        raise BadMessageError(f"message {message.label}: the payload is nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise BadMessageError(f"message {message.label}: the payload is not JSON: {exc}") from None
    try:
        data, body = parse(payload)
    except Exception as exc:  # a payload parse= refuses is never readable: fatal
        raise BadMessageError(f"message {message.label}: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, Mapping):
        raise BadMessageError(f"message {message.label}: parse= returned data that is not a mapping")
    try:
        return Job(job_id, data), body
    except FatalError as exc:  # InvalidJobIdError: a header no ledger can store
        raise BadMessageError(f"message {message.label}: {exc}") from None


# -- what a try comes to in JetStream's terms --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """``msg.ack()``: done, never delivered again."""


@dataclass(frozen=True, slots=True)
class Nak:
    """``msg.nak(delay=seconds)``: deliver it again after ``delay`` (0: at once)."""

    delay: float


@dataclass(frozen=True, slots=True)
class Term:
    """``msg.term()``: never deliver it again (JetStream publishes a ``MSG_TERMINATED``
    advisory, the dead-letter path); ``reason`` is what was recorded."""

    reason: str


#: The one call that settles a message.
Settlement = Ack | Nak | Term


def settle(outcome: JobOutcome) -> Settlement:
    """The settling call for a try's outcome: ``Succeeded`` -> ``Ack``; ``RetryIn(delay)`` ->
    ``Nak(delay)``; ``GiveUp`` -> ``Term`` with the error's code and message."""
    match outcome:
        case Succeeded():
            return Ack()
        case RetryIn(delay):
            return Nak(max(0.0, float(delay)))
        case GiveUp(error):
            return Term(f"{outcome.code}: {error}"[:500])
    raise TypeError(f"not a JobOutcome: {outcome!r}")


@dataclass(frozen=True, slots=True)
class NatsOutcome:
    """One try of one message, as ``on_outcome`` is told it: the ``message``, its ``job_id``
    (None when it had no usable one) and the kit's ``outcome``."""

    message: JetStreamMessage
    job_id: str | None
    outcome: JobOutcome

    @property
    def final(self) -> bool:
        """True unless the job runs again (``RetryIn``)."""
        return not isinstance(self.outcome, RetryIn)

    def record(self) -> dict[str, Any]:
        """The adapter kit's ``outcome_record`` (``attempt`` is ``num_delivered``), with
        ``stream``, ``stream_seq`` and ``job_id``."""
        return {
            **outcome_record(self.outcome, attempt=self.message.num_delivered),
            "stream": self.message.stream, "stream_seq": self.message.stream_seq, "job_id": self.job_id,
        }


#: ``on_outcome=``: told every try's outcome before the message is settled; if it raises, the
#: message is nak'ed after the backoff and runs again (the ledger answers it).
OnOutcome = Callable[[NatsOutcome], Awaitable[None]]
