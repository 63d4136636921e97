"""The SQS calls an ``SQSConsumer`` makes for a message it holds: keep it hidden while its
send runs (the heartbeat), then settle it once (delete, or a visibility change), counted in
``ConsumerStats`` and logged when SQS refuses. A failed call is never retried here: the
message comes back after its visibility timeout and the ledger (or the provider) answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from ._message import Delete, Hide, Settlement, SQSMessage, visibility_seconds

try:
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError as exc:  # pragma: no cover - the package __init__ checks first
    from ..._errors import MissingExtraError

    raise MissingExtraError("sqs", "aiobotocore") from exc

__all__ = ["ConsumerStats", "Held", "MessageCalls", "brief"]

log = logging.getLogger("idemsend.adapters.sqs")

SQS_ERRORS = (BotoCoreError, ClientError)
# SQS counts the 12 h limit from its own receive, a little before this process saw the
# message: extensions stop this much short of it.
_LIMIT_MARGIN = 30.0


@dataclass
class ConsumerStats:
    """Counters of one consumer's calls to SQS (for logs, dashboards and tests)."""

    received: int = 0
    deleted: int = 0
    retried: int = 0  # hidden for a retry delay (ChangeMessageVisibility > 0)
    released: int = 0  # visibility 0: redrive, a FIFO group's tail, shutdown
    extended: int = 0  # heartbeat extensions
    failed_calls: int = 0  # SQS calls that failed (each logged)


class Held:
    """A message the consumer holds, from its receive until it is settled."""

    __slots__ = ("counted", "heartbeat", "message", "settled", "stop")

    def __init__(self, message: SQSMessage) -> None:
        self.message = message
        self.settled = False
        self.counted = True  # it takes a slot until the consumer is done with it
        self.stop = asyncio.Event()
        self.heartbeat: asyncio.Task[None] | None = None


class MessageCalls:
    """The heartbeat and settling calls for held messages of one queue (see the module
    docstring). ``visibility``, ``heartbeat_every`` and ``heartbeat_span`` come from the
    consumer's queue plan."""

    def __init__(
        self, client: Any, queue_url: str, stats: ConsumerStats, *, visibility: int, heartbeat_every: float,
        heartbeat_span: float,
    ) -> None:
        self.client = client
        self.queue_url = queue_url
        self.stats = stats
        self.visibility = visibility
        self.heartbeat_every = heartbeat_every
        self.heartbeat_span = heartbeat_span

    def hold(self, message: SQSMessage) -> Held:
        """Hold ``message``: its heartbeat starts now (when the plan has one)."""
        held = Held(message)
        if self.heartbeat_every > 0:
            held.heartbeat = asyncio.create_task(self._beat(held))
        return held

    async def release(self, run: list[Held]) -> None:
        """Release (visibility 0) every message of ``run`` not settled yet."""
        await asyncio.gather(*(self.settle(held, Hide(0)) for held in run if not held.settled))

    async def settle(self, held: Held, settlement: Settlement) -> None:
        """Stop ``held``'s heartbeat, then delete it or set its visibility: its last word."""
        await self._stop_heartbeat(held)
        message = held.message
        try:
            if isinstance(settlement, Delete):
                await self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message.receipt_handle)
                self.stats.deleted += 1
            else:
                await self.client.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=message.receipt_handle,
                    VisibilityTimeout=settlement.seconds,
                )
                if settlement.seconds:
                    self.stats.retried += 1
                else:
                    self.stats.released += 1
        except SQS_ERRORS as exc:
            self.stats.failed_calls += 1
            what = "delete" if isinstance(settlement, Delete) else f"set the visibility ({settlement.seconds}s) of"
            log.warning(
                "could not %s SQS message %s (%s): it comes back after its visibility timeout, and runs again"
                " (the ledger or the provider answers it)", what, message.message_id, brief(exc),
            )
        finally:
            held.settled = True

    async def _beat(self, held: Held) -> None:
        """Keep ``held`` hidden while it is held: every ``heartbeat_every`` seconds, hide it
        ``visibility`` seconds more from now."""
        message = held.message
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(held.stop.wait(), self.heartbeat_every)
                return
            elapsed = message.elapsed()
            seconds = min(self.visibility, visibility_seconds(self.visibility, elapsed + _LIMIT_MARGIN))
            if elapsed > self.heartbeat_span or seconds <= 0:
                log.error(
                    "SQS message %s held %.0fs, past the longest send (%.0fs) or SQS's 12 h limit: no longer"
                    " extending its visibility, so it goes back to the queue", message.message_id, elapsed,
                    self.heartbeat_span,
                )
                return
            try:
                await self.client.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=seconds,
                )
                self.stats.extended += 1
            except SQS_ERRORS as exc:
                self.stats.failed_calls += 1
                log.warning("could not extend the visibility of SQS message %s (%s)", message.message_id, brief(exc))

    async def _stop_heartbeat(self, held: Held) -> None:
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


def brief(exc: BaseException) -> str:
    """An SQS error in one short line (its code and message)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]
