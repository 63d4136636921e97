"""Amazon SQS adapter (``pip install 'idemsend[sqs]'``): a long-poll consumer and a Lambda handler.

```python
from idemsend import Engine
from idemsend.adapters.sqs import SQSBatchHandler, SQSConsumer

factory = lambda: Engine(URL, key="welcome:{user_id}:{job_id}", api_key=KEY, ledger=LEDGER)

consumer = SQSConsumer(factory, QUEUE_URL, concurrency=20)   # a worker process
await consumer.run()                                          # until consumer.stop()

handler = SQSBatchHandler(factory)                            # a Lambda function
def lambda_handler(event, context):
    return handler(event, context)                            # {"batchItemFailures": [...]}
```

**Messages.** The body is JSON ``{"data": {...}, "body": {...}}`` (or pass ``parse=``):
``data`` fills the key template, ``body`` is sent. The job id is the message attribute
``idemsend-job-id`` when the producer set one (so a producer that sends the same job twice,
two ``SendMessage`` calls, still makes one job), else the ``MessageId`` (stable across
redeliveries of one message). The attempt is ``ApproximateReceiveCount``. A message that can
never be read (not JSON, not that shape, a bad job id) is fatal ``BAD_MESSAGE``: logged,
told to ``on_outcome``, and given up on like any fatal error, never retried forever.

**Outcomes** (the adapter kit's ``JobOutcome``; see :func:`settle`):

=======================  ===================================================================
``Succeeded``            ``DeleteMessage``
``RetryIn(delay)``       ``ChangeMessageVisibility(delay)``, rounded up to whole seconds and
                         clamped to SQS's 12 h limit; no delete, so SQS delivers it again then
``GiveUp``               ``give_up="delete"`` (default): delete, after the engine recorded the
                         fatal outcome (the ledger) and ``on_outcome`` was told. ``"redrive"``:
                         release it (visibility 0) and leave it to the queue's redrive policy,
                         which moves it to the dead-letter queue after ``maxReceiveCount``
                         receives (each re-receive gets the same fatal answer, from the
                         ledger or the provider; nothing is sent)
=======================  ===================================================================

A retryable error on receive ``max_attempts`` (default 10, or the redrive policy's
``maxReceiveCount`` when smaller) gives up with the real reason.

**Visibility.** The consumer hides each message ``visibility_timeout`` seconds (default: the
queue's ``VisibilityTimeout``) and, while it holds it, extends that every third of it (a
heartbeat task per message), so a send that runs long does not reappear mid-send; a send
outliving ``engine.worst_case_send_time()`` by far is taken as wedged and its message let go
back to the queue. A killed worker's messages come back when their visibility lapses. With
``heartbeat=0`` the visibility timeout must cover ``worst_case_send_time()`` (checked at start).

**Shutdown.** ``stop()`` (from a SIGTERM handler): poll no more; the long poll under way
returns (at most ``wait_time`` seconds; what it brings is released at once) and running
sends finish, for up to ``shutdown_timeout`` seconds; then what still runs is cancelled and
every message not settled is released (visibility 0), so another consumer takes it at once
(the ledger's lease keeps that safe). A second ``stop()`` skips the wait. A long poll
cancelled client-side stays open at SQS, which would hand it what was just released, so
after such a release the poll under way is let end (it brings those messages back at once,
and they are released again) and cancelled only past its ``wait_time``.

**FIFO queues.** SQS hands out a message group's messages in order and no more of a group
while one is in flight. The consumer runs one group's messages one at a time, in order
(groups in parallel). When a message is to be retried, SQS keeps it in flight for the retry
delay, so its **whole group waits** behind it (head-of-line blocking: that is what keeps the
order); the group's later messages of the same batch are released untried (visibility 0) and
come back after it. Each such release counts as a receive (``ApproximateReceiveCount``), so
give ``max_attempts`` and ``maxReceiveCount`` headroom on FIFO queues with busy groups. With
``give_up="redrive"`` a given-up message blocks its group until the redrive policy moves it.

**Lambda.** ``SQSBatchHandler`` answers with a partial batch response (``ReportBatchItemFailures``
must be on in the event source mapping); see its docstring. For a retryable outcome the delay
is the queue's visibility timeout (Lambda leaves a failed record in flight until it lapses),
or the retry delay when the handler is given a ``client`` to call ``ChangeMessageVisibility``;
with a client a FIFO group's records behind a failure are released at once, as the consumer
releases them.
"""

from ..._errors import MissingExtraError

try:
    import aiobotocore  # noqa: F401
except ImportError as exc:
    raise MissingExtraError("sqs", "aiobotocore") from exc

from ._consumer import MAX_WAIT_TIME, ConsumerStats, SQSConsumer
from ._lambda import BatchResponse, SQSBatchHandler
from ._message import (
    BAD_MESSAGE,
    JOB_ID_ATTRIBUTE,
    MAX_VISIBILITY,
    BadMessageError,
    Delete,
    GiveUpMode,
    Hide,
    OnOutcome,
    Parse,
    Settlement,
    SQSMessage,
    SQSOutcome,
    default_parse,
    settle,
    visibility_seconds,
)

__all__ = [
    "BAD_MESSAGE",
    "JOB_ID_ATTRIBUTE",
    "MAX_VISIBILITY",
    "MAX_WAIT_TIME",
    "BadMessageError",
    "BatchResponse",
    "ConsumerStats",
    "Delete",
    "GiveUpMode",
    "Hide",
    "OnOutcome",
    "Parse",
    "SQSBatchHandler",
    "SQSConsumer",
    "SQSMessage",
    "SQSOutcome",
    "Settlement",
    "default_parse",
    "settle",
    "visibility_seconds",
]
