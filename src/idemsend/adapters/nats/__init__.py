"""NATS JetStream adapter (``pip install 'idemsend[nats]'``): a pull consumer on a durable consumer.

```python
from idemsend import Engine
from idemsend.adapters.nats import JetStreamConsumer

consumer = JetStreamConsumer(
    lambda: Engine(URL, key="welcome:{user_id}:{job_id}", api_key=KEY, ledger=LEDGER),
    stream="EMAILS", durable="welcome", servers="nats://127.0.0.1:4222", concurrency=20,
)
await consumer.run()                                   # until consumer.stop(), then drains

# a producer: the job id goes in the Nats-Msg-Id header
await js.publish("emails.welcome", json.dumps({"data": {...}, "body": {...}}).encode(),
                 headers={"Nats-Msg-Id": job_id})
```

**Messages.** The payload is JSON ``{"data": {...}, "body": {...}}`` (or pass ``parse=``):
``data`` fills the key template, ``body`` is sent. The job id is the ``Nats-Msg-Id`` header
when the producer set one, else ``"<stream>:<stream created, unix µs>:<stream sequence>"``
(the creation time: a stream deleted and made again starts its sequences over). Prefer the header: the
sequence is stable across redeliveries of one message, but a producer that publishes the same
job again (a retried publish after a lost ``PubAck``, outside the stream's duplicate window)
makes a new message with a new sequence, hence a new key and a second send; the header keeps
it one job (and JetStream drops the republish itself inside the window).
``require_msg_id=True`` terminates a message without the header. The attempt is
``msg.metadata.num_delivered``. A message that can never be sent (a header that is not 1 to
256 visible ASCII characters, a payload that is not JSON or not that shape) is fatal
``BAD_MESSAGE``: logged, told to ``on_outcome``, terminated, never sent.

**Outcomes** (the adapter kit's ``JobOutcome``; see :func:`settle`):

=======================  ===================================================================
``Succeeded``            ``msg.ack()``
``RetryIn(delay)``       ``msg.nak(delay=delay)``: JetStream delivers it again after ``delay``
``GiveUp``               ``msg.term()``, after the engine recorded the outcome (the ledger),
                         the reason was logged and ``on_outcome`` was told. JetStream then
                         publishes a ``$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.<stream>.<consumer>``
                         advisory: the dead-letter path (capture it in a stream of its own)
=======================  ===================================================================

**Settings refused or warned about at start** (the durable consumer is read with
``consumer_info``): ``ack_policy`` ``AckPolicy.NONE`` (the server forgets a message once it is
delivered: a worker that dies mid-send loses it) and ``AckPolicy.ALL`` (one ack settles every
earlier message too, including those still sending or waiting for their ``nak`` delay) are
refused, naming the setting; a push consumer is refused. ``ack_wait`` (or the consumer's
shortest ``backoff`` step, which overrides it per delivery) is the window: while a send runs
the consumer calls ``msg.in_progress()`` every third of it (``heartbeat=``), which restarts the
server's ``ack_wait`` clock; a window under 3 s is warned about; with ``heartbeat=0`` it must
cover ``engine.worst_case_send_time()`` (refused otherwise). A send outliving that by far is
taken as wedged and its message let go back (redelivered after ``ack_wait``).

**max_deliver and max_tries.** Every delivery counts: a ``nak``, an ``ack_wait`` that lapsed
(a killed worker) and a shutdown release each make the next delivery's ``num_delivered`` one
higher. A retryable error on delivery ``max_tries`` (default 10) gives up with the real reason
(``term``). When the consumer's ``max_deliver`` is smaller it is used instead (warned about), so
the last try still terminates with a reason; but a worker killed on delivery ``max_deliver``
leaves the message undelivered for good with only a ``MAX_DELIVERIES`` advisory (and the key
claimed in the ledger): prefer ``max_deliver=-1`` and let ``max_tries`` decide.

**Shutdown.** ``stop()`` (from a SIGTERM handler): fetch no more; the fetch under way returns
(at most ``fetch_wait`` seconds; what it brings is released at once with ``nak()``) and running
sends finish, for up to ``shutdown_timeout`` seconds; then what still runs is cancelled and its
message released (``nak()``), so another worker takes it at once (the ledger's lease keeps that
safe). A second ``stop()`` skips the wait. A worker that is killed instead leaves its messages
unacknowledged: JetStream redelivers them after ``ack_wait`` and the ledger stops the double.
"""

from ..._errors import MissingExtraError

try:
    import nats  # noqa: F401
except ImportError as exc:
    raise MissingExtraError("nats", "nats-py") from exc

from ._consumer import JetStreamConsumer
from ._held import ConsumerStats
from ._message import (
    BAD_MESSAGE,
    MAX_JOB_ID_LENGTH,
    MSG_ID_HEADER,
    Ack,
    BadMessageError,
    JetStreamMessage,
    Nak,
    NatsOutcome,
    OnOutcome,
    Parse,
    Settlement,
    Term,
    default_parse,
    job_id_of,
    read_message,
    settle,
)
from ._plan import MIN_HEARTBEAT_ACK_WAIT, ConsumerPlan, ConsumerSettings, plan_consumer

__all__ = [
    "BAD_MESSAGE",
    "MAX_JOB_ID_LENGTH",
    "MIN_HEARTBEAT_ACK_WAIT",
    "MSG_ID_HEADER",
    "Ack",
    "BadMessageError",
    "ConsumerPlan",
    "ConsumerSettings",
    "ConsumerStats",
    "JetStreamConsumer",
    "JetStreamMessage",
    "Nak",
    "NatsOutcome",
    "OnOutcome",
    "Parse",
    "Settlement",
    "Term",
    "default_parse",
    "job_id_of",
    "plan_consumer",
    "read_message",
    "settle",
]
