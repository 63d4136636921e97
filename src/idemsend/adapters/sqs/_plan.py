"""What an ``SQSConsumer`` makes of its queue and options at start, as a pure function.

``plan_queue`` takes the queue's attributes (``GetQueueAttributes``), the consumer's options
and the engine's ``worst_case_send_time()``, and answers a ``QueuePlan`` (FIFO or not, the
visibility timeout, the heartbeat, the longest a message may be held, the receives a
retryable error gets) or a ``ConfigError`` naming what disagrees. No I/O (an unreadable
redrive policy is logged): the consumer reads the attributes and applies the plan.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..._errors import ConfigError
from .._common import DEFAULT_MAX_TRIES
from ._message import GiveUpMode

__all__ = ["MIN_HEARTBEAT_VISIBILITY", "QueuePlan", "plan_queue", "redrive_policy", "resolve_max_attempts"]

log = logging.getLogger("idemsend.adapters.sqs")

#: The shortest visibility timeout a heartbeat can keep ahead of (it beats every third of it).
MIN_HEARTBEAT_VISIBILITY = 3


@dataclass(frozen=True, slots=True)
class QueuePlan:
    """How a consumer runs on its queue: ``visibility`` seconds a message is hidden (and
    each heartbeat's extension), ``heartbeat_every`` seconds between extensions (0: none),
    ``heartbeat_span`` the longest a message is kept hidden (past it, the send is wedged and
    the message goes back), ``max_attempts`` receives a retryable error gets."""

    fifo: bool
    visibility: int
    heartbeat_every: float
    heartbeat_span: float
    max_attempts: int
    redrive_policy: Mapping[str, Any] | None


def plan_queue(
    queue_url: str, attributes: Mapping[str, str], *, visibility_timeout: int | None, heartbeat: float | None,
    give_up: GiveUpMode, max_attempts: int | None, worst_send: float,
) -> QueuePlan:
    """The plan for ``queue_url`` with ``attributes``, the consumer's options and the engine's
    ``worst_send`` (``worst_case_send_time()``); ``ConfigError`` when they disagree."""
    fifo = attributes.get("FifoQueue") == "true" or queue_url.endswith(".fifo")
    visibility = visibility_timeout or int(attributes.get("VisibilityTimeout", "30"))
    every = visibility / 3 if heartbeat is None else float(heartbeat)
    span = float("inf")
    if every > 0:
        if visibility < MIN_HEARTBEAT_VISIBILITY:
            raise ConfigError(
                f"a visibility timeout of {visibility}s is too short to keep ahead of: use at least"
                f" {MIN_HEARTBEAT_VISIBILITY}s"
            )
        if every > visibility / 2:
            raise ConfigError(
                f"heartbeat={every:g}s cannot keep a message hidden {visibility}s at a time: beat at most"
                f" every {visibility / 2:g}s (the default is a third of the visibility timeout)"
            )
        # a send ends within worst_case_send_time (its ledger calls aside): a message held
        # much longer belongs to a wedged send, and is let go back to the queue
        span = worst_send + 2 * visibility + 60
    elif visibility < worst_send:
        raise ConfigError(
            f"without a heartbeat the visibility timeout ({visibility}s) must cover the longest send"
            f" (engine.worst_case_send_time() = {worst_send:.0f}s), or the message reappears mid-send: raise the"
            f" queue's VisibilityTimeout, pass visibility_timeout=, or leave the heartbeat on"
        )
    policy = redrive_policy(attributes.get("RedrivePolicy"))
    attempts = resolve_max_attempts(max_attempts, policy, give_up)
    return QueuePlan(fifo, visibility, every, span, attempts, policy)


def resolve_max_attempts(requested: int | None, policy: Mapping[str, Any] | None, give_up: GiveUpMode) -> int:
    """The receives a retryable error gets: ``requested``, else the default (10) or the
    redrive policy's ``maxReceiveCount`` when smaller; never more than the policy allows."""
    limit = None if policy is None else int(policy["maxReceiveCount"])
    if give_up == "redrive":
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


def redrive_policy(raw: str | None) -> Mapping[str, Any] | None:
    """The queue's ``RedrivePolicy`` attribute, read (None when it has none, or when it
    cannot be read: logged)."""
    if not raw:
        return None
    try:
        policy = json.loads(raw)
        int(policy["maxReceiveCount"])
    except (ValueError, TypeError, KeyError):
        log.warning("ignoring the queue's RedrivePolicy, which cannot be read: %r", raw[:200])
        return None
    return dict(policy)
