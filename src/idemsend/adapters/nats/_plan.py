"""What a ``JetStreamConsumer`` makes of its durable consumer's settings at start, as a pure
function.

``plan_consumer`` takes the consumer's configuration as the server reports it
(``ConsumerInfo.config``: ``ack_policy``, ``ack_wait``, ``backoff``, ``max_deliver``,
``max_ack_pending``), the adapter's options and the engine's ``worst_case_send_time()``, and
answers a ``ConsumerPlan`` (the heartbeat, the tries a retryable error gets, the warnings to
log) or a ``ConfigError`` naming the setting that breaks at-least-once, per-message delivery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..._errors import ConfigError

__all__ = ["MIN_HEARTBEAT_ACK_WAIT", "ConsumerPlan", "ConsumerSettings", "plan_consumer"]

#: The shortest ``ack_wait`` a heartbeat (``in_progress()`` every third of it) keeps ahead of
#: with room on a loaded machine; shorter is warned about.
MIN_HEARTBEAT_ACK_WAIT = 3.0


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """The durable consumer's settings that matter here (``ConsumerInfo.config``):
    ``ack_policy`` ``"explicit"``/``"all"``/``"none"``, ``ack_wait`` and ``backoff`` in
    seconds, ``max_deliver`` (-1 or None: unlimited), ``max_ack_pending`` (-1/None: none)."""

    name: str
    ack_policy: str
    ack_wait: float
    backoff: tuple[float, ...] = ()
    max_deliver: int | None = None
    max_ack_pending: int | None = None

    @classmethod
    def from_config(cls, name: str, config: object) -> ConsumerSettings:
        """From a nats-py ``ConsumerConfig`` (the server fills in its defaults: 30 s ack_wait)."""
        policy = getattr(config, "ack_policy", None)
        policy_text = str(getattr(policy, "value", policy) or "explicit").lower()
        backoff = tuple(float(b) for b in (getattr(config, "backoff", None) or ()))
        return cls(
            name=name, ack_policy=policy_text, ack_wait=float(getattr(config, "ack_wait", None) or 30.0),
            backoff=backoff, max_deliver=getattr(config, "max_deliver", None),
            max_ack_pending=getattr(config, "max_ack_pending", None),
        )


@dataclass(frozen=True, slots=True)
class ConsumerPlan:
    """How the adapter runs on its consumer: ``ack_window`` the shortest time the server
    waits for an ack or a progress beat (``ack_wait``, or the shortest ``backoff`` step),
    ``heartbeat_every`` seconds between ``in_progress()`` beats (0: none), ``heartbeat_span``
    the longest a message is kept in progress (past it the send is wedged and the message is
    let go back), ``max_attempts`` deliveries a retryable error gets, ``warnings`` to log."""

    ack_window: float
    heartbeat_every: float
    heartbeat_span: float
    max_attempts: int
    warnings: tuple[str, ...]


def plan_consumer(
    settings: ConsumerSettings, *, heartbeat: float | None, max_tries: int, concurrency: int, worst_send: float,
) -> ConsumerPlan:
    """The plan for ``settings`` and the adapter's options; ``ConfigError`` when the consumer
    cannot give per-message at-least-once delivery (``AckPolicy.NONE``: a message counts as
    done once sent to the worker, so a worker that dies mid-send loses it; ``AckPolicy.ALL``:
    one ack settles every earlier message too, including those still sending or waiting for
    their retry), or when the heartbeat cannot keep a message in progress."""
    name = settings.name
    if settings.ack_policy == "none":
        raise ConfigError(
            f"JetStream consumer {name!r} has ack_policy=AckPolicy.NONE: the server forgets a message once"
            " it is delivered, so a worker that dies mid-send loses it and a retry cannot be asked for;"
            " create the consumer with ack_policy=AckPolicy.EXPLICIT"
        )
    if settings.ack_policy == "all":
        raise ConfigError(
            f"JetStream consumer {name!r} has ack_policy=AckPolicy.ALL: acking one message acks every earlier"
            " one, including messages still sending or waiting for their retry (lost if their worker dies);"
            " create the consumer with ack_policy=AckPolicy.EXPLICIT"
        )
    if settings.ack_policy != "explicit":
        raise ConfigError(f"JetStream consumer {name!r} has an unknown ack_policy {settings.ack_policy!r}")
    window = min((settings.ack_wait, *settings.backoff))
    if not math.isfinite(window) or window <= 0:
        raise ConfigError(f"JetStream consumer {name!r} has an ack_wait/backoff of {window!r}s")
    warnings: list[str] = []
    every = window / 3 if heartbeat is None else float(heartbeat)
    span = math.inf
    if every > 0:
        if every > window / 2:
            raise ConfigError(
                f"heartbeat={every:g}s cannot keep a message of consumer {name!r} in progress: its ack_wait"
                f" (or shortest backoff step) is {window:g}s; beat at most every {window / 2:g}s (the default is"
                " a third of it)"
            )
        if window < MIN_HEARTBEAT_ACK_WAIT:
            warnings.append(
                f"consumer {name!r} has ack_wait {window:g}s: the in_progress() heartbeat every {every:g}s has"
                f" little room on a loaded worker, and a late beat redelivers a message mid-send (the ledger"
                f" stops the double, the send waits); use an ack_wait of at least {MIN_HEARTBEAT_ACK_WAIT:g}s"
            )
        # a send ends within worst_case_send_time (its ledger calls aside): a message held
        # much longer belongs to a wedged send, and is let go back to the queue
        span = worst_send + 2 * window + 60
    elif window < worst_send:
        raise ConfigError(
            f"without a heartbeat the ack_wait of consumer {name!r} ({window:g}s, or its shortest backoff"
            f" step) must cover the longest send (engine.worst_case_send_time() = {worst_send:.0f}s), or the"
            " message is redelivered mid-send: raise ack_wait, or leave the heartbeat on"
        )
    attempts = max_tries
    limit = settings.max_deliver
    if limit is not None and limit > 0:
        if limit < max_tries:
            warnings.append(
                f"consumer {name!r} has max_deliver={limit}, fewer than max_tries={max_tries}: a retryable"
                f" error gives up (term) on delivery {limit}"
            )
            attempts = limit
        warnings.append(
            f"consumer {name!r} has max_deliver={limit}: a message whose worker dies on delivery {limit} is"
            " never delivered again and never recorded (only a MAX_DELIVERIES advisory says so); prefer"
            " max_deliver=-1 and let max_tries decide"
        )
    pending = settings.max_ack_pending
    if pending is not None and 0 < pending < concurrency:
        warnings.append(
            f"consumer {name!r} has max_ack_pending={pending}, under concurrency={concurrency}: the server"
            f" hands out at most {pending} unacknowledged messages at once (across all workers)"
        )
    return ConsumerPlan(window, every, span, attempts, tuple(warnings))

