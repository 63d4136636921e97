"""The calls a ``JetStreamConsumer`` makes for a message it holds: ``in_progress()`` while
its send runs (the heartbeat, so ``ack_wait`` does not lapse mid-send), then one settling
call (ack, nak with a delay, term), counted in ``ConsumerStats`` and logged when it fails.

A failed call is never retried here: an unsettled message comes back after ``ack_wait``,
and the ledger (or the provider) answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from ._message import Ack, JetStreamMessage, Nak, Settlement, Term

__all__ = ["ConsumerStats", "Held", "MessageCalls"]

log = logging.getLogger("idemsend.adapters.nats")


@dataclass
class ConsumerStats:
    """Counters of one consumer's calls to JetStream (for logs, dashboards and tests)."""

    received: int = 0
    acked: int = 0
    naked: int = 0  # nak(delay): a retry later
    released: int = 0  # nak(): at once, at shutdown or when the send could not run
    terminated: int = 0  # term(): given up on, recorded
    extended: int = 0  # in_progress() beats
    failed_calls: int = 0  # calls that failed (each logged)


class Held:
    """A message the consumer holds, from its delivery until it is settled."""

    __slots__ = ("heartbeat", "message", "msg", "settled", "stop")

    def __init__(self, msg: Any, message: JetStreamMessage) -> None:
        self.msg = msg
        self.message = message
        self.settled = False
        self.stop = asyncio.Event()
        self.heartbeat: asyncio.Task[None] | None = None


class MessageCalls:
    """The heartbeat and settling calls for held messages (see the module docstring);
    ``heartbeat_every`` and ``heartbeat_span`` come from the consumer's plan."""

    def __init__(self, stats: ConsumerStats, *, heartbeat_every: float, heartbeat_span: float) -> None:
        self.stats = stats
        self.heartbeat_every = heartbeat_every
        self.heartbeat_span = heartbeat_span

    def hold(self, msg: Any, message: JetStreamMessage) -> Held:
        """Hold ``msg``: its heartbeat starts now (when the plan has one)."""
        held = Held(msg, message)
        if self.heartbeat_every > 0:
            held.heartbeat = asyncio.create_task(self._beat(held))
        return held

    async def settle(self, held: Held, settlement: Settlement) -> None:
        """Stop ``held``'s heartbeat, then ack, nak or term it: its last word."""
        await self._stop_heartbeat(held)
        if held.settled:
            return
        held.settled = True
        msg = held.msg
        try:
            if isinstance(settlement, Ack):
                await msg.ack()
                self.stats.acked += 1
            elif isinstance(settlement, Nak):
                await msg.nak(delay=settlement.delay or None)
                if settlement.delay > 0:
                    self.stats.naked += 1
                else:
                    self.stats.released += 1
            else:
                assert isinstance(settlement, Term)
                await msg.term()
                self.stats.terminated += 1
        except Exception as exc:  # nats-py raises its own errors and OSError alike
            self.stats.failed_calls += 1
            log.warning(
                "could not %s JetStream message %s (%s: %s): it comes back after ack_wait and runs again (the"
                " ledger or the provider answers it)", type(settlement).__name__.lower(), held.message.label,
                type(exc).__name__, str(exc)[:200],
            )

    async def _beat(self, held: Held) -> None:
        """``in_progress()`` every ``heartbeat_every`` seconds while ``held`` is held, up to
        ``heartbeat_span`` (a send running longer is wedged: the message is let go back)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(held.stop.wait(), self.heartbeat_every)
                return
            elapsed = held.message.elapsed()
            if elapsed > self.heartbeat_span:
                log.error(
                    "JetStream message %s held %.0fs, past the longest send (%.0fs): no more in_progress(), so it"
                    " is redelivered after ack_wait", held.message.label, elapsed, self.heartbeat_span,
                )
                return
            try:
                await held.msg.in_progress()
                self.stats.extended += 1
            except Exception as exc:
                self.stats.failed_calls += 1
                log.warning("could not mark JetStream message %s in progress (%s: %s)", held.message.label,
                            type(exc).__name__, str(exc)[:200])

    async def _stop_heartbeat(self, held: Held) -> None:
        """Stop ``held``'s heartbeat, letting a beat under way finish first, so the settling
        call that follows is the message's last word."""
        held.stop.set()
        task, held.heartbeat = held.heartbeat, None
        if task is not None and not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                task.cancel()
                raise
